"""`main.py --mode=eval`: evaluate a checkpoint's G EMA, or a sample file / image folder.

  # Every evaluator in config.evals (or a default digits FID over config.sample.scales):
  python -m gandance_jax.main --config=configs/digits.py --workdir=W --mode=eval
  # A sample file in the ADM layout (arr_0 uint8 [N,H,W,C], arr_1 labels) or a class folder:
  python -m gandance_jax.main --config=configs/digits.py --workdir=W --mode=eval \
      --config.eval_samples=W/samples/samples_learned_1.3.npz

Results go to `<workdir>/metrics.jsonl` (one record, `"eval": true`) and are printed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections
import numpy as np

from gandance_jax import checkpoint
from gandance_jax import config_lib
from gandance_jax import console
from gandance_jax import errors
from gandance_jax import multihost
from gandance_jax.data import folder
from gandance_jax.evaluation import evaluators
from gandance_jax.evaluation import fid as fid_lib
from gandance_jax.interop import network_file


def default_specs(config: ml_collections.ConfigDict, empty_class: bool | None = None
                  ) -> list[evaluators.EvalSpec]:
  """config.evals, plus (digits) one FID over config.sample's scales when none is a FID.

  The digits default is what `--mode=all` reports per guidance scale next to the configured
  evaluators (configs/digits.py configures only the end-of-training class accuracy).
  `empty_class`: whether the evaluated generator has the empty class (default: the config's).
  """
  specs = evaluators.parse_evals(config.get("evals", {}) or {})
  if any(spec.type == "fid" for spec in specs):
    return specs
  if config.data.name != "digits":
    if specs:
      return specs
    raise ValueError("config.evals is empty: configure an evaluator in the config file, e.g. "
                     "config.evals.fid10k = dict(type='fid', extractor='inception', "
                     "inception_weights=..., num_samples=10000) (see configs/cifar10.py); its "
                     "fields can then be overridden with --config.evals.fid10k.<field>=...")
  s = config.sample
  if empty_class is None:
    empty_class = bool(config.generator.empty_class)
  mode = s.mode if empty_class or s.mode != "learned" else "training_free"
  return specs + [evaluators.parse_spec("fid", dict(
      type="fid", extractor="digits", num_samples=int(s.num_samples),
      guidance_scales=[float(x) for x in s.scales], mode=mode,
      num_opposite=int(s.num_opposite), truncation_psi=float(s.truncation_psi),
      batch_size=int(s.batch_size)))]


def _load_images(path: str, num_classes: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
  """uint8 images [N, H, W, C] and labels (or None) of an ADM npz or a class folder.

  Raises BadInputError naming the file and what is wrong (see fid.load_npz_images), labels
  that are not N integers in [0, num_classes) included."""
  if os.path.isdir(path):
    images, labels, _ = folder.load_image_folder(path)
    return images, labels
  if not os.path.exists(path):
    raise errors.BadInputError(f"config.eval_samples = {path!r} does not exist")
  images = fid_lib.load_npz_images(path)
  _, f = fid_lib.read_npz(path, "labels ('arr_1' int [N])", ("arr_1",))
  labels = f.get("arr_1")
  if labels is not None:
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
      raise errors.BadInputError(
          f"{path}: 'arr_1' must be {images.shape[0]} integer labels (one per image), got "
          f"{labels.dtype} {list(labels.shape)}")
    if num_classes and (labels.min() < 0 or labels.max() >= num_classes):
      raise errors.BadInputError(
          f"{path}: labels 'arr_1' out of range [{labels.min()}, {labels.max()}]; expected "
          f"class ids in [0, {num_classes}) (config.generator.num_classes)")
  return images, labels


def evaluate_samples(config: ml_collections.ConfigDict, workdir: str, path: str
                     ) -> dict[str, float]:
  """FID / classifier metrics of the images in `path` against each spec's reference."""
  images, labels = _load_images(path, int(config.generator.num_classes or 0) or None)
  data = evaluators.EvalData(workdir, config.data)
  out: dict[str, float] = {}
  for spec in default_specs(config):
    samples = data.of_images(spec, images, labels)
    for metric, value in evaluators.make(spec, None, data).metrics(samples).items():
      out[f"{spec.name}/{metric}"] = value
  return out


def run(config: ml_collections.ConfigDict, workdir: str, which: str = "latest",
        network: str = "") -> dict[str, float]:
  """Evaluates `config.eval_samples` if set, else a checkpoint's G EMA in `workdir`, or the
  generator of `network` (--network: a network-snapshot .pkl, a StyleGAN2 .pth or another
  run's workdir; see interop.network_file). Results go to `workdir` either way.

  `which`: 'latest', 'best' (the best in-loop snapshot, config.best_metric) or a step.
  """
  path = str(config.get("eval_samples", "") or "")
  if path:
    metrics = evaluate_samples(config, workdir, path)
    record: dict[str, Any] = {"eval": True, "samples": path, **metrics}
  else:
    if network:
      G, g_vars, tag = network_file.load_network(network, config.generator, which)
      step = int(tag.rsplit("_", 1)[1]) if tag.startswith(("step_", "best_step_")) else 0
      source: dict[str, Any] = {"network": network}
    else:
      G, g_vars, _, step = checkpoint.load_generator_from(workdir, which)
      source = {"checkpoint": which}
    specs = default_specs(config, G.empty_class)
    for spec in specs:
      if (spec.mode == "learned" and not G.empty_class
          and any(float(x) != 1 for x in spec.guidance_scales)):
        raise config_lib.ConfigError(
            f"config.evals.{spec.name}.mode = 'learned' needs a generator trained with the "
            f"empty class; the generator of {network or workdir!r} has none (set it to "
            "'training_free' or 'none')")
    # The data/evals of the command line win; the networks come from the checkpoint.
    suite = evaluators.Suite(specs, evaluators.EvalData(workdir, config.data))
    metrics = suite.run(G, g_vars, step, suite.specs,
                        metrics_path=os.path.join(workdir, "eval_metrics.jsonl"))
    record = {"eval": True, "step": int(step), **source, **metrics}
  checkpoint.append_metrics(checkpoint.metrics_path(workdir), record)
  if multihost.is_main():
    # One row per guidance scale (the full precision is in metrics.jsonl).
    where = path or f"step {record['step']} of {record.get('network', workdir)}"
    console.say(f"evaluation of {where}:")
    table = console.metrics_table(metrics)
    others = {k: v for k, v in metrics.items() if "@" not in k}
    for line in table:
      console.say(line)
    if others or not table:
      console.say("  " + "  ".join(f"{k} {console.format_value(v)}" for k, v in others.items()))
  logging.info("eval: %s", record)
  return metrics
