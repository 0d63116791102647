"""Config defaults shared by every experiment file in configs/, and their validation.

An experiment file calls `base_config()` and overrides what differs. `validate_config` runs
at start-up and fails with a message naming the bad field and the allowed values.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from gandance_jax import errors, guidance, images
from gandance_jax.data import base as data_base
from gandance_jax.data import digits as digits_data
from gandance_jax.networks import base
from gandance_jax.networks import families
from gandance_jax.train import augment_pipe
from gandance_jax.train import hparams as hparams_lib


def base_config() -> ml_collections.ConfigDict:
  """Returns the full config tree with NVIDIA's StyleGAN2 defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Fields the data, G and D share are set once: one FieldReference each, so setting any of
  # them (in a config file or on the command line) sets all (ml_collections links them).
  resolution = ml_collections.FieldReference(16)
  num_classes = ml_collections.FieldReference(10)
  empty_class = ml_collections.FieldReference(True)
  img_channels = ml_collections.FieldReference(1)

  # Data: see gandance_jax/data (name in digits, cifar10, imagenet_resized/32x32,
  # imagenet_resized/64x64, npz, folder, mixture_8gaussians, mixture_25gaussians).
  # max_images: 0 = all, else a fixed class-stratified subset of that many training images
  # (data/base.py stratified_subset; 'digits' only), e.g. ADA's limited-data experiments.
  config.data = ml_collections.ConfigDict(dict(
      name="digits", resolution=resolution, xflip=False, path="", data_dir="", seed=0,
      max_images=0))

  # Networks: keyword arguments of stylegan2.Generator / stylegan2.Discriminator.
  config.generator = ml_collections.ConfigDict(dict(
      z_dim=512, w_dim=512, num_classes=num_classes, empty_class=empty_class,
      resolution=resolution, img_channels=img_channels, mapping_layers=8, channel_base=32768,
      channel_max=512, architecture="skip", conv_clamp=256.0, w_avg_beta=0.995,
      num_bf16_res=0))           # Highest resolutions in bfloat16 (mixed precision; 0 = off).
  config.discriminator = ml_collections.ConfigDict(dict(
      num_classes=num_classes, empty_class=empty_class, resolution=resolution,
      img_channels=img_channels, architecture="resnet", channel_base=32768, channel_max=512,
      conv_clamp=256.0, mapping_layers=8, mbstd_group_size=4, mbstd_num_channels=1,
      # Minibatch-stddev groups are formed inside this many contiguous blocks of the batch;
      # set it to the device count for NVIDIA's per-GPU groups and no cross-device traffic
      # in D (results then match any device count with the same value).
      mbstd_shards=1,
      num_bf16_res=0))           # Highest resolutions in bfloat16 (mixed precision; 0 = off).

  # Training (NVIDIA's loss/regularisation schedule; GANdance label reset).
  config.train = ml_collections.ConfigDict(dict(
      batch_size=64,             # Global batch size (all devices, all processes).
      total_kimg=25000.0,         # Training length in thousands of real images shown.
      g_lr=0.0025, d_lr=0.0025,  # Adam learning rates.
      betas=(0.0, 0.99), eps=1e-8,
      r1_gamma=10.0,             # R1 weight; 0 disables.
      r1_interval=16,            # Lazy R1 every N steps (mb_ratio scaling of lr and betas).
      pl_weight=0.0,             # Path-length regularisation weight; 0 disables.
      pl_interval=4, pl_batch_shrink=2, pl_decay=0.01,
      ema_kimg=10.0,             # Half-life of the G EMA in thousands of images.
      ema_rampup=0.05,           # EMA ramp-up (fraction of images seen), None = off.
      style_mixing_prob=0.9,     # Probability of style mixing regularisation.
      label_reset_prob=0.1,      # GANdance p: labels reset to the empty id (needs empty_class).
      # 'none'; 'ada' = NVIDIA's ADA (train/augment_pipe.py, preset `ada_pipe`, adaptive p);
      # 'diffaugment' = DiffAugment's ops (train/augment.py, `augment_policy`) at fixed
      # `augment_p`; 'diffaugment_ada' = DiffAugment's ops with ADA's adaptive p.
      augment="none",
      ada_pipe="bgc",            # 'ada': AugmentPipe preset (NVIDIA's --augpipe), e.g. 'bgc'.
      augment_policy="color,translation,cutout",  # DiffAugment ops (train/augment.py).
      augment_p=1.0,             # 'diffaugment': fixed probability of each op per image.
      # Adaptive p ('ada', 'diffaugment_ada'): target E[sign(D(real))], kimg for p to move
      # by 1 (NVIDIA: 500; its --resume sets 100), adjust every N steps.
      ada_target=0.6, ada_kimg=500.0,
      ada_interval=4,
      loss="ns",                 # 'ns' (non-saturating logistic) or 'san' (SAN, seeds/004).
      san_base="hinge",          # SAN's function-part loss: 'hinge' or 'logistic'.
      # Fine-tune a pre-trained conditional GAN (gandance_jax/train/warm_start.py): a workdir of a
      # run, a stylegan2-ada network-snapshot .pkl, or a .pth / .npz of NVIDIA state dicts;
      # '' = train from scratch. Used only when the workdir has no checkpoint yet.
      init_from="",
      init_empty="mean",         # The added empty-class row: 'mean' of the classes or 'init'.
  ))

  # Mesh: a 1-D data-parallel mesh; -1 = all devices.
  config.mesh = ml_collections.ConfigDict(dict(data=-1))

  # Logging, checkpoints, samples.
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.sample_every_steps = 1000
  config.grid_per_class = 8        # Columns of the periodic sample grid (one row per class).
  config.prefetch = 2              # Batches put on the devices ahead of the step.

  # In-loop evaluators: name -> dict(type=..., ...), run every `every_steps` and (if `final`)
  # at the end of training. See gandance_jax/evaluation/evaluators/.
  config.evals = ml_collections.ConfigDict()
  # Keep the G EMA of the best in-loop evaluation apart from the rotated checkpoints
  # (checkpoint.BestSnapshot): a metric key '<eval name>/<metric>@<scale>' such as
  # 'fid10k/fid@1.3', '' = off; 'min' (FID) or 'max' (accuracy, precision, ...).
  config.best_metric = ""
  config.best_mode = "min"
  # --mode=eval on a file instead of a checkpoint: ADM-layout .npz or class image folder.
  config.eval_samples = ""

  # Sampling defaults for --mode=sample (guidance: GANdance, supplementary Alg. 2 / 3).
  # See gandance_jax/sample_cli.py for what is written.
  config.sample = ml_collections.ConfigDict(dict(
      mode="learned",            # 'none', 'training_free' or 'learned'.
      scales=(1.0, 1.1, 1.2, 1.3, 1.4, 1.5),  # Columns of the guidance grids (Fig. 5 / S1).
      num_opposite=0,            # |C| for training-free guidance, 0 = all classes.
      opposite_labels=(),        # A fixed opposite set C (ids); () = a random C per sample.
      truncation_psi=1.0,        # Truncation psi (1 = off), applied after guidance.
      num_samples=1000,          # N images per .npz (ADM layout: arr_0 uint8, arr_1 labels).
      batch_size=250,            # Images per compiled chunk (rounded up to the device count).
      noise_mode="const",        # 'const', 'random' (per-sample) or 'none'.
      seed=0,
      npz_scales=(1.3,),         # One .npz of num_samples images per guidance scale.
      layer_scales="",           # Layer-wise schedule 'res:scale,...' (e.g. '4:1.5,8:1.5,16:1.5,
                                 # 32:1.1,64:1'); if set, replaces npz_scales / interp_scale.
      classes=(),                # Class ids of the grid rows; () = all (> 16: 16 spread evenly).
      grid_rows_per_class=1,     # Rows (z's) per class in the grids.
      interp_pairs=(),           # ((a, b), ...) interpolation ends; () = consecutive classes.
      interp_steps=8,            # Images per interpolation strip (Fig. S3).
      interp_scale=1.3,          # Guidance scale of the interpolation ends (Fig. S3: 1.3).
      outputs=("grid", "interp", "npz"),  # What --mode=sample writes.
      quantization="adm",        # uint8 convention of the .npz ('adm' or 'nvidia').
      outdir="",                 # '' = <workdir>/samples/step_<step>.
  ))
  return config


