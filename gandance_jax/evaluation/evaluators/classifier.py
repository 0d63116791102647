"""``type='classifier'``: the extractor's classifier metrics of conditional samples.

With the digits extractor: ``class_accuracy`` (the fraction of samples the digits CNN
assigns to the class they were conditioned on), ``classifier_score`` and
``target_probability``; with Inception: ``inception_score``. configs/digits.py runs one at
the end of training as ``class_accuracy/class_accuracy@1`` in metrics.jsonl.
"""

from __future__ import annotations

from gandance_jax.evaluation.evaluators import common


class Evaluator(common.Evaluator):

  def metrics(self, samples: common.Samples) -> dict[str, float]:
    return common.classifier_metrics(self.spec, samples)
