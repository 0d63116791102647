"""Plug-in evaluators run on G EMA through the guided sampler, in the loop and from the CLI.

Configured by name in the config, big_vision style::

  config.evals.fid1k = dict(type='fid', extractor='digits', num_samples=1000,
                            guidance_scales=[1.0, 1.2, 1.5], mode='learned', every_steps=2000)

Types:
  ``fid``         FID against reference statistics (+ classifier metrics from the same pass);
  ``classifier``  classifier score, class accuracy and mean p(c|x) of the conditioning class;
  ``precision_recall``  improved precision/recall (ADM's k=3) on the extractor's features.
Extractors: ``digits`` (the small CNN trained on the real digits; the digits config's
default) or ``inception`` (the FID Inception-v3; needs ``inception_weights``, see
evaluation/weights.py, and a ``convention``: 'pytorch_fid' or 'tf1').

Every evaluation writes one value per guidance scale, keyed ``<name>/<metric>@<scale>``
(e.g. ``fid1k/fid@1.2``), to the clu writer and `metrics.jsonl`. Reference statistics come
from ``reference`` (a pytorch-fid / ADM / this project's ``.npz``) or, when empty, are computed
once from the training data (``config.data``) and cached in ``<workdir>/reference/``.
Generated labels are balanced: sample i has class ``i % num_classes``.

Several processes: every process must run the same evaluators at the same steps. Each
generates and featurises its contiguous share of the N samples (and of the real images of a
computed reference) on its own devices; the FID statistics are merged and the logits gathered
across processes (gandance_jax/multihost.py), so every process returns the numbers one process
would; process 0 writes them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Iterable, Iterator

import jax
import ml_collections
import numpy as np

from gandance_jax import multihost
from gandance_jax.evaluation import features as features_lib
from gandance_jax.evaluation import fid as fid_lib
from gandance_jax.evaluation import precision_recall as pr_lib
from gandance_jax.evaluation import scores as scores_lib

EVAL_TYPES = ("fid", "classifier", "precision_recall")
EXTRACTORS = ("digits", "inception")
MODES = ("none", "training_free", "learned")
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """One configured evaluator (`config.evals.<name>`)."""
  name: str
  type: str = "fid"
  extractor: str = "digits"
  num_samples: int = 1000
  guidance_scales: tuple[float, ...] = (1.0,)
  mode: str = "learned"              # guidance mode for scales != 1
  num_opposite: int = 0              # |C| for training_free, 0 = all classes
  truncation_psi: float = 1.0
  noise_mode: str = "const"
  every_steps: int = 0               # 0 = only at the end of training / from the CLI
  reference: str = ""                # statistics / ADM reference batch .npz; '' = from data
  reference_samples: int = 50000     # cap on real images for computed references
  inception_weights: str = ""        # .npz or .pth of pt_inception-2015-12-05
  convention: str = "pytorch_fid"    # Inception preprocessing: 'pytorch_fid' or 'tf1'
  batch_size: int = 100
  seed: int = 0


def _err(name: str, field: str, value: Any, why: str) -> ValueError:
  return ValueError(f"config.evals.{name}.{field} = {value!r} is invalid: {why}")


def parse_spec(name: str, cfg: Any) -> EvalSpec:
  """Builds and validates one EvalSpec from a dict/ConfigDict; errors name the field."""
  cfg = dict(cfg)
  fields = {f.name for f in dataclasses.fields(EvalSpec)} - {"name"}
  unknown = sorted(set(cfg) - fields)
  if unknown:
    raise _err(name, unknown[0], cfg[unknown[0]], f"unknown field; known: {sorted(fields)}")
  if "guidance_scales" in cfg:
    cfg["guidance_scales"] = tuple(float(s) for s in cfg["guidance_scales"])
  spec = EvalSpec(name=name, **cfg)
  if spec.type not in EVAL_TYPES:
    raise _err(name, "type", spec.type, f"allowed values are {list(EVAL_TYPES)}")
  if spec.extractor not in EXTRACTORS:
    raise _err(name, "extractor", spec.extractor, f"allowed values are {list(EXTRACTORS)}")
  if spec.mode not in MODES:
    raise _err(name, "mode", spec.mode, f"allowed values are {list(MODES)}")
  if not isinstance(spec.num_samples, int) or spec.num_samples < 2:
    raise _err(name, "num_samples", spec.num_samples, "must be an integer >= 2")
  if not spec.guidance_scales or not all(math.isfinite(s) for s in spec.guidance_scales):
    raise _err(name, "guidance_scales", spec.guidance_scales, "must be finite numbers")
  if not isinstance(spec.every_steps, int) or spec.every_steps < 0:
    raise _err(name, "every_steps", spec.every_steps, "must be an integer >= 0")
  if not isinstance(spec.batch_size, int) or spec.batch_size <= 0:
    raise _err(name, "batch_size", spec.batch_size, "must be an integer > 0")
  if spec.extractor == "inception" and spec.convention not in features_lib.CONVENTIONS:
    raise _err(name, "convention", spec.convention,
               f"allowed values are {list(features_lib.CONVENTIONS)}")
  return spec


def parse_evals(config: ml_collections.ConfigDict) -> list[EvalSpec]:
  """All evaluators of `config.evals`, validated."""
  return [parse_spec(name, cfg) for name, cfg in dict(config.get("evals", {})).items()]


def _concat(parts: list[np.ndarray], dim: int) -> np.ndarray:
  """Row blocks -> [n, dim] float32 (a process with no rows contributes [0, dim])."""
  return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def _metric_key(spec: EvalSpec, metric: str, scale: float) -> str:
  return f"{spec.name}/{metric}@{scale:g}"


class Evaluator:
  """Runs the configured evaluators on a generator's variables."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               specs: Iterable[EvalSpec] | None = None):
    self.config = config
    self.workdir = workdir
    self.specs = list(parse_evals(config) if specs is None else specs)
    self._extractors: dict[tuple[str, str, str], features_lib.FeatureExtractor] = {}
    self._references: dict[tuple[str, str], tuple[fid_lib.FIDStatistics, np.ndarray | None]] = {}

  # -------------------------------------------------------------------------- plumbing

  def due(self, step: int) -> list[EvalSpec]:
    """The evaluators whose `every_steps` divides `step`."""
    return [s for s in self.specs if s.every_steps and step % s.every_steps == 0]

  def extractor(self, spec: EvalSpec) -> features_lib.FeatureExtractor:
    key = (spec.extractor, spec.convention, spec.inception_weights)
    if key not in self._extractors:
      if spec.extractor == "digits":
        from gandance_jax.evaluation import digits_classifier  # pylint: disable=g-import-not-at-top
        res = int(self.config.data.get("resolution", 16) or 16)
        self._extractors[key] = digits_classifier.get_extractor(resolution=min(res, 16))
      else:
        from gandance_jax.evaluation import inception, weights  # pylint: disable=g-import-not-at-top
        if not spec.inception_weights:
          raise _err(spec.name, "inception_weights", "", "the Inception extractor needs the "
                     f"weights file ({weights.FID_WEIGHTS_URL}, converted with "
                     "`python -m gandance_jax.evaluation.weights convert`)")
        state = weights.load_state_dict(spec.inception_weights)
        self._extractors[key] = inception.make_extractor(
            inception.from_pytorch_fid_state_dict(state), convention=spec.convention)
    return self._extractors[key]

  def _real_images(self, limit: int) -> tuple[int, Iterator[np.ndarray]]:
    """(n, the training images [start, stop) of this process's share of the first n), as
    float [-1, 1] NHWC chunks from `config.data`; n = min(dataset size, limit)."""
    from gandance_jax.data import make_source  # pylint: disable=g-import-not-at-top
    source = make_source(self.config.data)
    n = min(int(source.num_examples or limit), limit)
    start, stop = multihost.process_share(n)

    def chunks() -> Iterator[np.ndarray]:
      bs = 250
      seen = 0
      # A step-indexed source with xflip off visits a permutation per epoch: one epoch of
      # global batches covers every image exactly once when bs divides n (else ~once).
      # Every process reads the same order and keeps its share (reading is cheap next to
      # the features).
      it = source.batches(bs, start_step=0, process_index=0, process_count=1)
      while seen < stop:
        images = next(it)["image"]
        lo, hi = max(start - seen, 0), min(stop - seen, len(images))
        seen += len(images)
        if hi > lo:
          yield images[lo:hi]
    return stop - start, chunks()

  def reference(self, spec: EvalSpec) -> tuple[fid_lib.FIDStatistics, np.ndarray | None]:
    """(statistics, features-or-None) of the real data for `spec`'s extractor."""
    ext = self.extractor(spec)
    key = (ext.name, spec.reference)
    if key in self._references:
      return self._references[key]
    feats = None
    if spec.reference:
      stats = fid_lib.load_statistics(spec.reference, convention=ext.convention)
      if spec.type == "precision_recall":
        images = fid_lib.load_npz_images(spec.reference)
        feats, _ = features_lib.extract_shared(ext, images, batch_size=spec.batch_size)
    else:
      cache = os.path.join(self.workdir, "reference",
                           f"{self.config.data.name.replace('/', '_')}_{ext.name}.npz")
      feats_cache = cache.replace(".npz", "_features.npy")
      # Collective decision: a process that sees no cache (another filesystem, a file
      # removed since) must not be the only one to enter the gathers below.
      if multihost.all_true(os.path.exists(cache) and os.path.exists(feats_cache)):
        stats = fid_lib.load_statistics(cache)
        feats = np.load(feats_cache)
      else:
        # Each process featurises its share of the real images; statistics are merged and
        # features gathered across processes.
        count, images = self._real_images(spec.reference_samples)
        acc = fid_lib.StreamingStatistics(ext.dim)
        local_feats = []
        for f, _ in features_lib.iterate_features(
            ext, images, batch_size=spec.batch_size, total=count,
            desc="reference features"):
          acc.update(f)
          local_feats.append(f)
        acc = acc.reduced_across_processes()
        mu, sigma = acc.finalize()
        stats = fid_lib.FIDStatistics(mu, sigma, convention=ext.convention,
                                      extractor=ext.name, num_samples=acc.count,
                                      quantize=ext.quantize)
        feats = multihost.gather_rows(_concat(local_feats, ext.dim))
        if multihost.is_main():
          os.makedirs(os.path.dirname(cache), exist_ok=True)
          stats.save(cache)
          tmp = f"{feats_cache}.tmp{os.getpid()}.npy"
          np.save(tmp, feats)
          os.replace(tmp, feats_cache)
    self._references[key] = (stats, feats)
    return stats, feats

  # -------------------------------------------------------------------------- evaluation

  def _generated(self, spec: EvalSpec, G: Any, g_vars: Any, scale: Any
                 ) -> tuple[fid_lib.FIDStatistics, np.ndarray | None, np.ndarray, np.ndarray]:
    """(statistics, features [N, D] or None, logits [N, K], labels [N]) of N guided samples.

    `scale` is a float or a [num_ws] layer-wise vector. Each process generates and
    featurises its contiguous share of the N samples on its own devices (sample i always
    uses global index i, so the images do not depend on the process count); the FID
    statistics are then reduced across processes and the logits (and the features, for
    precision/recall only) gathered, so every process returns the same values.
    """
    from gandance_jax import guidance  # pylint: disable=g-import-not-at-top
    mode = spec.mode if np.any(np.asarray(scale) != 1) else "none"
    sampler = guidance.make_sampler(
        G, mode=mode, scale=scale, num_opposite=spec.num_opposite if mode != "none" else 0,
        truncation_psi=spec.truncation_psi, noise_mode=spec.noise_mode,
        devices=jax.local_devices())
    labels = (np.arange(spec.num_samples) % G.num_classes).astype(np.int32)
    start, stop = multihost.process_share(spec.num_samples)
    key = jax.random.key(spec.seed)
    ext = self.extractor(spec)
    chunks = iter(())
    if stop > start:
      chunks = (np.clip(images, -1.0, 1.0) for _, images in
                sampler.stream(multihost.local_copy(g_vars), key, labels[start:stop],
                               chunk_size=spec.batch_size, start_index=start))
    acc = fid_lib.StreamingStatistics(ext.dim)
    feats, logits = [], []
    desc = f"{spec.name} @ {np.asarray(scale).round(3).tolist()}"
    for f, l in features_lib.iterate_features(ext, chunks, batch_size=spec.batch_size,
                                              total=stop - start, desc=desc):
      acc.update(f)
      feats.append(f)
      logits.append(l)
    acc = acc.reduced_across_processes()
    mu, sigma = acc.finalize()
    stats = fid_lib.FIDStatistics(mu, sigma, convention=ext.convention, extractor=ext.name,
                                  num_samples=acc.count, quantize=ext.quantize)
    all_feats = (multihost.gather_rows(_concat(feats, ext.dim))
                 if spec.type == "precision_recall" else None)
    all_logits = multihost.gather_rows(_concat(logits, ext.num_classes))
    return stats, all_feats, all_logits, labels

  def metrics_at(self, spec: EvalSpec, G: Any, g_vars: Any, scale: Any) -> dict[str, float]:
    """{metric: value} of `spec` at one guidance scale (float or [num_ws] vector)."""
    out: dict[str, float] = {}
    stats, feats, logits, labels = self._generated(spec, G, g_vars, scale)
    if spec.type in ("fid", "precision_recall"):
      ref_stats, ref_feats = self.reference(spec)
    if spec.type == "fid":
      out["fid"] = stats.frechet_distance(ref_stats)
    if spec.type == "precision_recall":
      if ref_feats is None:
        raise _err(spec.name, "reference", spec.reference,
                   "precision/recall needs real features (an ADM batch with arr_0, or '')")
      out["precision"], out["recall"] = pr_lib.precision_recall(ref_feats, feats)
    if spec.extractor == "digits":
      for metric, value in scores_lib.classifier_metrics(logits, labels).items():
        out[metric] = float(value)
    else:
      out["inception_score"] = float(scores_lib.inception_score(logits))
    return out

  def evaluate(self, spec: EvalSpec, G: Any, g_vars: Any) -> dict[str, float]:
    """All metrics of one evaluator, one entry per guidance scale."""
    self.extractor(spec).warn_if_few(spec.num_samples)
    out: dict[str, float] = {}
    for scale in spec.guidance_scales:
      for metric, value in self.metrics_at(spec, G, g_vars, scale).items():
        out[_metric_key(spec, metric, scale)] = value
    return out

  def run(self, G: Any, g_vars: Any, step: int, *, specs: Iterable[EvalSpec] | None = None,
          writer: Any = None, metrics_path: str | None = None) -> dict[str, float]:
    """Runs `specs` (default: those due at `step`), logs and returns the metrics."""
    specs = self.due(step) if specs is None else list(specs)
    metrics: dict[str, float] = {}
    for spec in specs:
      values = self.evaluate(spec, G, g_vars)
      logging.info("step %d %s: %s", step, spec.name, values)
      metrics.update(values)
    if metrics and multihost.is_main():
      if writer is not None:
        writer.write_scalars(step, metrics)
      path = metrics_path or os.path.join(self.workdir, METRICS_FILE)
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      with open(path, "a") as f:
        f.write(json.dumps({"step": int(step), **metrics}) + "\n")
    return metrics
