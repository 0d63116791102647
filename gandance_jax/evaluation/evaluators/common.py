"""What every evaluator plug-in shares: its spec, the data it compares against, the samples.

An evaluator of type ``T`` lives in ``evaluators/T.py`` as ``Evaluator(spec, G, data)`` (a
subclass of `Evaluator` below) and only says which metrics it computes from `Samples`; the
sampling, featurisation, reference statistics and multi-process merging are here, once.

``Evaluator(spec, G, data).run(g_vars)`` yields ``(name, value)`` pairs, one per metric and
guidance scale, keyed ``<spec name>/<metric>@<scale>`` (e.g. ``fid1k/fid@1.2``).

Sampling protocol (`protocol(spec)`, recorded beside the numbers in metrics.jsonl): by
default NVIDIA's metric protocol, per-sample random noise (``noise_mode='random'``) and
labels drawn i.i.d. from the training data's class frequencies (``labels='dataset'``, as
metric_utils draws ``dataset.get_label(random index)``); ``labels='balanced'`` gives ADM's
uniform classes (sample i has class i % num_classes), the protocol before this option.

Several processes: every process must run the same evaluators. Each generates and
featurises its contiguous share of the N samples (and of the real images of a computed
reference) on its own devices; the FID statistics are merged and the logits gathered across
processes (gandance_jax/multihost.py), so every process returns the numbers one process
would.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from gandance_jax import multihost
from gandance_jax import sampler as sampler_lib
from gandance_jax.data import make_source
from gandance_jax.evaluation import digits100_classifier, digits_classifier
from gandance_jax.evaluation import features as features_lib
from gandance_jax.evaluation import fid as fid_lib
from gandance_jax.evaluation import inception, weights
from gandance_jax.evaluation import scores as scores_lib
from gandance_jax.networks import base

EXTRACTORS = ("digits", "digits100", "inception")


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
  noise_mode: str = "random"         # NVIDIA's metrics: per-sample random noise
  labels: str = "dataset"            # 'dataset' (class frequencies) or 'balanced' (i % C)
  every_steps: int = 0               # 0 = not during training (see `final`)
  final: bool = True                 # also run at the end of training
  reference: str = ""                # statistics / ADM reference batch .npz; '' = from data
  reference_samples: int = 50000     # cap on real images for computed references
  inception_weights: str = ""        # .npz or .pth of pt_inception-2015-12-05
  convention: str = "pytorch_fid"    # Inception preprocessing: 'pytorch_fid' or 'tf1'
  batch_size: int = 100
  seed: int = 0


def spec_error(name: str, field: str, value: Any, why: str) -> ValueError:
  return ValueError(f"config.evals.{name}.{field} = {value!r} is invalid: {why}")


LABEL_PROTOCOLS = ("dataset", "balanced")


def metric_key(spec: EvalSpec, metric: str, scale: float) -> str:
  return f"{spec.name}/{metric}@{scale:g}"


def protocol(spec: EvalSpec) -> str:
  """How the samples behind `spec`'s numbers were drawn, e.g.
  'labels=dataset noise=random psi=1 mode=learned n=1000 seed=0': numbers are comparable
  only between equal protocols (metrics.jsonl stores it under 'protocol/<spec name>')."""
  return (f"labels={spec.labels} noise={spec.noise_mode} psi={spec.truncation_psi:g} "
          f"mode={spec.mode} n={spec.num_samples} seed={spec.seed}")


def sample_labels(spec: EvalSpec, num_classes: int,
                  class_probabilities: np.ndarray | None = None) -> np.ndarray:
  """int32 [num_samples] conditioning labels of `spec`'s generated samples.

  'balanced': i % num_classes. 'dataset': i.i.d. draws from `class_probabilities` [C]
  (None: uniform) with a generator seeded by spec.seed, the same on every process.
  """
  if spec.labels == "balanced":
    return (np.arange(spec.num_samples) % num_classes).astype(np.int32)
  probs = (np.full(num_classes, 1.0 / num_classes) if class_probabilities is None
           else np.asarray(class_probabilities, np.float64))
  rng = np.random.default_rng([spec.seed, 0x6c61626c])   # own stream: 'labl'
  return rng.choice(num_classes, size=spec.num_samples, p=probs).astype(np.int32)


def _concat(parts: list[np.ndarray], dim: int) -> np.ndarray:
  """Row blocks -> [n, dim] float32 (a process with no rows contributes [0, dim])."""
  return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


@dataclasses.dataclass
class Samples:
  """What the metrics of a set of images are computed from (every process holds all of it).

  stats: FID statistics of their features; features [N, D] (None unless an evaluator asked
  for them); logits [N, K] of the extractor's classifier; labels int [N] or None.
  """
  stats: fid_lib.FIDStatistics
  features: np.ndarray | None
  logits: np.ndarray
  labels: np.ndarray | None


class EvalData:
  """The real side of the evaluations: extractors and reference statistics, cached.

  Reference statistics come from ``spec.reference`` (a pytorch-fid / ADM / this project's
  ``.npz``) or, when empty, are computed once from the training data (`data`, the fields of
  `data.make_source`) and cached in ``<workdir>/reference/``.
  """

  def __init__(self, workdir: str, data: Mapping[str, Any]):
    self.workdir = workdir
    self.data = dict(data)
    self._extractors: dict[tuple[str, str, str], features_lib.FeatureExtractor] = {}
    self._references: dict[tuple[str, str], tuple[fid_lib.FIDStatistics, np.ndarray | None]] = {}
    self._class_probabilities: dict[int, np.ndarray | None] = {}

  def class_probabilities(self, num_classes: int) -> np.ndarray | None:
    """[num_classes] class frequencies of the training data, or None (uniform) for a
    source that does not hold its labels in memory (tfds: CIFAR-10 is exactly uniform)."""
    if num_classes not in self._class_probabilities:
      labels = getattr(make_source(self.data), "labels", None)
      probs = None
      if labels is not None and len(labels):
        counts = np.bincount(np.asarray(labels), minlength=num_classes)[:num_classes]
        probs = counts / counts.sum()
      else:
        logging.info("evaluation labels: data %r does not list its labels; drawing classes "
                     "uniformly", self.data.get("name"))
      self._class_probabilities[num_classes] = probs
    return self._class_probabilities[num_classes]

  def extractor(self, spec: EvalSpec) -> features_lib.FeatureExtractor:
    key = (spec.extractor, spec.convention, spec.inception_weights)
    if key not in self._extractors:
      if spec.extractor == "digits":
        res = int(self.data.get("resolution", 16) or 16)
        self._extractors[key] = digits_classifier.get_extractor(resolution=min(res, 16))
      elif spec.extractor == "digits100":
        res = int(self.data.get("resolution", 16) or 16)
        self._extractors[key] = digits100_classifier.get_extractor(resolution=res)
      else:
        if not spec.inception_weights:
          raise spec_error(spec.name, "inception_weights", "", "the Inception extractor needs "
                           f"the weights file ({weights.FID_WEIGHTS_URL}, converted with "
                           "`python -m gandance_jax.evaluation.weights convert`)")
        state = weights.load_state_dict(spec.inception_weights)
        self._extractors[key] = inception.make_extractor(
            inception.from_pytorch_fid_state_dict(state), convention=spec.convention)
    return self._extractors[key]

  def _real_images(self, limit: int) -> tuple[int, Iterator[np.ndarray]]:
    """(n, the training images [start, stop) of this process's share of the first n), as
    float [-1, 1] NHWC chunks; n = min(dataset size, limit)."""
    source = make_source(self.data)
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

  def reference(self, spec: EvalSpec, with_features: bool = False
                ) -> tuple[fid_lib.FIDStatistics, np.ndarray | None]:
    """(statistics, features-or-None) of the real data for `spec`'s extractor."""
    ext = self.extractor(spec)
    key = (ext.name, spec.reference)
    if key in self._references:
      return self._references[key]
    feats = None
    if spec.reference:
      stats = fid_lib.load_statistics(spec.reference, convention=ext.convention)
      if with_features:
        images = fid_lib.load_npz_images(spec.reference)
        feats, _ = features_lib.extract_shared(ext, images, batch_size=spec.batch_size)
    else:
      name = str(self.data.get("name", "data")).replace("/", "_")
      cache = os.path.join(self.workdir, "reference", f"{name}_{ext.name}.npz")
      feats_cache = cache.replace(".npz", "_features.npy")
      # Collective decision: a process that sees no cache (another filesystem, a file
      # removed since) must not be the only one to enter the gathers below.
      if multihost.all_true(os.path.exists(cache) and os.path.exists(feats_cache)):
        stats, feats = fid_lib.load_cached_reference(cache, feats_cache)
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

  def generated(self, spec: EvalSpec, G: base.ConditionalGenerator, g_vars: Any, scale: Any,
                with_features: bool = False) -> Samples:
    """`Samples` of N guided samples of G at `scale` (a float or a [num_ws] vector).

    Each process generates and featurises its contiguous share of the N samples on its own
    devices (sample i always uses global index i, so the images do not depend on the
    process count); the FID statistics are then reduced across processes and the logits
    (and the features, if asked for) gathered, so every process returns the same values.
    Generated labels follow ``spec.labels`` (`sample_labels`): the training data's class
    frequencies ('dataset') or sample i of class ``i % num_classes`` ('balanced').
    """
    # Scale 1 runs the unguided program (make_sampler decides, guidance.is_unguided).
    sampler = sampler_lib.make_sampler(
        G, mode=spec.mode, scale=scale,
        num_opposite=spec.num_opposite if spec.mode == "training_free" else 0,
        truncation_psi=spec.truncation_psi, noise_mode=spec.noise_mode,
        devices=jax.local_devices())
    labels = sample_labels(spec, G.num_classes, None if spec.labels == "balanced" else
                           self.class_probabilities(G.num_classes))
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
    all_feats = multihost.gather_rows(_concat(feats, ext.dim)) if with_features else None
    all_logits = multihost.gather_rows(_concat(logits, ext.num_classes))
    return Samples(stats, all_feats, all_logits, labels)

  def of_images(self, spec: EvalSpec, images: np.ndarray, labels: np.ndarray | None) -> Samples:
    """`Samples` of given uint8 images [N, H, W, C] (a sample file): each process
    featurises its share, all receive every feature."""
    ext = self.extractor(spec)
    ext.warn_if_few(len(images))
    feats, logits = features_lib.extract_shared(ext, images, batch_size=spec.batch_size)
    stats = fid_lib.FIDStatistics(*fid_lib.feature_statistics(feats),
                                  convention=ext.convention, extractor=ext.name,
                                  num_samples=len(feats), quantize="uint8")
    return Samples(stats, feats, logits, labels)


def classifier_metrics(spec: EvalSpec, samples: Samples) -> dict[str, float]:
  """The extractor's classifier metrics: the digits CNN's classifier score, class accuracy
  and mean p(c|x) of the conditioning class; the Inception score for 'inception'."""
  if spec.extractor == "digits":
    return {k: float(v) for k, v in
            scores_lib.classifier_metrics(samples.logits, samples.labels).items()}
  if spec.extractor == "digits100":
    # 100 classes = 10 digits x 10 styles: also which half of the class a sample gets right.
    acc = digits100_classifier.accuracies_from_logits(samples.logits, samples.labels)
    return {**{k: float(v) for k, v in
               scores_lib.classifier_metrics(samples.logits, samples.labels).items()},
            "digit_accuracy": acc.digit, "style_accuracy": acc.style}
  return {"inception_score": float(scores_lib.inception_score(samples.logits))}


class Evaluator:
  """Base of the plug-ins: `metrics(samples)` is what a type adds.

  Args:
    spec: the configured evaluator.
    G: the generator module (any `networks.base.ConditionalGenerator`).
    data: the shared `EvalData` (extractors and references are cached there).
  """
  needs_features = False   # Gather the features of the generated samples (precision/recall).

  def __init__(self, spec: EvalSpec, G: base.ConditionalGenerator | None, data: EvalData):
    self.spec, self.G, self.data = spec, G, data

  def metrics(self, samples: Samples) -> dict[str, float]:
    raise NotImplementedError

  def metrics_at(self, g_vars: Any, scale: Any) -> dict[str, float]:
    """{metric: value} at one guidance scale (float or [num_ws] vector)."""
    return self.metrics(self.data.generated(self.spec, self.G, g_vars, scale,
                                            with_features=self.needs_features))

  def run(self, g_vars: Any) -> Iterator[tuple[str, float]]:
    """(``<name>/<metric>@<scale>``, value) for every guidance scale of the spec."""
    self.data.extractor(self.spec).warn_if_few(self.spec.num_samples)
    for scale in self.spec.guidance_scales:
      for metric, value in self.metrics_at(g_vars, scale).items():
        yield metric_key(self.spec, metric, scale), value
