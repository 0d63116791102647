"""BigGAN (networks/biggan.py): parity with BigGAN-PyTorch, interface, GANdance on it."""

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import guidance
from gandance_jax import sampler as sampler_lib
from gandance_jax.networks import biggan
from tests.conftest import TEST_DATA_DIR, golden_path

EXTRA_DIR = TEST_DATA_DIR / "biggan_extra"
EXTRA = json.loads((EXTRA_DIR / "settings.json").read_text())
GOLDEN_NAME = "biggan_c10_res32_attn16"
# The parity bound. float32 through ~20 layers accumulates ~1e-6 relative here (seen
# <= 1.2e-5 for the train-mode image at res 128, whose BN divides by a 1-sample variance).
REL_TOL = 1e-4
# An all-zero reference (the second singular vector of a rank-1 weight is Gram-Schmidt'ed to
# zero) must stay zero up to the rounding of a unit vector's components.
ZERO_TOL = 1e-6
# These programs run once: compile with XLA's backend optimisation off (about half the
# compile time on CPU, which dominates here; the same float32 ops, so the bounds hold).
_FAST = {"xla_backend_optimization_level": 0}


def _run_once(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)(*args)


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------------------
# Parity with BigGAN-PyTorch: the golden file and the extra settings.


def _reference_case(name):
  if name == GOLDEN_NAME:
    npz = golden_path("biggan", f"{name}.npz")
    constructor = json.loads(golden_path("biggan", f"{name}.json").read_text())["constructor"]
  else:
    npz = EXTRA_DIR / f"{name}.npz"
    constructor = EXTRA["settings"][name]["constructor"]
  data = np.load(npz)
  return {k: data[k] for k in data.files}, constructor


def _outputs(data, constructor):
  """Everything the reference file holds, computed here in one program, keyed as there."""
  G, g_vars = biggan.generator_from_torch_state_dict(data, **constructor)
  D, d_vars = biggan.discriminator_from_torch_state_dict(data, **constructor)
  z = jnp.asarray(data["in.z"])
  labels = jnp.asarray(data["in.labels"].astype(np.int32))
  x_real, img_ref = _nhwc(data["in.x_real"]), _nhwc(data["out.img"])
  with_grads = "in.img_weights" in data

  def run(g_vars, d_vars, z, labels, x_real, img_ref):
    out = {"img": G.apply(g_vars, z, labels)}
    out["img_train"], out["g_after"] = G.apply(g_vars, z, labels, train=True,
                                               mutable=[biggan.STATS])
    # D on the reference's image, so that D's parity does not depend on G's.
    both = D.apply(d_vars, jnp.concatenate([x_real, img_ref]), jnp.concatenate([labels] * 2))
    out["d_real"], out["d_fake"] = jnp.split(both, 2)
    out["d_train"], out["d_after"] = D.apply(d_vars, x_real, labels, train=True,
                                             mutable=[biggan.STATS])
    if with_grads:
      img_w = _nhwc(data["in.img_weights"])
      logit_w = jnp.asarray(data["in.logit_weights"][:, 0])
      out["g_grad"] = jax.grad(lambda p: jnp.sum(
          G.apply({**g_vars, "params": p}, z, labels) * img_w))(g_vars["params"])
      out["d_grad"] = jax.grad(lambda p: jnp.sum(
          D.apply({**d_vars, "params": p}, x_real, labels) * logit_w))(d_vars["params"])
    return out

  out = _run_once(run, g_vars, d_vars, z, labels, x_real, img_ref)
  mine = {"out.img": out["img"], "out.img_train_bn": out["img_train"],
          "out.d_logits_real": out["d_real"], "out.d_logits_fake": out["d_fake"],
          "out.d_logits_real_train": out["d_train"]}
  for net in ("G", "D"):
    after = biggan.torch_state_dict(out[f"{net.lower()}_after"])
    mine.update({f"out.after_train.{net}.{k}": v for k, v in after.items()})
    if with_grads:
      grads = biggan.torch_state_dict({"params": out[f"{net.lower()}_grad"]})
      mine.update({f"grad.{net}.{k}": v for k, v in grads.items()})
  return mine


