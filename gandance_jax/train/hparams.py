"""Typed, frozen hyper-parameters of a training run (what `config_lib.validate_config` returns).

The ConfigDict stops at the entry point: `validate_config` checks it and turns it into a
`HParams`; the step, the loop, warm starts and the ahead-of-time compiler read only these
frozen values (a field read while tracing is a Python constant, never a ConfigDict lookup).
The run's config travels as JSON (`HParams.config_json`), which checkpoints store beside the
arrays.
"""

from __future__ import annotations

import dataclasses
import json
import types
from typing import Any, Mapping

from gandance_jax.evaluation import evaluators


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
  """A read-only copy of a mapping, with lists turned into tuples (hashable, immutable)."""
  fix = lambda v: tuple(fix(x) for x in v) if isinstance(v, (list, tuple)) else v
  return types.MappingProxyType({k: fix(v) for k, v in dict(d).items()})


@dataclasses.dataclass(frozen=True)
class TrainHParams:
  """`config.train` (see config_lib.base_config for the meaning of each field)."""
  batch_size: int
  total_kimg: float
  g_lr: float
  d_lr: float
  betas: tuple[float, float]
  eps: float
  r1_gamma: float
  r1_interval: int
  pl_weight: float
  pl_interval: int
  pl_batch_shrink: int
  pl_decay: float
  ema_kimg: float
  ema_rampup: float | None
  style_mixing_prob: float
  label_reset_prob: float
  augment: str
  augment_policy: str
  augment_p: float
  ada_target: float
  ada_kimg: float
  ada_interval: int
  loss: str = "ns"
  san_base: str = "hinge"
  init_from: str = ""
  init_empty: str = "mean"
  ada_pipe: str = "bgc"
  # BigGAN's training (train/step_biggan.py); ignored by StyleGAN2's phases.
  family: str = "stylegan2"         # generator.family: which phases and optimizers run
  num_D_steps: int = 1              # D steps per G step, each on its own 1/num_D_steps of the batch
  G_ortho: float = 0.0              # BigGAN's modified orthogonal regularisation of G, 0 = off
  ema_decay: float = 0.9999         # G EMA decay per step
  ema_start: int = 0                # G EMA copies G until this many steps are done
  standing_stats: int = 0           # Forwards of G EMA re-estimating BN statistics, 0 = off

  @property
  def adaptive_augment(self) -> bool:
    """p follows ADA's rule ('ada' = NVIDIA's pipeline, 'diffaugment_ada' = DiffAugment ops)."""
    return self.augment in ("ada", "diffaugment_ada")

  @property
  def ema_rampup_effective(self) -> float | None:
    """The EMA ramp-up in force: None for a warm start (`init_from`), NVIDIA's resume rule
    (train.py sets ema_rampup = None with --resume), so the pre-trained G_ema is kept
    instead of being replaced by G at step 0 (beta = 0 under a ramp-up)."""
    return None if self.init_from else self.ema_rampup


@dataclasses.dataclass(frozen=True)
class HParams:
  """Everything below the entry point needs of a config, frozen.

  generator / discriminator: the keyword arguments of the network constructors;
  data: the fields of `data.pipeline.make_source`; evals: the parsed in-loop evaluators.
  """
  seed: int
  train: TrainHParams
  generator: Mapping[str, Any]
  discriminator: Mapping[str, Any]
  data: Mapping[str, Any]
  evals: tuple[evaluators.EvalSpec, ...]
  mesh_data: int                    # devices of the 'data' axis, -1 = all
  log_every_steps: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  sample_every_steps: int
  grid_per_class: int               # columns of the periodic sample grid
  prefetch: int                     # batches put on the devices ahead of the step
  best_metric: str                  # '<eval>/<metric>@<scale>' of the kept best G EMA, or ''
  best_mode: str                    # 'min' or 'max'
  config_json: str                  # the whole config, as checkpoints and config.json keep it

  @property
  def config(self) -> dict[str, Any]:
    """The run's config as a plain dict (its JSON form)."""
    return json.loads(self.config_json)

  @property
  def num_classes(self) -> int:
    return int(self.generator["num_classes"])

  def build_key(self) -> str:
    """The fields that shape the compiled train step (seed, networks, train), as JSON."""
    return json.dumps(dict(seed=self.seed, generator=dict(self.generator),
                           discriminator=dict(self.discriminator),
                           train=dataclasses.asdict(self.train)), sort_keys=True, default=str)


def _discriminator_kwargs(d: dict[str, Any], t: Mapping[str, Any]) -> dict[str, Any]:
  """D's constructor arguments: SAN's loss gets D's SAN head (a per-class direction table,
  `stylegan2.Discriminator(head='san')`), as the toy trainer does; an explicit `head`
  in the config wins."""
  if t.get("loss", "ns") == "san" and "head" not in d:
    d = dict(d, head="san")
  return d


def from_config(config: Any) -> HParams:
  """HParams of a config that `config_lib.validate_config` accepted (ConfigDict or dict)."""
  get = lambda key, default=None: config.get(key, default)
  to_dict = lambda node: node.to_dict() if hasattr(node, "to_dict") else dict(node)
  t = to_dict(config["train"])
  fields = {f.name for f in dataclasses.fields(TrainHParams)}
  t = {k: v for k, v in t.items() if k in fields}
  t["betas"] = tuple(float(b) for b in t["betas"])
  t["family"] = str(to_dict(config["generator"]).get("family", "stylegan2"))
  config_json = (config.to_json_best_effort(sort_keys=True) if hasattr(
      config, "to_json_best_effort") else json.dumps(config, sort_keys=True, default=str))
  return HParams(
      seed=int(config["seed"]),
      train=TrainHParams(**t),
      generator=_frozen(to_dict(config["generator"])),
      discriminator=_frozen(_discriminator_kwargs(to_dict(config["discriminator"]), t)),
      data=_frozen(to_dict(config["data"])),
      evals=tuple(evaluators.parse_evals(get("evals", {}) or {})),
      mesh_data=int(config["mesh"]["data"]),
      log_every_steps=int(config["log_every_steps"]),
      checkpoint_every_steps=int(config["checkpoint_every_steps"]),
      keep_checkpoints=int(config["keep_checkpoints"]),
      sample_every_steps=int(config["sample_every_steps"]),
      grid_per_class=int(config["grid_per_class"]),
      prefetch=int(config["prefetch"]),
      best_metric=str(get("best_metric", "") or ""),
      best_mode=str(get("best_mode", "min")),
      config_json=config_json)