DATA_NAMES = data_base.SOURCE_NAMES
ARCHITECTURES = ("orig", "skip", "resnet")
AUGMENTS = ("none", "diffaugment", "diffaugment_ada", "ada")
ADAPTIVE_AUGMENTS = ("ada", "diffaugment_ada")      # p follows ADA's rule
AUGMENT_OPS = ("color", "translation", "cutout")


class ConfigError(errors.BadInputError):
  """An invalid config value; the message names the field."""


def parse_arg(arg: str, **defaults: Any) -> ml_collections.ConfigDict:
  """The options of a config file's argument (`--config=configs/x.py:shrink,fid`).

  `arg` is a comma-separated list of names (True) or name=value pairs, parsed as the type
  of the option's default: ``parse_arg('shrink,fid', shrink=False, fid=False)``. Raises
  ConfigError for an option the file does not define.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in (x.strip() for x in str(arg or "").split(",")):
    if not item:
      continue
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ConfigError(f"config argument {name!r} is invalid: known options are "
                        f"{sorted(defaults)}")
    default = defaults[name]
    if not value:
      out[name] = True
    elif isinstance(default, bool):
      out[name] = value.lower() in ("1", "true", "yes")
    else:
      out[name] = type(default)(value)
  return out


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ConfigError(f"config.{field} = {value!r} is invalid: {allowed}")


def _choice(cfg: Any, field: str, allowed: tuple[Any, ...], prefix: str) -> None:
  value = cfg[field]
  if value not in allowed:
    _fail(f"{prefix}.{field}", value, f"allowed values are {list(allowed)}")


def _positive_int(cfg: Any, field: str, prefix: str, allow_zero: bool = False) -> None:
  value = cfg[field]
  ok = isinstance(value, int) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  if not ok:
    _fail(f"{prefix}.{field}", value, "must be an integer " + (">= 0" if allow_zero else "> 0"))


def _number(cfg: Any, field: str, prefix: str, lo: float | None = None, hi: float | None = None,
            allow_none: bool = False) -> None:
  value = cfg[field]
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(f"{prefix}.{field}", value, "must be a finite number")
  if lo is not None and value < lo:
    _fail(f"{prefix}.{field}", value, f"must be >= {lo}")
  if hi is not None and value > hi:
    _fail(f"{prefix}.{field}", value, f"must be <= {hi}")


def _power_of_two(cfg: Any, field: str, prefix: str, minimum: int = 4) -> None:
  value = cfg[field]
  if not isinstance(value, int) or value < minimum or value & (value - 1):
    _fail(f"{prefix}.{field}", value, f"must be a power of two >= {minimum}")


BIGGAN_TRAIN = dict(
    num_D_steps=2,     # D steps per G step, each on its own batch_size / num_D_steps images.
    G_ortho=0.0,       # Modified orthogonal regularisation of G (the reference's G_ortho).
    ema_decay=0.9999,  # G EMA decay per step.
    ema_start=0,       # G EMA is a copy of G until this many steps.
    standing_stats=0,  # Forwards of G EMA re-estimating its BN statistics for sampling.
)


def use_biggan(config: ml_collections.ConfigDict) -> None:
  """Turns `base_config()` into BigGAN's (ajbrock/BigGAN-PyTorch utils.py defaults).

  config.generator / config.discriminator become the keyword arguments of biggan.Generator /
  biggan.Discriminator with `family='biggan'` (still linked to data.resolution and the class
  fields); config.train gets hinge loss, BigGAN's Adam and the fields of `BIGGAN_TRAIN`
  (train/step_biggan.py). train.batch_size is the images of one step: num_D_steps D batches.
  """
  refs = {k: config.generator.get_ref(k) for k in (
      "resolution", "num_classes", "empty_class", "img_channels")}
  config.generator = ml_collections.ConfigDict(dict(
      family="biggan", num_classes=refs["num_classes"], empty_class=refs["empty_class"],
      resolution=refs["resolution"], img_channels=refs["img_channels"], ch=64, dim_z=128,
      shared_dim=0, hier=False, bottom_width=4, attention="64", num_svs=1, num_sv_itrs=1,
      bn_eps=1e-5, sn_eps=1e-8, weight_init="ortho"))
  config.discriminator = ml_collections.ConfigDict(dict(
      family="biggan", num_classes=refs["num_classes"], empty_class=refs["empty_class"],
      resolution=refs["resolution"], img_channels=refs["img_channels"], ch=64, wide=True,
      attention="64", num_svs=1, num_sv_itrs=1, sn_eps=1e-8, weight_init="ortho"))
  config.train.update(dict(
      loss="hinge", g_lr=5e-5, d_lr=2e-4, betas=(0.0, 0.999), eps=1e-8, r1_gamma=0.0,
      pl_weight=0.0, style_mixing_prob=0.0, augment="none", **BIGGAN_TRAIN))


def _validate_biggan(config: ml_collections.ConfigDict) -> None:
  """BigGAN's network and training fields (before anything is built or compiled)."""
  g, d, t = config.generator, config.discriminator, config.train
  for net, prefix in ((g, "generator"), (d, "discriminator")):
    if net.get("resolution") != config.data.resolution:
      _fail(f"{prefix}.resolution", net.get("resolution"),
            f"must equal data.resolution = {config.data.resolution}")
  if g.get("img_channels", 3) != d.get("img_channels", 3):
    _fail("discriminator.img_channels", d.get("img_channels", 3),
          f"must equal generator.img_channels = {g.get('img_channels', 3)}")
  for net, prefix, make in ((g, "generator", families.make_generator),
                            (d, "discriminator", families.make_discriminator)):
    try:
      make(net.to_dict())
    except (TypeError, ValueError) as e:  # The constructor names the bad field.
      raise ConfigError(f"config.{prefix} (BigGAN) is invalid: {e}") from None
  for f, default in BIGGAN_TRAIN.items():
    if f not in t:
      _fail(f"train.{f}", None, f"BigGAN needs it (e.g. config_lib.use_biggan sets "
            f"{f}={default!r})")
  if t.loss != "hinge":
    _fail("train.loss", t.loss, "BigGAN trains with 'hinge' (train/step_biggan.py)")
  for f in ("r1_gamma", "pl_weight"):
    if t[f] != 0:
      _fail(f"train.{f}", t[f], "must be 0 for BigGAN (no R1 / path-length phases)")
  if t.augment == "ada":
    _fail("train.augment", t.augment, "BigGAN supports 'none' and 'diffaugment'")
  _positive_int(t, "num_D_steps", "train")
  if isinstance(t.batch_size, int) and t.batch_size % t.num_D_steps:
    _fail("train.batch_size", t.batch_size,
          f"must be a multiple of train.num_D_steps = {t.num_D_steps} (one chunk per D step)")
  _number(t, "G_ortho", "train", lo=0)
  _number(t, "ema_decay", "train", lo=0, hi=1)
  _positive_int(t, "ema_start", "train", allow_zero=True)
  _positive_int(t, "standing_stats", "train", allow_zero=True)
  if t.init_from:
    _fail("train.init_from", t.init_from, "warm starts are StyleGAN2-only for now: BigGAN "
          "trains from scratch ('')")