def _layout(key, value):
  value = np.asarray(value)
  if key.startswith("out.img"):
    return value.transpose(0, 3, 1, 2)
  if key.startswith("out.d_logits"):
    return value[:, None]
  return value


def _check(data, mine, prefixes):
  keys = [k for k in data if k.startswith(prefixes)]
  assert keys, f"the reference file has no {prefixes} entries"
  worst = []
  for key in keys:
    ref = data[key]
    assert key in mine, f"{key} of the reference is not produced here"
    got = _layout(key, mine[key])
    assert got.shape == ref.shape, (key, got.shape, ref.shape)
    scale = float(np.max(np.abs(ref)))
    err = float(np.max(np.abs(got - ref)))
    bound = REL_TOL * scale if scale > 0 else ZERO_TOL
    worst.append((err / bound, key, err, scale))
  worst.sort(reverse=True)
  assert worst[0][0] <= 1, f"max |diff| over the bound (ratio, key, diff, ref scale): {worst[:3]}"


# One test per setting (one compiled program each; a module fixture shared by several tests
# would be recomputed on every pytest-xdist worker).
@pytest.mark.parametrize("name", [GOLDEN_NAME] + sorted(EXTRA["settings"]))
def test_parity_with_biggan_pytorch(name):
  """Eval-mode image and D logits (real, fake); train-mode image (batch statistics), D train
  logits and the u / sv / running statistics after one train-mode forward; and, where the
  file has them, weight gradients (sigma carries W's gradient, u and v do not)."""
  data, constructor = _reference_case(name)
  mine = _outputs(data, constructor)
  _check(data, mine, ("out.img", "out.d_logits_real", "out.d_logits_fake"))
  assert not np.allclose(data["out.img"], data["out.img_train_bn"])  # Train mode is tested.
  _check(data, mine, ("out.img_train_bn", "out.d_logits_real_train", "out.after_train."))
  # Every buffer the reference has was updated here too (no buffer left out).
  after = {k for k in data if k.startswith("out.after_train.")}
  state = {k for k in data if k.startswith(("G.", "D.")) and
           k.rsplit(".", 1)[-1].startswith(("u", "sv", "stored_"))}
  assert {"out.after_train." + k for k in state} == after
  if EXTRA["settings"].get(name, {}).get("grads"):
    _check(data, mine, ("grad.",))


def test_architecture_tables_match_the_reference():
  """Every table resolution: the same state-dict keys and shapes as BigGAN-PyTorch's nets."""
  for res, table in EXTRA["tables"].items():
    for net, cls, names, init in (
        ("G", biggan.Generator, biggan._G_NAMES, biggan.init_generator),
        ("D", biggan.Discriminator, biggan._D_NAMES, biggan.init_discriminator)):
      module = cls(**biggan._kwargs(table["constructor"], names))
      shapes = jax.eval_shape(lambda m=module, i=init: i(m, jax.random.key(0)))
      zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
      ours = {k: list(v.shape) for k, v in biggan.torch_state_dict(zeros).items()}
      assert ours == table[net], (res, net, sorted(set(ours) ^ set(table[net]))[:8])


# --------------------------------------------------------------------------------------
# Errors: named, before anything is compiled.


