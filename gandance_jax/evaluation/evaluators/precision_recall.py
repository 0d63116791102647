"""``type='precision_recall'``: improved precision / recall (ADM's k = 3) of the samples'
features against the real features, plus the extractor's classifier metrics."""

from __future__ import annotations

from gandance_jax.evaluation import precision_recall as pr_lib
from gandance_jax.evaluation.evaluators import common


class Evaluator(common.Evaluator):
  needs_features = True

  def metrics(self, samples: common.Samples) -> dict[str, float]:
    _, reference_features = self.data.reference(self.spec, with_features=True)
    if reference_features is None:
      raise common.spec_error(self.spec.name, "reference", self.spec.reference,
                              "precision/recall needs real features (an ADM batch with "
                              "arr_0, or '')")
    precision, recall = pr_lib.precision_recall(reference_features, samples.features)
    return {"precision": precision, "recall": recall,
            **common.classifier_metrics(self.spec, samples)}
