"""The FID Inception-v3 network (TF graph `inception-2015-12-05`, as ported by pytorch-fid).

This is the network every published FID uses: the 2015-12-05 TensorFlow graph
(`classify_image_graph_def.pb`) in the PyTorch port of pytorch-fid's `fid_inception_v3()`,
i.e. torchvision's Inception-v3 with the blocks patched to match TF:

* `FIDInceptionA/C/E_1`: the branch average pool (3x3, stride 1, pad 1) ignores the padded
  zeros (`count_include_pad=False`, TF's 'SAME' average pool).
* `FIDInceptionE_2` (Mixed_7c): the branch pool is a *max* pool (a quirk of the TF graph).
* 1008-way classifier (`fc`), no auxiliary head.
* max pools are 3x3 stride 2 'VALID' (torch floor mode); BatchNorm eps is 0.001.

Layout: NHWC activations, HWIO kernels. BatchNorm (inference) is folded into each conv's
kernel and bias when weights are loaded, so the forward pass is conv + bias + ReLU.
Parameters are named after the pytorch state dict (`params['Mixed_5b']['branch1x1']`
holds `Mixed_5b.branch1x1.conv.weight` and `Mixed_5b.branch1x1.bn.*` folded).

Weights: the file `pt_inception-2015-12-05-6726825d.pth` from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
(about 91 MB). It is verified like torch.hub does: the filename's suffix `6726825d` must be
the prefix of the file's sha256 (`weights.verify_sha256_prefix`). Reading a `.pth` needs
torch; convert it once to `.npz` (no torch needed afterwards)::

  python -m gandance_jax.evaluation.weights convert pt_inception-2015-12-05-6726825d.pth \
      pt_inception-2015-12-05.npz

then::

  state = weights.load_state_dict('pt_inception-2015-12-05.npz')
  inc_vars = inception.from_pytorch_fid_state_dict(state)
  feats = inception.pool3_features(inc_vars, images)          # images NHWC in [-1, 1]
  extractor = inception.make_extractor(inc_vars, convention='tf1')  # for features.extract

Block boundaries (as pytorch-fid's `InceptionV3` output blocks): block0 after the first
max pool [B, 73, 73, 64]; block1 after the second max pool [B, 35, 35, 192]; block2 after
Mixed_6e [B, 17, 17, 768]; pool3 = global average pool after Mixed_7c [B, 2048].
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gandance_jax.evaluation import features as features_lib

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3  # TF graph / pytorch-fid BasicConv2d
EXTRACTOR_NAME = "inception_v3_2015_12_05_pool3"
# Below this N, FID with 2048-d Inception features is strongly biased (the community's
# numbers use 50k samples; 10k is the usual minimum for comparison).
MIN_SAMPLES = 10_000

PrecisionLike = Any


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class _Blocks(nn.Module):
  """Shared helper: conv (BN folded) + ReLU, named as in the pytorch state dict."""
  precision: PrecisionLike = None

  def conv(self, x: jax.Array, features: int, kernel: int | tuple[int, int], name: str,
           stride: int = 1, padding: int | tuple[int, int] = 0) -> jax.Array:
    ph, pw = _pair(padding)
    y = nn.Conv(features, _pair(kernel), strides=_pair(stride),
                padding=((ph, ph), (pw, pw)), use_bias=True, precision=self.precision,
                name=name)(x)
    return nn.relu(y)


def _avg_pool_same(x: jax.Array) -> jax.Array:
  # TF's 'SAME' average pool divides by the number of real (unpadded) pixels.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_valid(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(_Blocks):
  """Mixed_5b/5c/5d (FIDInceptionA). Concat order: 1x1, 5x5, 3x3dbl, pool."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv(x, 64, 1, "branch1x1")
    b5 = self.conv(x, 48, 1, "branch5x5_1")
    b5 = self.conv(b5, 64, 5, "branch5x5_2", padding=2)
    b3 = self.conv(x, 64, 1, "branch3x3dbl_1")
    b3 = self.conv(b3, 96, 3, "branch3x3dbl_2", padding=1)
    b3 = self.conv(b3, 96, 3, "branch3x3dbl_3", padding=1)
    bp = self.conv(_avg_pool_same(x), self.pool_features, 1, "branch_pool")
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Blocks):
  """Mixed_6a (torchvision InceptionB). Concat order: 3x3, 3x3dbl, max pool."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv(x, 384, 3, "branch3x3", stride=2)
    bd = self.conv(x, 64, 1, "branch3x3dbl_1")
    bd = self.conv(bd, 96, 3, "branch3x3dbl_2", padding=1)
    bd = self.conv(bd, 96, 3, "branch3x3dbl_3", stride=2)
    return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class InceptionC(_Blocks):
  """Mixed_6b..6e (FIDInceptionC). Concat order: 1x1, 7x7, 7x7dbl, pool."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = self.conv(x, 192, 1, "branch1x1")
    b7 = self.conv(x, c7, 1, "branch7x7_1")
    b7 = self.conv(b7, c7, (1, 7), "branch7x7_2", padding=(0, 3))
    b7 = self.conv(b7, 192, (7, 1), "branch7x7_3", padding=(3, 0))
    bd = self.conv(x, c7, 1, "branch7x7dbl_1")
    bd = self.conv(bd, c7, (7, 1), "branch7x7dbl_2", padding=(3, 0))
    bd = self.conv(bd, c7, (1, 7), "branch7x7dbl_3", padding=(0, 3))
    bd = self.conv(bd, c7, (7, 1), "branch7x7dbl_4", padding=(3, 0))
    bd = self.conv(bd, 192, (1, 7), "branch7x7dbl_5", padding=(0, 3))
    bp = self.conv(_avg_pool_same(x), 192, 1, "branch_pool")
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Blocks):
  """Mixed_7a (torchvision InceptionD). Concat order: 3x3, 7x7x3, max pool."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = self.conv(x, 192, 1, "branch3x3_1")
    b3 = self.conv(b3, 320, 3, "branch3x3_2", stride=2)
    b7 = self.conv(x, 192, 1, "branch7x7x3_1")
    b7 = self.conv(b7, 192, (1, 7), "branch7x7x3_2", padding=(0, 3))
    b7 = self.conv(b7, 192, (7, 1), "branch7x7x3_3", padding=(3, 0))
    b7 = self.conv(b7, 192, 3, "branch7x7x3_4", stride=2)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class InceptionE(_Blocks):
  """Mixed_7b (FIDInceptionE_1, avg pool) / Mixed_7c (FIDInceptionE_2, max pool).

  Concat order: 1x1, [3x3_2a, 3x3_2b], [3x3dbl_3a, 3x3dbl_3b], pool.
  """
  pool: str = "avg"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = self.conv(x, 320, 1, "branch1x1")
    b3 = self.conv(x, 384, 1, "branch3x3_1")
    b3 = jnp.concatenate([
        self.conv(b3, 384, (1, 3), "branch3x3_2a", padding=(0, 1)),
        self.conv(b3, 384, (3, 1), "branch3x3_2b", padding=(1, 0)),
    ], axis=-1)
    bd = self.conv(x, 448, 1, "branch3x3dbl_1")
    bd = self.conv(bd, 384, 3, "branch3x3dbl_2", padding=1)
    bd = jnp.concatenate([
        self.conv(bd, 384, (1, 3), "branch3x3dbl_3a", padding=(0, 1)),
        self.conv(bd, 384, (3, 1), "branch3x3dbl_3b", padding=(1, 0)),
    ], axis=-1)
    if self.pool == "avg":
      pooled = _avg_pool_same(x)
    else:  # The TF graph's quirk in its last block: a max pool (padding never wins: x >= 0).
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = self.conv(pooled, 192, 1, "branch_pool")
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(_Blocks):
  """The FID Inception-v3 on preprocessed NHWC input (299x299, values in [-1, 1]).

  Returns a dict: block0 [B, 73, 73, 64], block1 [B, 35, 35, 192], block2 [B, 17, 17, 768]
  (for 299 input), pool3 [B, 2048], logits [B, 1008] (fc with bias). Unused outputs cost
  nothing under jit (dead code).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    p = self.precision
    out = {}
    x = self.conv(x, 32, 3, "Conv2d_1a_3x3", stride=2)
    x = self.conv(x, 32, 3, "Conv2d_2a_3x3")
    x = self.conv(x, 64, 3, "Conv2d_2b_3x3", padding=1)
    x = out["block0"] = _max_pool_valid(x)
    x = self.conv(x, 80, 1, "Conv2d_3b_1x1")
    x = self.conv(x, 192, 3, "Conv2d_4a_3x3")
    x = out["block1"] = _max_pool_valid(x)
    x = InceptionA(precision=p, pool_features=32, name="Mixed_5b")(x)
    x = InceptionA(precision=p, pool_features=64, name="Mixed_5c")(x)
    x = InceptionA(precision=p, pool_features=64, name="Mixed_5d")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    x = InceptionC(precision=p, channels_7x7=128, name="Mixed_6b")(x)
    x = InceptionC(precision=p, channels_7x7=160, name="Mixed_6c")(x)
    x = InceptionC(precision=p, channels_7x7=160, name="Mixed_6d")(x)
    x = out["block2"] = InceptionC(precision=p, channels_7x7=192, name="Mixed_6e")(x)
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = InceptionE(precision=p, pool="avg", name="Mixed_7b")(x)
    x = InceptionE(precision=p, pool="max", name="Mixed_7c")(x)
    pool3 = out["pool3"] = jnp.mean(x, axis=(1, 2))
    out["logits"] = nn.Dense(NUM_CLASSES, precision=p, name="fc")(pool3)
    return out


