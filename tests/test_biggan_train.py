"""Tests of BigGAN's training (train/step_biggan.py, the family plumbing of config_lib, state,
checkpoint): hinge losses, the ortho regulariser, the phases on a tiny BigGAN in-process,
bit-exact resume through a checkpoint, 1 vs 4 devices, bad input before compiling, and one
end-to-end `--mode=all` run of configs/biggan_digits.py:shrink (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import biggan_digits
from gandance_jax import checkpoint, config_lib
from gandance_jax.data import make_source
from gandance_jax.networks import biggan
from gandance_jax.train import sharding, state as state_lib, step as step_lib, step_biggan
from tests import _mp_common as common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """configs/biggan_digits.py:shrink (ch 2, 32x32, batch 8 = 2 D steps of 4), p = 0.5.

  The in-process step tests use num_D_steps=1 (one D step to compile: the compile is
  what these tests cost); the 4-device test keeps 2 (strided chunks over 4 shards)."""
  config = biggan_digits.get_config("shrink")
  # ema_decay pinned: test_step_updates_networks_buffers_and_ema checks BigGAN's 0.999.
  config.train.update(dict(label_reset_prob=0.5, ema_start=2, ema_decay=0.999,
                           standing_stats=0))
  return common.set_fields(config, {k.replace("__", "."): v for k, v in overrides.items()})


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config(train__num_D_steps=1, train__batch_size=4)
  hp = config_lib.validate_config(config)
  G, D = state_lib.build_models(hp)
  g_tx, d_tx = state_lib.make_optimizers(hp.train)
  state = jax.jit(lambda: state_lib.init_train_state(hp, G, D, g_tx, d_tx))()
  ts = step_lib.make_train_step(hp.train, G, D, g_tx, d_tx, sharding.make_mesh(1))
  batch = jax.tree.map(jnp.asarray, next(make_source(config.data).batches(4)))
  # Two steps from the fresh state (the train step donates its input: keep a copy).
  copy = lambda s: jax.tree.map(jnp.copy, s)
  s1, m1 = ts(copy(state), batch, 0)
  s2, m2 = ts(copy(s1), batch, 1)
  return dict(config=config, hp=hp, G=G, D=D, ts=ts, batch=batch, s0=state, s1=s1, s2=s2,
              m1=m1, m2=m2, copy=copy)


def test_hinge_losses_are_the_references():
  fake, real = jnp.array([-2.0, 0.5]), jnp.array([3.0, 0.25])
  loss_real, loss_fake = step_biggan.hinge_d_loss(fake, real)
  # relu(1 - real) = [0, 0.75], relu(1 + fake) = [0, 1.5] (exact in binary floating point).
  assert float(loss_real) == 0.375 and float(loss_fake) == 0.75
  assert float(step_biggan.hinge_g_loss(fake)) == 0.75


def test_ortho_gradient_is_the_references_direct_gradient():
  rng = np.random.default_rng(0)
  params = {"conv": {"weight": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
            "lin": {"weight": rng.normal(size=(5, 3)).astype(np.float32),
                    "bias": rng.normal(size=(3,)).astype(np.float32)},
            "shared": {"embedding": rng.normal(size=(6, 5)).astype(np.float32)}}
  grads = jax.jit(jax.grad(step_biggan.ortho_penalty))(params)

  def reference(w_torch):  # utils.ortho: 2 * ((W W^T) * (1 - I)) W on W.view(out, -1)
    w = w_torch.reshape(w_torch.shape[0], -1).astype(np.float64)
    return (2 * ((w @ w.T) * (1 - np.eye(w.shape[0]))) @ w).reshape(w_torch.shape)

  conv_t = params["conv"]["weight"].transpose(3, 2, 0, 1)          # [O, I, kh, kw]
  want_conv = reference(conv_t).transpose(2, 3, 1, 0)
  want_lin = reference(params["lin"]["weight"].T).T
  # float32 sums of <= 18 * 4 products of O(1) numbers: ~1e-5 relative at most.
  np.testing.assert_allclose(grads["conv"]["weight"], want_conv, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grads["lin"]["weight"], want_lin, rtol=1e-4, atol=1e-4)
  # 1-D parameters and the shared embedding are left alone, as the reference's blacklist.
  assert not np.any(grads["lin"]["bias"]) and not np.any(grads["shared"]["embedding"])


def _phase_fns(**overrides) -> step_biggan.BigGANPhaseFns:
  """The un-jitted phases of a tiny BigGAN (modules built, nothing initialised)."""
  hp = config_lib.validate_config(tiny_config(**overrides))
  G, D = state_lib.build_models(hp)
  return step_biggan.BigGANPhaseFns(hp.train, G, D, *state_lib.make_optimizers(hp.train))


def test_label_reset_shares_one_mask_between_real_and_fake():
  fns = _phase_fns()
  u = jnp.array([0.1, 0.9, 0.4, 0.6])
  real, fake = jnp.array([1, 2, 3, 4]), jnp.array([5, 6, 7, 8])
  # p = 0.5: rows 0 and 2 go to the empty id 10 in both.
  np.testing.assert_array_equal(fns.reset(real, u), [10, 2, 10, 4])
  np.testing.assert_array_equal(fns.reset(fake, u), [10, 6, 10, 8])
  # D step chunks are strided rows: each row of the batch is used once.
  batch = {"image": jnp.zeros((8, 1)), "label": jnp.arange(8)}
  chunks = [fns.chunk(batch, i)[1] for i in range(2)]
  np.testing.assert_array_equal(chunks[0], [0, 2, 4, 6])
  np.testing.assert_array_equal(chunks[1], [1, 3, 5, 7])


def test_finish_is_the_references_ema_of_params_and_buffers():
  fns = _phase_fns(train__ema_start=3, train__ema_decay=0.75)
  f32 = lambda *v: jnp.array(v, jnp.float32)
  state = state_lib.TrainState(
      step=jnp.int32(0), g_params={"w": f32(1.0, 2.0)}, g_ema_params={"w": f32(0.0, 0.0)},
      g_buffers={"batch_stats": {"m": f32(4.0)}, "ema_batch_stats": {"m": f32(0.0)}},
      d_params={}, d_buffers={}, g_opt_state=(), d_opt_state=(), pl_mean=f32(0.0),
      augment_p=f32(0.0), ada_sign_sum=f32(0.0), rng=jnp.zeros((2,), jnp.uint32))
  # itr = step + 1 = 1, 2 < ema_start 3: G EMA is a copy of G (params and buffers).
  for step in (0, 1):
    out, m = fns.finish(state.replace(step=jnp.int32(step)))
    assert int(out.step) == step + 1 and float(m["ema_beta"]) == 0.0
    np.testing.assert_array_equal(out.g_ema_params["w"], [1.0, 2.0])
    np.testing.assert_array_equal(out.g_buffers["ema_batch_stats"]["m"], [4.0])
  # itr 3: e * 0.75 + p * 0.25 (exact in binary floating point).
  out, m = fns.finish(state.replace(step=jnp.int32(2)))
  assert float(m["ema_beta"]) == 0.75
  np.testing.assert_array_equal(out.g_ema_params["w"], [0.25, 0.5])
  np.testing.assert_array_equal(out.g_buffers["ema_batch_stats"]["m"], [1.0])
  np.testing.assert_array_equal(out.g_buffers["batch_stats"]["m"], [4.0])  # G's own: kept


@pytest.mark.slow  # compiles the tiny BigGAN's phases: ~1.5 min on 2 cores
def test_step_updates_networks_buffers_and_ema(tiny):
  s0, s1, s2 = tiny["s0"], tiny["s1"], tiny["s2"]
  assert int(s1.step) == 1 and int(s2.step) == 2
  changed = lambda a, b: any(np.any(np.asarray(x) != np.asarray(y))
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(s0.g_params, s1.g_params) and changed(s0.d_params, s1.d_params)
  # Train-mode forwards moved BN statistics and SN u of G and D.
  assert changed(s0.g_buffers["batch_stats"], s1.g_buffers["batch_stats"])
  assert changed(s0.d_buffers["batch_stats"], s1.d_buffers["batch_stats"])
  # ema_start = 2: after step 1 (itr 1 < 2) G EMA is a copy of G, params and buffers.
  for a, b in ((s1.g_ema_params, s1.g_params),
               (s1.g_buffers["ema_batch_stats"], s1.g_buffers["batch_stats"])):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(x, y)
  # itr 2: decay 0.999, the reference's e * decay + p * (1 - decay), leaf by leaf.
  decay = np.float32(0.999)
  for e, p, got in zip(jax.tree.leaves(s1.g_ema_params), jax.tree.leaves(s2.g_params),
                       jax.tree.leaves(s2.g_ema_params)):
    # XLA may fuse the multiply-add (one rounding instead of two): 1 ulp = 6e-8 relative.
    np.testing.assert_allclose(got, np.asarray(e) * decay + np.asarray(p) * (1 - decay),
                               rtol=2.4e-7, atol=1e-9)
  assert float(tiny["m1"]["ema_beta"]) == 0.0 and float(tiny["m2"]["ema_beta"]) == decay
  for m in (tiny["m1"], tiny["m2"]):
    assert {"loss/D", "loss/D_real", "loss/D_fake", "loss/G"} <= set(m)
    assert all(np.isfinite(float(v)) for v in m.values())
  assert float(tiny["m1"]["loss/D"]) == pytest.approx(
      float(tiny["m1"]["loss/D_real"]) + float(tiny["m1"]["loss/D_fake"]), rel=1e-6)


@pytest.mark.slow  # compiles the tiny BigGAN's phases: ~1.5 min on 2 cores
def test_resume_through_a_checkpoint_is_bit_exact(tiny, tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, async_save=False)
  ckpt.save(tiny["s1"], 1, tiny["hp"].config)
  ckpt.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tiny["s1"])
  restored, step = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == 1
  resumed, _ = tiny["ts"](restored, tiny["batch"], 1)
  for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(tiny["s2"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # load_generator reads BigGAN's G EMA {'params', 'batch_stats'} from the same checkpoint.
  checkpoint.save_config(str(tmp_path), tiny["hp"].config)
  G, g_vars, _, step = checkpoint.load_generator(str(tmp_path))
  assert isinstance(G, biggan.Generator) and step == 1 and set(g_vars) == {"params",
                                                                          "batch_stats"}
  for x, y in zip(jax.tree.leaves(g_vars), jax.tree.leaves(tiny["s1"].g_ema_variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # compiles the tiny BigGAN's phases: ~1.5 min on 2 cores
def test_standing_stats_are_the_batch_statistics(tiny):
  G, variables = tiny["G"], tiny["s1"].g_ema_variables
  key = jax.random.key(3)
  one = biggan.accumulate_standing_stats(G, variables, key, 1, 8)
  flat = lambda v: {jax.tree_util.keystr(p): np.asarray(x)
                    for p, x in jax.tree_util.tree_flatten_with_path(v["batch_stats"])[0]}
  old, new = flat(variables), flat(one)
  stats = [k for k in old if k.endswith("'stored_mean']") or k.endswith("'stored_var']")]
  assert stats and set(new) == set(old)
  for k in old:
    if k in stats:
      assert np.any(new[k] != old[k]), k
    else:  # spectral-norm u / sv untouched
      np.testing.assert_array_equal(new[k], old[k])
  # A 1-pass estimate is the batch's own statistics: the first conditional BN (bn1 of block
  # 0) normalises the linear layer's output h [8, C * 4 * 4] (the reference's NCHW view).
  kz, ky = jax.random.split(jax.random.fold_in(key, 0))
  z = jax.random.normal(kz, (8, G.z_dim))
  labels = jax.random.randint(ky, (8,), 0, G.num_classes)
  _, inter = G.apply(variables, z, labels, train=True, capture_intermediates=True,
                     mutable=["batch_stats", "intermediates"])
  h = np.asarray(inter["intermediates"]["synthesis_network"]["linear"]["__call__"][0],
                 np.float64).reshape(8, -1, 16)
  bn1 = one["batch_stats"]["synthesis_network"]["blocks.0.0"]["bn1"]
  # float32 moments of 128 values per channel against float64: ~1e-6 relative; the
  # 1 / (N * 0.1) rescaling adds ~1 ulp.
  np.testing.assert_allclose(bn1["stored_mean"], h.mean(axis=(0, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bn1["stored_var"], h.var(axis=(0, 2), ddof=1), rtol=1e-4,
                             atol=1e-6)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides, field", [
    (dict(train__num_D_steps=0), "train.num_D_steps"),
    (dict(generator__attention="64"), "attention"),
    (dict(discriminator__attention="8_64"), "attention"),
    (dict(discriminator__family="stylegan2"), "discriminator.family"),
    (dict(generator__family="dcgan"), "generator.family"),
    (dict(train__batch_size=6, train__num_D_steps=4), "train.batch_size"),
    (dict(train__r1_gamma=1.0), "train.r1_gamma"),
    (dict(train__loss="ns"), "train.loss"),
    (dict(train__init_from="/some/G.pth"), "train.init_from"),
])
def test_bad_config_names_the_field(overrides, field):
  with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
    config_lib.validate_config(tiny_config(**overrides))


def test_bad_labels_and_foreign_state_dicts_are_named():
  G = _phase_fns().G
  # Zeros of the variables' shapes (traced, not compiled): the label check comes first.
  variables = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                           jax.eval_shape(lambda: biggan.init_generator(G, 0)))
  z = jnp.zeros((2, G.z_dim))
  with pytest.raises(ValueError, match="label"):
    G.apply(variables, z, jnp.array([0, 11]))  # 10 real classes + the empty id 10
  # A StyleGAN2 state dict is not a BigGAN one: the error names the unexpected keys.
  foreign = {"mapping.fc0.weight": np.zeros((4, 4), np.float32)}
  with pytest.raises(ValueError, match="mapping.fc0.weight"):
    biggan.generator_from_torch_state_dict(foreign, resolution=32, G_ch=2, dim_z=8,
                                           n_classes=11, G_attn="0", G_shared=True,
                                           empty_class=True)


# ----------------------------------------------------------------------------- devices

_DEVICES_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[1])
from tests.test_biggan_train import tiny_config
from gandance_jax import config_lib
from gandance_jax.data import make_source
from gandance_jax.train import sharding, state as state_lib, step as step_lib
config = tiny_config()
hp = config_lib.validate_config(config)
G, D = state_lib.build_models(hp)
g_tx, d_tx = state_lib.make_optimizers(hp.train)
host_batch = next(make_source(config.data).batches(8))
out = {}
for n in (1, 4):
  mesh = sharding.make_mesh(n)
  ts = step_lib.make_train_step(hp.train, G, D, g_tx, d_tx, mesh)
  state = jax.jit(lambda: state_lib.init_train_state(hp, G, D, g_tx, d_tx),
                  out_shardings=sharding.replicated(mesh))()
  batch = jax.device_put(host_batch, sharding.batch_sharding(mesh))
  state, m = ts.d_main(state, batch)
  out[n] = {"metrics": {k: float(v) for k, v in m.items()},
            "g_stats": [np.asarray(x).tolist() for x in
                        jax.tree.leaves(state.g_buffers["batch_stats"])]}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow  # A subprocess compiling D's phase twice: ~1 min on 2 idle cores.
def test_four_devices_match_one_with_cross_replica_bn():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT, REPO], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  one, four = out["1"], out["4"]
  # Same global batch, BN moments and losses; only the order of float sums differs
  # (shards of 1 row per D chunk): float32 reassociation, ~1e-6 relative.
  for k, v in one["metrics"].items():
    np.testing.assert_allclose(four["metrics"][k], v, rtol=1e-4, atol=1e-5, err_msg=k)
  # G's BN running statistics after the D steps' train-mode forwards: per-device BN would
  # see 1 row instead of 4 and give other moments; cross-replica BN gives the same.
  for a, b in zip(one["g_stats"], four["g_stats"]):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_main_mode_all_on_biggan_digits_shrink(tmp_path):
  """`python -m gandance_jax.main --mode=all` trains, samples guided grids, evaluates."""
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "gandance_jax.main", "--config=configs/biggan_digits.py:shrink",
       f"--workdir={workdir}", "--mode=all"], cwd=REPO, capture_output=True, text=True,
      timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in rows if "loss/G" in r) == 3
  assert "class_accuracy/class_accuracy@1" in "".join(map(json.dumps, rows)) or any(
      "class_accuracy" in k for k in json.loads(
          (workdir / "eval_metrics.jsonl").read_text().splitlines()[-1]))
  assert (workdir / "grid_final.png").exists()
  assert any(p.suffix == ".png" for p in (workdir / "samples").rglob("*"))


# ----------------------------------------------------------------------------- sweep


@pytest.mark.parametrize("arg", ["", "shrink"])
def test_digits_biggan_sweep_cells_fit_the_generator(arg):
  """configs/sweeps/digits_biggan.py: the Fig. 6b grid over the 4 reset probabilities, and
  layer-wise schedules whose resolutions are exactly BigGAN's ws rows (4 = the linear
  layer's row, then the blocks' outputs 8, 16, 32): guidance.layerwise_scale accepts each."""
  from gandance_jax import guidance  # pylint: disable=g-import-not-at-top
  from launch import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  sweep = sweep_lib.load_py_config(os.path.join(REPO, "configs/sweeps/digits_biggan.py")
                                   + (f":{arg}" if arg else ""))
  cells = sweep_lib.expand_cells(sweep)
  assert len({sweep_lib.cell_key(c) for c in cells}) == len(cells)
  config = sweep_lib.load_py_config(os.path.join(REPO, sweep.base_config))
  G, _ = state_lib.build_models(config_lib.validate_config(config))
  assert G.ws_resolutions() == [4, 8, 16, 32]
  schedules = [c["schedule_spec"] for c in cells if c["schedule_spec"]]
  assert schedules
  for spec in schedules:
    scales = guidance.layerwise_scale(G, guidance.parse_layer_scales(spec))
    assert scales.shape == (G.num_ws,)
  if not arg:
    grids = {}
    for c in cells:
      grids[c["grid"]] = grids.get(c["grid"], 0) + 1
    # 3 |C| x 6 scales; 6 scales; 4 runs x 6 scales, learned and training-free (Fig. 6b);
    # 4 schedules.
    assert grids == {"table1_training_free": 18, "table1_learned": 6, "reset_p": 24,
                     "reset_p_training_free": 24, "layerwise": 4}
    assert sorted(sweep.runs) == ["p0", "p0.1", "p0.2", "p0.5"]
    assert [sweep.runs[r]["train.label_reset_prob"] for r in ("p0", "p0.1", "p0.2", "p0.5")
            ] == [0.0, 0.1, 0.2, 0.5]
    # An existing run of the base config can stand in for p0.1 (launch/sweep.py's `workdir`).
    reuse = sweep_lib.load_py_config(os.path.join(REPO, "configs/sweeps/digits_biggan.py")
                                     + ":p01=/some/run")
    assert sweep_lib.run_workdir(reuse, "/out", "p0.1") == "/some/run"
    assert sweep_lib.run_workdir(reuse, "/out", "p0") == "/out/runs/p0"