def test_state_dict_errors_name_the_key():
  data, constructor = _reference_case(GOLDEN_NAME)
  with pytest.raises(ValueError, match=r"missing keys \[.*'blocks\.3\.0"):
    biggan.generator_from_torch_state_dict(data, **{**constructor, "resolution": 64})
  stylegan = {"G.mapping.fc0.weight": np.zeros((4, 4)), **{
      k: v for k, v in data.items() if k.startswith("G.")}}
  with pytest.raises(ValueError, match=r"unexpected keys \['mapping\.fc0\.weight'\]"):
    biggan.generator_from_torch_state_dict(stylegan, **constructor)
  bad = dict(data, **{"D.embed.weight": np.zeros((11, 32), np.float32)})
  with pytest.raises(ValueError, match=r"key 'embed\.weight' has shape \(11, 32\), expected "
                                       r"\(10, 32\)"):
    biggan.discriminator_from_torch_state_dict(bad, **constructor)
  with pytest.raises(ValueError, match=r"unknown BigGAN constructor names \['G_chh'\]"):
    biggan.generator_from_torch_state_dict(data, G_chh=8, **constructor)
  with pytest.raises(ValueError, match="G_shared=False is not supported"):
    biggan.generator_from_torch_state_dict(data, **{**constructor, "G_shared": False})


def test_bad_settings_name_the_field():
  with pytest.raises(ValueError, match=r"attention resolutions \[64\] are not in the "
                                       r"resolution-32 table, whose blocks are at \[8, 16, 32\]"):
    biggan.Generator(num_classes=3, resolution=32, attention="64")
  with pytest.raises(ValueError, match=r"attention resolutions \[8\] are not in the "
                                       r"resolution-32 table, whose blocks are at \[16\]"):
    biggan.Discriminator(num_classes=3, resolution=32, attention="8")
  with pytest.raises(ValueError, match=r"resolution must be one of \[32, 64, 128, 256\]"):
    biggan.Generator(num_classes=3, resolution=48)
  with pytest.raises(ValueError, match="weight_init must be one of"):
    biggan.Discriminator(num_classes=3, resolution=32, attention="0", weight_init="kaiming")
  with pytest.raises(ValueError, match="truncation must be a finite threshold"):
    biggan.Generator(num_classes=3, resolution=32, attention="0", truncation=-1.0)
  assert biggan.parse_attention("0") == () and biggan.parse_attention("32_16") == (16, 32)


TINY = dict(num_classes=5, resolution=32, ch=2, dim_z=11, shared_dim=3, hier=True,
            attention="16")