# ----------------------------------------------------------------------------------------------
# Loading pytorch-fid weights.


@functools.lru_cache(maxsize=1)
def _param_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flattened Flax parameter shapes (abstract init; no compute)."""
  shapes = jax.eval_shape(lambda: FIDInceptionV3().init(
      jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.float32)))
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]:
    flat[tuple(k.key for k in path)] = tuple(leaf.shape)
  return flat


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """The pytorch-fid `pt_inception-2015-12-05` state-dict layout: key -> shape.

  `*.bn.num_batches_tracked` (shape ()) keys are accepted by the loader but not listed.
  """
  out = {}
  for path, shape in _param_shapes().items():
    prefix = ".".join(path[:-1])
    if path[0] == "fc":
      out[f"fc.{'weight' if path[-1] == 'kernel' else 'bias'}"] = (
          tuple(reversed(shape)) if path[-1] == "kernel" else shape)
    elif path[-1] == "kernel":
      kh, kw, cin, cout = shape
      out[f"{prefix}.conv.weight"] = (cout, cin, kh, kw)
      for name in ("weight", "bias", "running_mean", "running_var"):
        out[f"{prefix}.bn.{name}"] = (cout,)
  return out


def from_pytorch_fid_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
  """Flax variables from the pytorch-fid Inception state dict, BatchNorm folded.

  Args:
    state: key -> array (numpy, or anything `np.asarray` takes, e.g. CPU torch tensors) in the
      layout of `pt_inception-2015-12-05-6726825d.pth` (conv weights [out, in, kh, kw],
      `fc.weight` [1008, 2048]). `num_batches_tracked` keys may be present or not.

  Returns:
    `{'params': ...}` for `FIDInceptionV3`, float32: each conv's kernel [kh, kw, in, out] is
    scaled by `gamma / sqrt(running_var + 0.001)` and its bias is
    `beta - running_mean * gamma / sqrt(running_var + 0.001)` (folded in float64).

  Raises:
    ValueError: naming the missing, unexpected or mis-shaped keys.
  """
  expected = state_dict_shapes()
  keys = {k for k in state if not k.endswith(".num_batches_tracked")}
  missing = sorted(set(expected) - keys)
  unexpected = sorted(keys - set(expected))
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:8])}"
                    + (" ..." if len(missing) > 8 else ""))
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:8])}"
                    + (" ..." if len(unexpected) > 8 else ""))
  arrays = {}
  for k in sorted(set(expected) & keys):
    v = state[k]
    if hasattr(v, "detach"):  # a torch tensor
      v = v.detach().cpu().numpy()
    v = np.asarray(v, np.float64)
    if v.shape != expected[k]:
      problems.append(f"key {k} has shape {v.shape}, expected {expected[k]}")
    arrays[k] = v
  if problems:
    raise ValueError("not a pytorch-fid Inception state dict (pt_inception-2015-12-05 layout): "
                     + "; ".join(problems))
  for k, v in arrays.items():
    if not np.isfinite(v).all():
      raise ValueError(f"key {k} contains NaN/Inf")

  params: dict[str, Any] = {}
  for path in _param_shapes():
    node = params
    for p in path[:-2]:
      node = node.setdefault(p, {})
    leaf = node.setdefault(path[-2], {})
    prefix = ".".join(path[:-1])
    if path[0] == "fc":
      leaf["kernel"] = arrays["fc.weight"].T.astype(np.float32)
      leaf["bias"] = arrays["fc.bias"].astype(np.float32)
    elif path[-1] == "kernel":
      w = arrays[f"{prefix}.conv.weight"]
      gamma, beta = arrays[f"{prefix}.bn.weight"], arrays[f"{prefix}.bn.bias"]
      mean, var = arrays[f"{prefix}.bn.running_mean"], arrays[f"{prefix}.bn.running_var"]
      if (var < 0).any():
        raise ValueError(f"key {prefix}.bn.running_var has negative entries")
      scale = gamma / np.sqrt(var + BN_EPS)
      leaf["kernel"] = (w.transpose(2, 3, 1, 0) * scale).astype(np.float32)
      leaf["bias"] = (beta - mean * scale).astype(np.float32)
  return jax.tree_util.tree_map(jnp.asarray, {"params": params})


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """Random float32 weights in the pytorch-fid layout (benchmarks, tests): He-scaled conv
  weights and BN statistics near identity, so activations stay O(1) through the network."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in state_dict_shapes().items():
    if k.endswith("conv.weight") or k == "fc.weight":
      fan_in = int(np.prod(shape[1:]))
      v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif k.endswith("running_var"):
      v = rng.uniform(0.5, 1.5, shape)
    elif k.endswith("bn.weight"):
      v = rng.uniform(0.8, 1.2, shape)
    else:  # biases, running means
      v = 0.1 * rng.standard_normal(shape)
    out[k] = v.astype(np.float32)
  return out