def _validate_max_images(data: ml_collections.ConfigDict) -> None:
  """data.max_images: 0 (all) or a subset size within the dataset ('digits' only)."""
  if "max_images" not in data:  # a config saved before the field existed
    return
  _positive_int(data, "max_images", "data", allow_zero=True)
  value = data.max_images
  if not value:
    return
  if data.name != "digits":
    _fail("data.max_images", value, f"subsets are supported for data.name='digits' only "
          f"(got {data.name!r}); 0 = all images")
  if value > digits_data.NUM_IMAGES:
    _fail("data.max_images", value, f"must be <= the {digits_data.NUM_IMAGES} digits images "
          "(0 = all)")


def validate_config(config: ml_collections.ConfigDict) -> hparams_lib.HParams:
  """The typed, frozen hyper-parameters of a valid config (what everything below the entry
  point takes); raises ConfigError naming the first invalid field (and the allowed values)."""
  _choice(config.data, "name", DATA_NAMES, "data")
  _validate_max_images(config.data)
  g, d, t = config.generator, config.discriminator, config.train
  is_toy = config.data.name.startswith("mixture_")
  family = g.get("family", families.DEFAULT)
  if family not in families.FAMILIES:
    _fail("generator.family", family, f"allowed values are {list(families.FAMILIES)}")
  if d.get("family", families.DEFAULT) != family:
    _fail("discriminator.family", d.get("family", families.DEFAULT),
          f"must equal generator.family = {family!r}")
  if family == "biggan":
    _validate_biggan(config)
  elif not is_toy:
    _power_of_two(config.data, "resolution", "data", minimum=4)
    _power_of_two(g, "resolution", "generator")
    _power_of_two(d, "resolution", "discriminator", minimum=8)
    for net, prefix in ((g, "generator"), (d, "discriminator")):
      _choice(net, "architecture", ARCHITECTURES, prefix)
      if net.resolution != config.data.resolution:
        _fail(f"{prefix}.resolution", net.resolution,
              f"must equal data.resolution = {config.data.resolution}")
      _positive_int(net, "channel_base", prefix)
      _positive_int(net, "channel_max", prefix)
      _positive_int(net, "img_channels", prefix)
    if g.img_channels != d.img_channels:
      _fail("discriminator.img_channels", d.img_channels,
            f"must equal generator.img_channels = {g.img_channels}")
    _positive_int(g, "z_dim", "generator")
    _positive_int(g, "w_dim", "generator")
    _positive_int(g, "mapping_layers", "generator")
  for net, prefix in ((g, "generator"), (d, "discriminator")):
    _positive_int(net, "num_classes", prefix, allow_zero=True)
    if net.empty_class and net.num_classes == 0:
      _fail(f"{prefix}.empty_class", True, "needs num_classes > 0")
  if (g.num_classes, g.empty_class) != (d.num_classes, d.empty_class):
    _fail("discriminator.num_classes", (d.num_classes, d.empty_class),
          f"(num_classes, empty_class) must match the generator's {(g.num_classes, g.empty_class)}")

  _positive_int(t, "batch_size", "train")
  _number(t, "total_kimg", "train", lo=0)
  for f in ("g_lr", "d_lr"):
    _number(t, f, "train", lo=0)
  betas = tuple(t.betas)
  if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
    _fail("train.betas", t.betas, "must be two numbers in [0, 1)")
  _number(t, "r1_gamma", "train", lo=0)
  _positive_int(t, "r1_interval", "train")
  _number(t, "pl_weight", "train", lo=0)
  _positive_int(t, "pl_interval", "train")
  _number(t, "ema_kimg", "train", lo=0)
  _number(t, "ema_rampup", "train", lo=0, allow_none=True)
  _number(t, "style_mixing_prob", "train", lo=0, hi=1)
  _number(t, "label_reset_prob", "train", lo=0, hi=1)
  if t.label_reset_prob > 0 and not g.empty_class:
    _fail("train.label_reset_prob", t.label_reset_prob,
          "must be 0 unless generator.empty_class is True (reset labels go to the empty id)")
  _choice(t, "augment", AUGMENTS, "train")
  if family != "biggan":
    _choice(t, "loss", ("ns", "san"), "train")
  _choice(t, "san_base", ("hinge", "logistic"), "train")
  _choice(t, "init_empty", ("mean", "init"), "train")
  if not isinstance(t.init_from, str):
    _fail("train.init_from", t.init_from, "must be a path string ('' = from scratch)")
  ops = [op.strip() for op in str(t.augment_policy).split(",") if op.strip()]
  if t.get("ada_pipe", "bgc") not in augment_pipe.PRESETS:
    _fail("train.ada_pipe", t.get("ada_pipe"),
          f"allowed values are {list(augment_pipe.PRESETS)} (NVIDIA's --augpipe)")
  if t.augment in ("diffaugment", "diffaugment_ada") and (
      not ops or any(op not in AUGMENT_OPS for op in ops)):
    _fail("train.augment_policy", t.augment_policy,
          f"must be a comma-separated list of {list(AUGMENT_OPS)}")
  _number(t, "augment_p", "train", lo=0, hi=1)
  _number(t, "ada_target", "train", lo=0, hi=1)
  _number(t, "ada_kimg", "train", lo=1e-6)
  _positive_int(t, "ada_interval", "train")
  _positive_int(t, "pl_batch_shrink", "train")
  _number(t, "pl_decay", "train", lo=0, hi=1)
  _number(t, "eps", "train", lo=0)

  mesh_data = config.mesh.data
  if not isinstance(mesh_data, int) or (mesh_data != -1 and mesh_data <= 0):
    _fail("mesh.data", mesh_data, "must be -1 (all devices) or a positive device count")
  for f in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
            "sample_every_steps", "grid_per_class", "prefetch"):
    value = config[f]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      _fail(f, value, "must be an integer > 0")

  best = str(config.get("best_metric", "") or "")
  if best:
    evals = dict(config.get("evals", {}))
    name = best.split("/")[0]
    if "/" not in best or "@" not in best or name not in evals:
      _fail("best_metric", best, "must be '<eval name>/<metric>@<scale>' of an evaluator in "
            f"config.evals (have {sorted(evals)}), e.g. 'fid/fid@1.3'")
    if not int(dict(evals[name]).get("every_steps", 0) or 0):
      _fail("best_metric", best, f"config.evals.{name}.every_steps is 0: it never runs "
            "during training")
  if config.get("best_mode", "min") not in ("min", "max"):
    _fail("best_mode", config.best_mode, "allowed values are ['min', 'max']")
  s = config.sample
  validate_sample_config(s, g.num_classes, g.empty_class)
  validate_evals(config.get("evals", {}) or {})
  try:
    return hparams_lib.from_config(config)
  except ValueError as e:  # An invalid config.evals entry (the message names the field).
    raise ConfigError(str(e)) from None