def _vars(module, *args, seed=0):
  """Random variables from eval_shape (no compile); stored variances kept positive."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    x = rng.standard_normal(s.shape).astype(np.float32)
    return jnp.asarray(np.abs(x) + 0.5 if path[-1].key == "stored_var" else x)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def tiny():
  G = biggan.Generator(empty_class=True, **TINY)
  v = _vars(G, jnp.zeros((2, G.z_dim)), jnp.zeros((2,), jnp.int32))
  return G, v


def test_label_and_input_errors(tiny):
  G, v = tiny
  z = jnp.zeros((2, G.z_dim))
  with pytest.raises(ValueError, match=r"label ids must be in \[0, 5\) or 5 \(empty class\), "
                                       r"got \[6\]"):
    G.apply(v, z, jnp.asarray([0, 6]), method=G.mapping)
  G_plain = biggan.Generator(**TINY)
  with pytest.raises(ValueError, match="needs empty_class=True"):
    G_plain.apply(v, z, jnp.asarray([5, 0]), method=G_plain.mapping)
  D = biggan.Discriminator(num_classes=5, resolution=32, ch=2, attention="16")
  with pytest.raises(ValueError, match=r"label ids must be in \[0, 5\), got \[-1\]"):
    D.apply({}, jnp.zeros((2, 32, 32, 3)), jnp.asarray([-1, 0]))
  with pytest.raises(ValueError, match=r"img must have shape \[B, 32, 32, 3\] \(NHWC\)"):
    D.apply({}, jnp.zeros((2, 3, 32, 32)), jnp.asarray([1, 0]))
  with pytest.raises(ValueError, match=r"z must have shape \[B, 8\]"):
    G.apply(v, jnp.zeros((2, 11)), jnp.asarray([0, 1]), method=G.mapping)
  with pytest.raises(ValueError, match="truncation_psi must be 1 for BigGAN"):
    G.apply(v, z, jnp.asarray([0, 1]), truncation_psi=0.7, method=G.mapping)
  with pytest.raises(ValueError, match=r"ws must have shape \[B, 4, 5\]"):
    G.apply(v, jnp.zeros((2, 4, 6)), method=G.synthesis)


# --------------------------------------------------------------------------------------
# The conditional-generator interface and GANdance on it.


def test_interface_sizes(tiny):
  G, _ = tiny
  # dim_z 11 over 4 slots: chunks of 2, 3 dims dropped (the reference's rounding).
  assert (G.num_slots, G.z_chunk_size, G.z_dim) == (4, 2, 8)
  assert (G.num_ws, G.w_dim) == (4, 3 + 2)
  assert G.ws_resolutions() == [4, 8, 16, 32]
  assert (G.c_dim, G.empty_label, G.w_avg_beta) == (6, 5, None)
  flat = biggan.Generator(**{**TINY, "hier": False})
  assert (flat.num_ws, flat.w_dim, flat.z_dim) == (4, 3 + 11, 11)


def test_mapping_rows_are_y_and_z_chunks(tiny):
  G, v = tiny
  table = np.asarray(v["params"]["shared"]["embedding"])
  z = jax.random.normal(jax.random.key(1), (3, G.z_dim))
  labels = jnp.asarray([4, 5, 0])
  ws = np.asarray(G.apply(v, z, labels, method=G.mapping))
  chunks = np.asarray(z).reshape(3, G.num_slots, G.z_chunk_size)
  for i in range(G.num_ws):
    np.testing.assert_array_equal(ws[:, i, :3], table[[4, 5, 0]])
    np.testing.assert_array_equal(ws[:, i, 3:], chunks[:, i])
  # Without hier: row 0 = [y, z], the block rows [y, 0].
  flat = biggan.Generator(empty_class=True, **{**TINY, "hier": False})
  zf = jax.random.normal(jax.random.key(2), (3, flat.z_dim))
  wf = np.asarray(flat.apply(v, zf, jnp.asarray([1, 2, 3]), method=flat.mapping))
  np.testing.assert_array_equal(wf[:, 0, 3:], np.asarray(zf))
  np.testing.assert_array_equal(wf[:, 1:, 3:], 0)
  np.testing.assert_array_equal(wf[:, 2, :3], table[[1, 2, 3]])


def _expected_guided(table, ws_c, labels, y_oppo, scale):
  """Alg. 2/3 on y, row by row, in float64; the z part is unchanged."""
  y_c = table[labels].astype(np.float64)
  scale = np.broadcast_to(np.asarray(scale, np.float64), (ws_c.shape[1],))
  out = np.array(ws_c, np.float64)
  for i, s in enumerate(scale):
    out[:, i, :3] = y_oppo + s * (y_c - y_oppo)
  return out


@pytest.mark.parametrize("scale", [1.7, [1.0, 2.0, 1.5, 0.5]])
def test_guided_ws_is_alg2_and_alg3_on_y(tiny, scale):
  G, v = tiny
  table = np.asarray(v["params"]["shared"]["embedding"], np.float64)
  mapping = lambda z_, c_: G.apply(v, z_, c_, method=G.mapping)
  z = jax.random.normal(jax.random.key(3), (4, G.z_dim))
  labels = jnp.asarray([0, 1, 4, 2])
  ws_c = np.asarray(mapping(z, labels))
  opposite = [0, 2, 3]
  tf = np.asarray(guidance.guided_ws(mapping, z, labels, scale=scale, opposite_labels=opposite,
                                     num_ws=G.num_ws, num_classes=G.num_classes))
  learned = np.asarray(guidance.guided_ws(mapping, z, labels, scale=scale,
                                          empty_label=G.empty_label, num_ws=G.num_ws))
  # float32: the embedding rows are O(1), the guided values O(scale * 3), a mean of three and
  # one multiply-add each: a few ulps of O(10).
  tol = 10 * np.finfo(np.float32).eps * 10
  np.testing.assert_allclose(tf, _expected_guided(table, ws_c, labels, table[opposite].mean(0),
                                                  scale), rtol=0, atol=tol)
  np.testing.assert_allclose(learned, _expected_guided(table, ws_c, labels, table[5], scale),
                             rtol=0, atol=tol)
  # The z chunks are unchanged: bit for bit with the empty class; training-free up to the
  # rounding of Alg. 2's float32 mean of three identical copies of z (<= 2 ulps), times
  # |scale - 1| <= 1, plus the final rounding.
  np.testing.assert_array_equal(learned[..., 3:], ws_c[..., 3:])
  np.testing.assert_allclose(tf[..., 3:], ws_c[..., 3:], rtol=4 * np.finfo(np.float32).eps,
                             atol=0)
  # Rows at scale 1 are bit for bit the unguided ones.
  for i, s in enumerate(np.broadcast_to(scale, (G.num_ws,))):
    if s == 1:
      np.testing.assert_array_equal(tf[:, i], ws_c[:, i])
  one = guidance.guided_ws(mapping, z, labels, scale=1.0, empty_label=G.empty_label)
  np.testing.assert_array_equal(np.asarray(one), ws_c)


def test_sampler_drives_biggan(tiny):
  """sampler.make_sampler on BigGAN's G, unchanged: its latents are guided_ws of the
  sampler's z (both modes, layer-wise scales), and it synthesises images from them."""
  G, v = tiny
  key = jax.random.key(7)
  labels = np.asarray([3, 0, 1], np.int32)
  scale = guidance.layerwise_scale(G.ws_resolutions(), {4: 1.0, 8: 2.0, 16: 1.5, 32: 1.2})
  mapping = lambda z_, c_: G.apply(v, z_, c_, method=G.mapping)
  z = sampler_lib.sample_z(key, jnp.arange(3), G.z_dim)
  for mode, opposite in (("training_free", [1, 2, 4]), ("learned", None)):
    sampler = sampler_lib.make_sampler(G, mode=mode, scale=scale, opposite_labels=opposite)
    ws = np.asarray(sampler.latents(v, key, labels))
    kwargs = (dict(opposite_labels=opposite) if opposite else dict(empty_label=G.empty_label))
    want = guidance.guided_ws(mapping, z, jnp.asarray(labels), scale=scale, num_ws=G.num_ws,
                              **kwargs)
    # z unchanged by guidance (up to Alg. 2's float mean of identical copies, see above).
    np.testing.assert_allclose(ws[..., 3:], np.asarray(z).reshape(3, 4, 2),
                               rtol=4 * np.finfo(np.float32).eps, atol=0)
    # The same maths in another program: a mean of <= 3 embedding rows and one multiply-add,
    # each rounded once or twice differently: <= ~4 ulps of values <= 10 (ulp 9.5e-7), 4e-6.
    np.testing.assert_allclose(ws, np.asarray(want), rtol=0, atol=1e-5)
  images = np.asarray(sampler(v, key, labels))  # G.synthesis of those ws, in the sampler.
  assert images.shape == (3, 32, 32, 3) and np.all(np.abs(images) <= 1)
  assert np.std(images[0] - images[1]) > 1e-3  # Different samples, not a constant.