# ----------------------------------------------------------------------------------------------
# Preprocessing and the public feature functions.


def _check_options(convention: str, quantize: str | None) -> str:
  if convention not in features_lib.CONVENTIONS:
    raise ValueError(f"convention must be one of {features_lib.CONVENTIONS}, got "
                     f"{convention!r}")
  if quantize is None:
    quantize = "adm" if convention == "tf1" else "none"
  if quantize not in features_lib.QUANTIZE_MODES:
    raise ValueError(f"quantize must be one of {features_lib.QUANTIZE_MODES}, got {quantize!r}")
  return quantize


def preprocess(images: jax.Array, convention: str = "pytorch_fid",
               quantize: str | None = None) -> jax.Array:
  """NHWC images -> the network's 299x299 input in [-1, 1], as the chosen reference does it.

  Args:
    images: [B, H, W, C] float in [-1, 1] or uint8 in [0, 255]; C is 1 (tiled) or 3.
    convention: 'pytorch_fid' or 'tf1' (see `features` module docstring).
    quantize: for float input: 'none', 'adm' or 'nvidia'; default 'none' for 'pytorch_fid'
      and 'adm' for 'tf1'. Ignored for uint8 input.

  Returns:
    [B, 299, 299, 3] float32.
  """
  quantize = _check_options(convention, quantize)
  if images.shape[-1] == 1:
    images = jnp.tile(images, (1, 1, 1, 3))
  is_uint8 = images.dtype == jnp.uint8
  size = (INPUT_SIZE, INPUT_SIZE)
  if convention == "pytorch_fid":
    if is_uint8:
      x01 = images.astype(jnp.float32) / 255.0  # torchvision ToTensor
    elif quantize != "none":
      x01 = features_lib.quantize_uint8(images, quantize) / 255.0
    else:
      x01 = (images.astype(jnp.float32) + 1.0) * 0.5
    x01 = features_lib.resize_bilinear(x01, size, method="half_pixel")
    return 2.0 * x01 - 1.0
  # tf1: the graph gets float [0, 255] values, resizes them, then (x - 128) / 128.
  if is_uint8:
    v = images.astype(jnp.float32)
  elif quantize != "none":
    v = features_lib.quantize_uint8(images, quantize)
  else:
    v = (images.astype(jnp.float32) + 1.0) * 127.5
  v = features_lib.resize_bilinear(v, size, method="tf1")
  return (v - 128.0) / 128.0


