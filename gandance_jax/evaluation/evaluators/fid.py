"""``type='fid'``: FID against the reference statistics, plus the extractor's classifier
metrics from the same pass (see common.py for the samples and the reference)."""

from __future__ import annotations

from gandance_jax.evaluation.evaluators import common


class Evaluator(common.Evaluator):

  def metrics(self, samples: common.Samples) -> dict[str, float]:
    reference, _ = self.data.reference(self.spec)
    return {"fid": samples.stats.frechet_distance(reference),
            **common.classifier_metrics(self.spec, samples)}