def test_unguided_sampler_on_biggan(tiny):
  """mode 'none' and scale 1 (the sampler's unguided path) give BigGAN's mapping rows
  exactly: BigGAN's ws are already per-block, nothing is broadcast."""
  G, v = tiny
  key = jax.random.key(5)
  labels = np.asarray([2, 0, 1], np.int32)
  z = sampler_lib.sample_z(key, jnp.arange(3), G.z_dim)
  want = np.asarray(G.apply(v, z, jnp.asarray(labels), method=G.mapping))
  for kwargs in (dict(mode="none"), dict(mode="learned", scale=1.0),
                 dict(mode="training_free", scale=1.0)):
    ws = np.asarray(sampler_lib.make_sampler(G, **kwargs).latents(v, key, labels))
    np.testing.assert_array_equal(ws, want)


def test_truncation_is_a_truncated_normal(tiny):
  G, v = tiny
  z = jax.random.normal(jax.random.key(4), (50_000,))
  t = 0.8
  zt = np.asarray(biggan.truncate_normal(z, t), np.float64)
  assert np.all(np.abs(zt) <= t)
  assert np.all(np.diff(zt[np.argsort(np.asarray(z))]) >= 0)  # monotone in z
  # Kolmogorov distance to the truncated normal's CDF; DKW: P(sup|F_n - F| > e) <=
  # 2 exp(-2 n e^2) = 1e-9 for e = 0.0147 at n = 5e4, so only a wrong map exceeds it.
  grid = np.linspace(-t, t, 101)
  phi = np.vectorize(lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))))
  truncated_cdf = (phi(grid) - phi(-t)) / (phi(t) - phi(-t))
  empirical = np.searchsorted(np.sort(zt), grid, side="right") / zt.size
  assert np.max(np.abs(empirical - truncated_cdf)) < 0.0147
  # In the mapping: the z part of every row is the truncated z; threshold 0 = off.
  zz = jax.random.normal(jax.random.key(5), (2, G.z_dim)) * 3
  labels = jnp.asarray([0, 1])
  ws = np.asarray(G.apply(v, zz, labels, truncation=0.5, method=G.mapping))
  want = np.asarray(biggan.truncate_normal(zz, 0.5)).reshape(2, 4, 2)
  np.testing.assert_array_equal(ws[..., 3:], want)
  G_t = biggan.Generator(empty_class=True, truncation=0.5, **TINY)
  np.testing.assert_array_equal(np.asarray(G_t.apply(v, zz, labels, method=G_t.mapping)), ws)
  plain = np.asarray(G.apply(v, zz, labels, method=G.mapping))
  np.testing.assert_array_equal(plain[..., 3:], np.asarray(zz).reshape(2, 4, 2))
  # Through the sampler: its normal z, truncated by the module it drives.
  key = jax.random.key(6)
  ws = np.asarray(sampler_lib.make_sampler(G.clone(truncation=0.5), mode="learned", scale=1.3)
                  .latents(v, key, np.asarray([2, 3])))
  z_sampler = sampler_lib.sample_z(key, jnp.arange(2), G.z_dim)
  want = np.asarray(biggan.truncate_normal(z_sampler, 0.5)).reshape(2, 4, 2)
  # Empty-class guidance leaves z bit for bit; the jitted ndtr/ndtri may round differently
  # from the eager ones: a few ulps of p in [0, 1], times the slope 1/phi(z) <= 2.9 of ndtri
  # on [-0.5, 0.5].
  np.testing.assert_allclose(ws[..., 3:], want, rtol=0, atol=16 * np.finfo(np.float32).eps)