def validate_evals(evals: Any) -> None:
  """The number fields of each config.evals entry, before anything is built (the evaluator
  registry checks the rest, naming the field too). A value the command line could not parse
  as a number (e.g. `(nan,)`, kept as text) is named here."""
  for name, spec in dict(evals).items():
    if not isinstance(spec, (dict, ml_collections.ConfigDict)):
      _fail(f"evals.{name}", spec, "must be a dict of evaluator fields, e.g. "
            "dict(type='fid', num_samples=10000)")
    spec = dict(spec)
    if "guidance_scales" in spec:
      scales = spec["guidance_scales"]
      if isinstance(scales, str) or not hasattr(scales, "__len__") or not len(scales):
        _fail(f"evals.{name}.guidance_scales", scales, "must be a tuple of finite numbers, "
              "e.g. (1.0, 1.3)")
      for i, scale in enumerate(scales):
        _finite(scale, f"evals.{name}.guidance_scales[{i}]")
    for f in ("num_samples", "batch_size", "every_steps"):
      if f in spec:
        _positive_int(spec, f, f"evals.{name}", allow_zero=f == "every_steps")


SAMPLE_OUTPUTS = ("grid", "interp", "npz")


def _class_id(value: Any, field: str, num_classes: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
    _fail(field, value, f"must be a class id in [0, {num_classes})")


def _finite(value: Any, field: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(field, value, "must be a finite number")


def _scale(value: Any, field: str) -> None:
  _finite(value, field)
  if value < 0:
    # Refused rather than silently extrapolated: the paper's scales are >= 1 (1 = plain
    # conditional sampling, 0 = the empty class's style); a negative scale pushes the
    # sample away from its own class.
    _fail(field, value, "must be >= 0 (1 = no guidance, > 1 = guided)")


def validate_sample_config(s: Any, num_classes: int, empty_class: bool) -> None:
  """Checks `config.sample` against a generator with `num_classes` (+ the empty class)."""
  _choice(s, "mode", guidance.MODES, "sample")
  _choice(s, "noise_mode", base.NOISE_MODES, "sample")
  _choice(s, "quantization", images.QUANTIZATIONS, "sample")
  if s.mode != "none" and num_classes == 0:
    _fail("sample.mode", s.mode, "guidance needs a class-conditional generator")
  if s.mode == "learned" and not empty_class:
    _fail("sample.mode", s.mode, "'learned' needs generator.empty_class = True")
  if not len(s.scales):
    _fail("sample.scales", s.scales, "must hold at least one scale")
  for i, scale in enumerate(s.scales):
    _scale(scale, f"sample.scales[{i}]")
  if not len(s.npz_scales):
    _fail("sample.npz_scales", s.npz_scales, "must hold at least one scale")
  for i, scale in enumerate(s.npz_scales):
    _scale(scale, f"sample.npz_scales[{i}]")
  _scale(s.interp_scale, "sample.interp_scale")
  if s.layer_scales:
    for item in str(s.layer_scales).replace(" ", "").split(","):
      parts = item.split(":")
      try:
        ok = (len(parts) == 2 and int(parts[0]) >= 4 and math.isfinite(float(parts[1]))
              and float(parts[1]) >= 0)
      except ValueError:
        ok = False
      if not ok:
        _fail("sample.layer_scales", s.layer_scales,
              "must look like '4:1.5,8:1.5,16:1.5,32:1.1,64:1' (resolution:finite scale "
              ">= 0)")
  _positive_int(s, "num_opposite", "sample", allow_zero=True)
  if s.num_opposite > num_classes:
    _fail("sample.num_opposite", s.num_opposite,
          f"must be <= the number of classes {num_classes} (0 = all classes)")
  opposite = list(s.opposite_labels)
  if opposite:
    if len(opposite) > num_classes:
      _fail("sample.opposite_labels", s.opposite_labels,
            f"has {len(opposite)} ids but there are only {num_classes} classes")
    for c in opposite:
      _class_id(c, "sample.opposite_labels", num_classes)
    if len(set(opposite)) != len(opposite):
      _fail("sample.opposite_labels", s.opposite_labels, "must not repeat a class id")
  for c in s.classes:
    _class_id(c, "sample.classes", num_classes)
  for pair in s.interp_pairs:
    if len(pair) != 2:
      _fail("sample.interp_pairs", s.interp_pairs, "must be pairs (a, b) of class ids")
    for c in pair:
      _class_id(c, "sample.interp_pairs", num_classes)
  _number(s, "truncation_psi", "sample")
  _positive_int(s, "num_samples", "sample")
  _positive_int(s, "batch_size", "sample")
  _positive_int(s, "grid_rows_per_class", "sample")
  _positive_int(s, "interp_steps", "sample")
  if s.interp_steps < 2:
    _fail("sample.interp_steps", s.interp_steps, "must be >= 2")
  for out in s.outputs:
    if out not in SAMPLE_OUTPUTS:
      _fail("sample.outputs", s.outputs, f"entries must be in {list(SAMPLE_OUTPUTS)}")
  _positive_int(s, "seed", "sample", allow_zero=True)


def cpu_sized_digits(config: ml_collections.ConfigDict, *, batch_size: int,
                     total_kimg: float) -> None:
  """The CPU-sized networks and training of the embedded digits configs (configs/digits.py,
  configs/digits100.py): about 60k parameters each ('orig' architectures avoid the FIR
  resampling of skip/resnet, the slow part on XLA:CPU), DiffAugment translation + cutout
  (no 'color': for digits100 colour is half of the class)."""
  config.generator.update(dict(
      z_dim=64, w_dim=64, mapping_layers=2, channel_base=256, channel_max=32,
      architecture="orig"))
  config.discriminator.update(dict(
      architecture="orig", channel_base=256, channel_max=32, mapping_layers=2,
      mbstd_group_size=4))
  config.train.update(dict(
      batch_size=batch_size, total_kimg=total_kimg, g_lr=0.002, d_lr=0.002, r1_gamma=0.1,
      ema_kimg=1.0, ema_rampup=0.05, style_mixing_prob=0.0, label_reset_prob=0.1,
      augment="diffaugment", augment_policy="translation,cutout", augment_p=1.0))
  config.log_every_steps = 100


def shrink_digits(config: ml_collections.ConfigDict) -> None:
  """`:shrink` of the digits configs: a seconds-long smoke test of every phase."""
  config.generator.update(dict(z_dim=16, w_dim=16, channel_base=128, channel_max=16))
  config.discriminator.update(dict(channel_base=128, channel_max=16))
  config.train.update(dict(batch_size=8, total_kimg=0.08))
  config.log_every_steps = 2
  config.checkpoint_every_steps = 5
  config.sample_every_steps = 5
  config.sample.update(dict(num_samples=40, batch_size=20))
  config.evals.class_accuracy.update(dict(num_samples=100, batch_size=20))
