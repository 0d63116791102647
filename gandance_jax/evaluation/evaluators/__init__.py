"""Plug-in evaluators, found by ``type`` (big_vision style).

Configured by name in the config::

  config.evals.fid1k = dict(type='fid', extractor='digits', num_samples=1000,
                            guidance_scales=[1.0, 1.2, 1.5], mode='learned', every_steps=2000)

Types (one module each, ``Evaluator(spec, G, data).run(g_vars)`` yielding ``(name, value)``):
  ``fid``               FID against reference statistics (+ classifier metrics, same pass);
  ``classifier``        classifier score, class accuracy, mean p(c|x) of the conditioning class;
  ``precision_recall``  improved precision/recall (ADM's k=3) on the extractor's features.
Extractors: ``digits`` (the small CNN trained on the real digits) or ``inception`` (the FID
Inception-v3; needs ``inception_weights``, see evaluation/weights.py, and a ``convention``:
'pytorch_fid' or 'tf1').

`Suite` runs the configured evaluators of a run (those due at a step, or all at the end)
and writes their numbers to the clu writer and `metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Iterable, Mapping

from gandance_jax import checkpoint, guidance, multihost
from gandance_jax.evaluation import features as features_lib
from gandance_jax.evaluation.evaluators import classifier, common, fid, precision_recall
from gandance_jax.evaluation.evaluators.common import EvalData, EvalSpec, Samples
from gandance_jax.networks.base import NOISE_MODES

REGISTRY: dict[str, type[common.Evaluator]] = {
    "fid": fid.Evaluator,
    "classifier": classifier.Evaluator,
    "precision_recall": precision_recall.Evaluator,
}

__all__ = ["REGISTRY", "EvalData", "EvalSpec", "Samples", "Suite", "make", "parse_evals",
           "parse_spec"]


def parse_spec(name: str, cfg: Any) -> EvalSpec:
  """Builds and validates one EvalSpec from a dict/ConfigDict; errors name the field."""
  err = common.spec_error
  cfg = dict(cfg)
  fields = {f.name for f in dataclasses.fields(EvalSpec)} - {"name"}
  unknown = sorted(set(cfg) - fields)
  if unknown:
    raise err(name, unknown[0], cfg[unknown[0]], f"unknown field; known: {sorted(fields)}")
  if "guidance_scales" in cfg:
    cfg["guidance_scales"] = tuple(float(s) for s in cfg["guidance_scales"])
  spec = EvalSpec(name=name, **cfg)
  if spec.type not in REGISTRY:
    raise err(name, "type", spec.type, f"allowed values are {list(REGISTRY)}")
  if spec.extractor not in common.EXTRACTORS:
    raise err(name, "extractor", spec.extractor, f"allowed values are {list(common.EXTRACTORS)}")
  if spec.mode not in guidance.MODES:
    raise err(name, "mode", spec.mode, f"allowed values are {list(guidance.MODES)}")
  if not isinstance(spec.num_samples, int) or spec.num_samples < 2:
    raise err(name, "num_samples", spec.num_samples, "must be an integer >= 2")
  if not spec.guidance_scales or not all(math.isfinite(s) for s in spec.guidance_scales):
    raise err(name, "guidance_scales", spec.guidance_scales, "must be finite numbers")
  if not isinstance(spec.every_steps, int) or spec.every_steps < 0:
    raise err(name, "every_steps", spec.every_steps, "must be an integer >= 0")
  if not isinstance(spec.final, bool):
    raise err(name, "final", spec.final, "must be True or False")
  if not isinstance(spec.batch_size, int) or spec.batch_size <= 0:
    raise err(name, "batch_size", spec.batch_size, "must be an integer > 0")
  if spec.labels not in common.LABEL_PROTOCOLS:
    raise err(name, "labels", spec.labels, f"allowed values are {list(common.LABEL_PROTOCOLS)}")
  if spec.noise_mode not in NOISE_MODES:
    raise err(name, "noise_mode", spec.noise_mode, f"allowed values are {list(NOISE_MODES)}")
  if spec.extractor == "inception" and spec.convention not in features_lib.CONVENTIONS:
    raise err(name, "convention", spec.convention,
              f"allowed values are {list(features_lib.CONVENTIONS)}")
  return spec


def parse_evals(evals: Mapping[str, Any]) -> list[EvalSpec]:
  """All evaluators of a `config.evals` mapping (name -> fields), validated."""
  return [parse_spec(name, cfg) for name, cfg in dict(evals).items()]


def make(spec: EvalSpec, G: Any, data: EvalData) -> common.Evaluator:
  """The evaluator of `spec.type` (the registry's plug-in)."""
  return REGISTRY[spec.type](spec, G, data)


class Suite:
  """The configured evaluators of a run; `run` evaluates some and records their numbers."""

  def __init__(self, specs: Iterable[EvalSpec], data: EvalData):
    self.specs = list(specs)
    self.data = data

  def due(self, step: int) -> list[EvalSpec]:
    """The evaluators whose `every_steps` divides `step`."""
    return [s for s in self.specs if s.every_steps and step % s.every_steps == 0]

  def final(self) -> list[EvalSpec]:
    """The evaluators that run at the end of training."""
    return [s for s in self.specs if s.final]

  def run(self, G: Any, g_vars: Any, step: int, specs: Iterable[EvalSpec], *,
          writer: Any = None, metrics_path: str | None = None) -> dict[str, float]:
    """Runs `specs` on `g_vars`, logs them, writes them (process 0) and returns them.

    metrics.jsonl also gets each evaluator's sampling protocol (`common.protocol`) as a
    string under 'protocol/<name>', so numbers of different protocols are never mixed up.
    """
    metrics: dict[str, float] = {}
    protocols: dict[str, str] = {}
    for spec in specs:
      values = dict(make(spec, G, self.data).run(g_vars))
      protocols[f"protocol/{spec.name}"] = common.protocol(spec)
      logging.info("step %d %s (%s): %s", step, spec.name, common.protocol(spec), values)
      metrics.update(values)
    if metrics and multihost.is_main():
      if writer is not None:
        writer.write_scalars(step, metrics)
      checkpoint.append_metrics(metrics_path or checkpoint.metrics_path(self.data.workdir),
                                {"step": int(step), **metrics, **protocols})
    return metrics