def test_init_follows_the_reference():
  """Orthogonal weights in torch's layout, u ~ N(0, 1), sv = 1, BN statistics 0 / 1, BN gain
  1 / bias 0, attention gamma 0 (the layers G and D are built from, initialised alone)."""
  x = jnp.zeros((2, 4, 4, 16))
  modules = dict(conv=biggan.SNConv2d(8, num_svs=2), lin=biggan.SNLinear(64, weight_init="N02"),
                 bn=biggan.BN(), att=biggan.Attention(sn={}))
  inputs = dict(conv=x, lin=x[:, 0, 0], bn=x, att=x)
  init = lambda key: {k: m.init(jax.random.fold_in(key, i), inputs[k])
                      for i, (k, m) in enumerate(modules.items())}
  state = {k: biggan.torch_state_dict(v) for k, v in _run_once(init, jax.random.key(0)).items()}
  conv, lin, bn, att = state["conv"], state["lin"], state["bn"], state["att"]
  w = conv["weight"].reshape(8, -1)
  # Rows orthonormal (8 rows of 144): a float32 Householder QR is orthogonal to ~n eps =
  # 144 * 1.2e-7 = 1.7e-5 at worst (~sqrt(n) eps typically; seen <= 3.9e-7 over 20 keys),
  # plus the rounding of the stored entries (<= eps * sum|w_i w_j| <= 1.2e-7). Rows that
  # are merely N(0, 1/144) have off-diagonal products ~0.1.
  np.testing.assert_allclose(w @ w.T, np.eye(8), rtol=0, atol=150 * np.finfo(np.float32).eps)
  assert conv["u0"].shape == (1, 8) and np.all(conv["sv1"] == 1)
  assert not np.array_equal(conv["u0"], conv["u1"])
  assert lin["weight"].shape == (64, 16) and 0.01 < np.std(lin["weight"]) < 0.03
  assert 0.7 < np.std(lin["u0"]) < 1.3  # 64 draws of N(0, 1)
  assert np.all(bn["stored_mean"] == 0) and np.all(bn["stored_var"] == 1)
  assert np.all(bn["gain"] == 1) and np.all(bn["bias"] == 0)
  assert att["gamma"] == 0 and att["theta.weight"].shape == (2, 16, 1, 1)