# Preprocessing and the network are jitted apart, so every input resolution shares one compile
# of the network (per batch size); `make_extractor` fuses both for its fixed-size batches.
_preprocess_jit = jax.jit(preprocess, static_argnames=("convention", "quantize"))


@functools.partial(jax.jit, static_argnames=("precision",))
def _network(variables, x, precision):
  return FIDInceptionV3(precision=precision).apply(variables, x)


def inception_outputs(variables: Mapping[str, Any], images: features_lib.ArrayLike, *,
                      convention: str = "pytorch_fid", quantize: str | None = None,
                      precision: PrecisionLike = "highest") -> dict[str, jax.Array]:
  """All outputs: block0, block1, block2 (NHWC), pool3 [B, 2048], logits [B, 1008].

  Images: NHWC float in [-1, 1] or uint8 in [0, 255], any resolution (resized to 299).
  `precision` is the conv/matmul precision; 'highest' keeps float32 on GPUs (no TF32).
  (Returning the blocks costs a few MB of copies per batch next to 5.7 GFLOPs per image; one
  compile then serves every caller.)
  """
  quantize = _check_options(convention, quantize)
  images = features_lib.check_images(images, 3)
  x = _preprocess_jit(jnp.asarray(images), convention=convention, quantize=quantize)
  return _network(variables, x, precision)