_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    sys.path.insert(0, sys.argv[1])
    from test_biggan import TINY, _FAST, _vars
    from gandance_jax.networks import biggan

    assert jax.device_count() == 4, jax.devices()
    SETTINGS = {**TINY, "attention": "0"}  # Attention has no BN: spare its compile time.
    G = biggan.Generator(**SETTINGS)
    z = jax.random.normal(jax.random.key(0), (8, G.z_dim))
    labels = jnp.arange(8, dtype=jnp.int32) % 5
    v = _vars(G, z, labels)
    train = lambda v, z, c: G.apply(v, z, c, train=True, mutable=["batch_stats"])
    run = lambda f, *a: f.lower(*a).compile(compiler_options=_FAST)(*a)
    one = run(jax.jit(train), *jax.device_put((v, z, labels), jax.devices()[0]))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    # jit over a sharded batch (XLA's reductions are global) and shard_map (pmean over 'data').
    jitted = run(jax.jit(train, in_shardings=(rep, data, data), out_shardings=(data, rep)),
                 v, z, labels)
    mapped = run(jax.jit(jax.shard_map(train, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                       out_specs=(P("data"), P()))), v, z, labels)
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    # Without the axis (axis_name=None) each device normalises with its own 2 samples.
    G_local = biggan.Generator(**{**SETTINGS, "axis_name": None})
    local = run(jax.jit(jax.shard_map(
        lambda v, z, c: G_local.apply(v, z, c, train=True, mutable=["batch_stats"])[0],
        mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P("data"))), v, z, labels)
    print(json.dumps(dict(jit=diff(one, jitted), shard_map=diff(one, mapped),
                          local=diff(one[0], local),
                          spec=str(jitted[0].sharding.spec))))
""")


def test_cross_replica_batch_norm_on_4_devices():
  """Train-mode forward and buffer updates on 1 device == 4 forced CPU devices, under jit
  with a sharded batch and under shard_map (pmean over 'data')."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, tests_dir], env=env,
                        capture_output=True, text=True, timeout=600,
                        cwd=os.path.dirname(tests_dir))
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert "data" in result["spec"]
  # Batch moments over 8 * 32 * 32 values summed in another order (float32, ~log2(8192) ulps
  # relative) through 7 BN layers, outputs <= 1 and buffers O(1): well under 1e-4.
  assert result["jit"] < 1e-4 and result["shard_map"] < 1e-4, result
  # Per-device statistics (no cross-replica axis) are visibly different: the test can fail.
  assert result["local"] > 1e-3, result