def pool3_features(variables: Mapping[str, Any], images: features_lib.ArrayLike, *,
                   convention: str = "pytorch_fid", quantize: str | None = None,
                   precision: PrecisionLike = "highest") -> jax.Array:
  """Pool3 features [B, 2048] of NHWC images (float in [-1, 1] or uint8), any resolution.

  Images are resized to 299x299 as the chosen convention's reference does (pytorch-fid:
  half-pixel bilinear without antialiasing; tf1: TF1 legacy bilinear). For many images use
  `make_extractor` with `features.extract` (fixed-size jitted batches, progress bar).
  """
  return inception_outputs(variables, images, convention=convention, quantize=quantize,
                           precision=precision)["pool3"]


def make_extractor(variables: Mapping[str, Any], *, convention: str = "pytorch_fid",
                   quantize: str | None = None,
                   precision: PrecisionLike = "highest") -> features_lib.FeatureExtractor:
  """A `FeatureExtractor`: pool3 features and ADM's bias-free 1008-way logits.

  The logits are `pool3 @ fc.weight.T` without the fc bias, as guided-diffusion's evaluator
  computes the Inception Score (`softmax/logits/MatMul` of the TF graph).
  """
  quantize = _check_options(convention, quantize)
  model = FIDInceptionV3(precision=precision)

  def apply_fn(variables, images):
    out = model.apply(variables, preprocess(images, convention, quantize))
    pool3 = out["pool3"]
    logits = jnp.dot(pool3, variables["params"]["fc"]["kernel"], precision=precision)
    return pool3, logits

  return features_lib.FeatureExtractor(
      name=EXTRACTOR_NAME, convention=convention, dim=POOL3_DIM, num_classes=NUM_CLASSES,
      apply_fn=apply_fn, params=variables, channels=3, min_samples=MIN_SAMPLES, quantize=quantize)
