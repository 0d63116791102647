"""Tests of the train state, the phases (label reset, EMA, lazy-reg optimizers, w_avg) and an
end-to-end run of the loop in-process (files written, `load_generator`, non-finite stop)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests._mp_common import tiny_config
from gandance_jax import checkpoint, config_lib
from gandance_jax.train import loop, sharding, state as state_lib, step as step_lib


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
  return tmp_path_factory.getbasetemp() / "trainer_shared"


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config()
  hp = config_lib.validate_config(config)
  G, D = state_lib.build_models(hp)
  g_tx, d_tx = state_lib.make_optimizers(hp.train)
  state = state_lib.init_train_state(hp, G, D, g_tx, d_tx)
  fns = step_lib.PhaseFns(hp.train, G, D, g_tx, d_tx)
  from gandance_jax.data import make_source
  batch = jax.tree.map(jnp.asarray, next(make_source(config.data).batches(8)))
  return config, fns, state, batch


def test_label_reset_probability_and_sharing(tiny):
  config, fns, state, batch = tiny
  labels = batch["label"]
  reset = fns.labels_for_step(state, labels)
  # p = 0.5: some labels reset to the empty id 10, the others untouched.
  assert set(np.asarray(reset[reset != labels]).tolist()) <= {10}
  # Every phase of a step calls this with the same state: the same mask.
  np.testing.assert_array_equal(fns.labels_for_step(state, labels), reset)
  # Another step draws another mask (over many steps about half are reset).
  frac = np.mean([np.mean(np.asarray(fns.labels_for_step(state.replace(step=jnp.int32(s)),
                                                          labels) == 10)) for s in range(40)])
  assert 0.35 < frac < 0.65
  for p, expect in ((0.0, labels), (1.0, jnp.full_like(labels, 10))):
    hp_p = config_lib.validate_config(tiny_config(train__label_reset_prob=p))
    fns_p = step_lib.PhaseFns(hp_p.train, fns.G, fns.D, fns.g_tx, fns.d_tx)
    np.testing.assert_array_equal(fns_p.labels_for_step(state, labels), expect)


def test_lazy_regularization_scales_adam_like_nvidia():
  ratio = state_lib.mb_ratio(16)
  assert ratio == 16 / 17
  tx = state_lib.make_optimizer(0.002, (0.0, 0.99), 1e-8, reg_interval=16)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.3, -0.1])}
  opt = tx.init(params)
  updates, _ = tx.update(grads, opt, params)
  b1, b2, lr = 0.0 ** ratio, 0.99 ** ratio, 0.002 * ratio
  m = (1 - b1) * grads["w"] / (1 - b1)
  v = (1 - b2) * grads["w"] ** 2 / (1 - b2)
  # optax scales g^2 by (1 - b2) from the float64 b2 but bias-corrects with 1 - b2 ** 1 in
  # float32: v_hat is off by |float32(b2) - b2| / (1 - b2) relative, halved by the sqrt
  # (5.8e-7 here, the whole of the 6.2e-7 seen), plus ~8 float32 roundings elsewhere. An
  # unscaled lr is off by 6%.
  b2_rounding = abs(float(np.float32(b2)) - b2) / (1 - b2) / 2
  np.testing.assert_allclose(updates["w"], -lr * m / (jnp.sqrt(v) + 1e-8),
                             rtol=b2_rounding + 8 * np.finfo(np.float32).eps)


def test_phase_schedule(tiny):
  config = tiny[0]
  mesh = sharding.make_mesh(1)
  hp = config_lib.validate_config(config)
  G, D = state_lib.build_models(hp)
  g_tx, d_tx = state_lib.make_optimizers(hp.train)
  ts = step_lib.TrainStep(hp.train, G, D, g_tx, d_tx, mesh)
  assert ts.phases_at(0) == ["g_main", "g_reg", "d_main", "d_reg"]
  assert ts.phases_at(1) == ["g_main", "d_main"]
  assert ts.phases_at(2) == ["g_main", "g_reg", "d_main"]
  assert ts.phases_at(4) == ["g_main", "g_reg", "d_main", "d_reg"]


def test_ema_beta_and_rampup(tiny):
  config, fns, state, _ = tiny
  shifted = state.replace(g_params=jax.tree.map(lambda x: x + 1.0, state.g_params))
  # Step 0: ema_nimg = 0 -> beta = 0 -> the EMA equals the params.
  out, metrics = fns.finish(shifted)
  assert float(metrics["ema_beta"]) == 0.0 and int(out.step) == 1
  jax.tree.map(np.testing.assert_array_equal, out.g_ema_params, shifted.g_params)
  # Step 100, batch 8, rampup 0.05, ema_kimg 1: ema_nimg = min(1000, 800 * 0.05) = 40.
  out, metrics = fns.finish(shifted.replace(step=jnp.int32(100)))
  beta = 0.5 ** (8 / 40)
  # A float32 pow of exact operands: <= 2 ulps (2.4e-7 relative).
  np.testing.assert_allclose(metrics["ema_beta"], beta, rtol=1e-6)
  leaf = lambda t: jax.tree.leaves(t)[0]
  # g + (e - g) beta in float32 (beta rounded, a fused or unfused multiply-add) against the
  # same in float32 numpy: a few ulps of the operands, absolute, since the result can cancel
  # near 0 (seen exactly equal).
  g_leaf, e_leaf = np.asarray(leaf(shifted.g_params)), np.asarray(leaf(state.g_ema_params))
  operands = max(np.abs(g_leaf).max(), np.abs(e_leaf).max())
  np.testing.assert_allclose(leaf(out.g_ema_params), g_leaf + (e_leaf - g_leaf) * beta,
                             rtol=1e-6, atol=4 * np.finfo(np.float32).eps * operands)


def test_ada_updates_p_every_interval(tiny):
  config, fns, state, _ = tiny
  s = state.replace(step=jnp.int32(1), ada_sign_sum=jnp.float32(2.0))  # E[sign] = 1 > 0
  out, _ = fns.finish(s)           # step becomes 2: due (interval 2)
  # p + sign * batch * interval / (ada_kimg * 1000): 3 float32 roundings of O(0.1) values.
  np.testing.assert_allclose(out.augment_p, 8 * 2 / 100, rtol=1e-6)
  assert float(out.ada_sign_sum) == 0.0
  out, _ = fns.finish(s.replace(step=jnp.int32(2)))   # step becomes 3: not due
  assert float(out.augment_p) == 0.0 and float(out.ada_sign_sum) == 2.0


def test_ada_sign_statistic_counts_the_r1_phase(tiny):
  """NVIDIA's ADA mean is over every `Loss/signs/real` report of the window: D main at each
  step and the R1 phase at steps divisible by r1_interval (tiny: ada 2, R1 every 4)."""
  config, fns, state, _ = tiny
  ts = step_lib.TrainStep(fns.t, fns.G, fns.D, fns.g_tx, fns.d_tx, sharding.make_mesh(1))
  for s in range(1, 24, 2):          # windows (s - 1, s] ending where p is adjusted
    want = sum(1 + ("d_reg" in ts.phases_at(k)) for k in (s - 1, s))
    assert int(fns.ada_sign_phases(jnp.int32(s))) == want, s
  t = dataclasses.replace(fns.t, ada_target=0.6, ada_kimg=1.0)
  fns6 = step_lib.PhaseFns(t, fns.G, fns.D, fns.g_tx, fns.d_tx)
  start = state.replace(augment_p=jnp.float32(0.5), ada_sign_sum=jnp.float32(1.5))
  dp = 8 * 2 / 1000
  # Window 0..1 holds the R1 of step 0: 1.5 / 3 = 0.5 < 0.6 -> p goes down (over 2 phases
  # it would be 0.75 > 0.6: up).
  out, _ = fns6.finish(start.replace(step=jnp.int32(1)))
  # As above: a few float32 roundings of values ~0.5 (~1e-7 relative).
  np.testing.assert_allclose(out.augment_p, 0.5 - dp, rtol=1e-6)
  # Window 2..3 has no R1: 1.5 / 2 = 0.75 > 0.6 -> up.
  out, _ = fns6.finish(start.replace(step=jnp.int32(3)))
  np.testing.assert_allclose(out.augment_p, 0.5 + dp, rtol=1e-6)


def test_w_avg_tracks_real_class_rows_only(tiny):
  config, fns, state, _ = tiny
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((6, fns.G.w_dim)), jnp.float32)
  w_avg = jnp.asarray(rng.standard_normal(fns.G.w_dim), jnp.float32)
  s = fns._with_w_avg(state, w_avg)
  empty = fns.G.empty_label
  # Only empty labels: the truncation centre does not move.
  np.testing.assert_array_equal(fns.updated_w_avg(s, w, jnp.full((6,), empty)), w_avg)
  # Mixed: the lerp toward the mean of the real-class rows (0, 2, 5) only.
  labels = jnp.array([3, empty, 1, empty, empty, 0])
  mean = np.asarray(w)[[0, 2, 5]].mean(0)
  beta = fns.G.w_avg_beta
  # A masked mean of 3 rows and a lerp in float32 vs numpy float32: a few ulps of N(0, 1)
  # values (~1e-6 absolute with the atol for a mean that cancels near 0).
  np.testing.assert_allclose(fns.updated_w_avg(s, w, labels),
                             mean + (np.asarray(w_avg) - mean) * beta, rtol=1e-5, atol=1e-6)


def test_warm_start_keeps_the_pretrained_g_ema(tiny):
  """NVIDIA's resume rule: no EMA ramp-up, so step 0 moves the pre-trained G_ema by one
  EMA step instead of replacing it by G (beta = 0 under the ramp-up)."""
  config, fns, state, _ = tiny
  t = dataclasses.replace(fns.t, init_from="/some/pretrained")
  assert fns.t.ema_rampup_effective == fns.t.ema_rampup and t.ema_rampup_effective is None
  warm = step_lib.PhaseFns(t, fns.G, fns.D, fns.g_tx, fns.d_tx)
  shifted = state.replace(g_params=jax.tree.map(lambda x: x + 1.0, state.g_params))
  out, metrics = warm.finish(shifted)
  beta = 0.5 ** (8 / (float(t.ema_kimg) * 1000))
  np.testing.assert_allclose(metrics["ema_beta"], beta, rtol=1e-6)  # one float32 pow
  # One float32 lerp per leaf, params O(1): a few ulps, atol where it cancels near 0.
  for g, e0, e1 in zip(*(jax.tree.leaves(x) for x in (shifted.g_params, state.g_ema_params,
                                                       out.g_ema_params))):
    np.testing.assert_allclose(e1, g + (e0 - g) * beta, rtol=1e-5, atol=1e-6)


def test_ada_augment_is_nvidias_pipeline(tiny):
  """train.augment='ada' runs augment_pipe's AugmentPipe (preset ada_pipe) on D's inputs."""
  from gandance_jax.train import augment_pipe  # pylint: disable=g-import-not-at-top
  config, fns, state, batch = tiny
  t = dataclasses.replace(fns.t, augment="ada", ada_pipe="bg")
  ada = step_lib.PhaseFns(t, fns.G, fns.D, fns.g_tx, fns.d_tx)
  key = jax.random.key(3)
  images = batch["image"]
  run = jax.jit(lambda st: ada._augment(st, images, key))
  np.testing.assert_array_equal(run(state.replace(augment_p=jnp.float32(0.0))), images)
  got = run(state.replace(augment_p=jnp.float32(0.7)))
  want = augment_pipe.augment(key, images, 0.7, augment_pipe.AugmentSpec.from_preset("bg"))
  # Same draws, same ops; jit vs eager only reorders float32 sums of a few dozen filter
  # taps on values in [-1, 1]: differences ~1e-7, any wrong op or draw gives O(0.1).
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert not np.allclose(got, images)


def test_phases_update_their_network_and_w_avg(tiny):
  config, _, state, batch = tiny
  # The loop's own jitted phases (cached per config, so the e2e test reuses the compile).
  mesh = sharding.make_mesh(1)
  built = loop.build(config_lib.validate_config(config), mesh)
  init_fn, ts = built.init_fn, built.train_step
  batch = next(sharding.global_batches([jax.tree.map(np.asarray, batch)],
                                      sharding.batch_sharding(mesh), prefetch=1))
  fresh = lambda: init_fn()  # the phases donate their input state
  copy = lambda tree: jax.tree.map(np.asarray, tree)
  before = copy(fresh())
  changed = lambda a, b: any(not np.array_equal(x, y) for x, y in
                             zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  new, metrics = ts.g_main(fresh(), batch)
  assert np.isfinite(float(metrics["loss/G"]))
  assert not np.allclose(new.w_avg, before.w_avg)
  assert changed(new.g_params, before.g_params) and not changed(new.d_params, before.d_params)
  new, metrics = ts.d_reg(fresh(), batch)
  assert float(metrics["r1_penalty"]) > 0 and changed(new.d_params, before.d_params)
  # The R1 phase's real logits feed ADA's sign statistic (NVIDIA's Loss/signs/real).
  assert float(new.ada_sign_sum) == float(before.ada_sign_sum) + float(
      metrics["signs/real_reg"])
  assert not changed(new.g_params, before.g_params)
  new, metrics = ts.g_reg(fresh(), batch)
  assert float(metrics["pl_length"]) > 0 and float(new.pl_mean) > 0
  new, metrics = ts.d_main(fresh(), batch)
  assert np.isfinite(float(metrics["loss/D"])) and not changed(new.g_params, before.g_params)


def test_train_loop_end_to_end(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(evals__class_accuracy__final=True,
                       evals__class_accuracy__num_samples=20)
  state = loop.train(config_lib.validate_config(config), workdir)
  assert int(state.step) == 24
  files = set(os.listdir(workdir))
  assert {"config.json", "metrics.jsonl", "grid_00000008.png", "grid_00000016.png",
          "grid_00000024.png", "grid_final.png", "checkpoints"} <= files
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  final = [r for r in records if "class_accuracy/class_accuracy@1" in r]
  losses = [r for r in records if r not in final]
  steps = [r["step"] for r in losses]
  assert steps == list(range(1, 25))
  assert all(np.isfinite(r["loss/G"]) and np.isfinite(r["loss/D"]) for r in losses)
  assert sum("loss/D_reg" in r for r in records) == 6      # steps 0, 4, ..., 20
  assert sum("loss/G_reg" in r for r in records) == 12     # every 2nd step
  assert len({r["augment_p"] for r in records if "augment_p" in r}) > 1   # ADA moved p
  # The digits class accuracy: the configured evaluator, once, at the end of training.
  assert len(final) == 1 and final[0]["step"] == 24
  assert 0 <= final[0]["class_accuracy/class_accuracy@1"] <= 1
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [
      16, 20, 24]                                            # keep_checkpoints = 3
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["batch_size"] == 8

  # load_generator: only G EMA + buffers (with the tracked w_avg), any device count.
  G, g_vars, loaded_config, step = checkpoint.load_generator(workdir)
  assert step == 24 and loaded_config.train.batch_size == 8 and G.resolution == 8
  jax.tree.map(np.testing.assert_array_equal, g_vars["params"], state.g_ema_params)
  np.testing.assert_array_equal(g_vars["buffers"]["mapping_network"]["w_avg"], state.w_avg)
  _, _, _, step16 = checkpoint.load_generator(workdir, step=16)
  assert step16 == 16
  ws = G.apply(g_vars, jnp.zeros((2, G.z_dim)), jnp.array([0, 10]), method=G.mapping)
  img = G.apply(g_vars, ws, noise_mode="const", method=G.synthesis)
  assert img.shape == (2, 8, 8, 1)


def test_non_finite_loss_stops_with_step_and_name(tmp_path, monkeypatch):
  # Poison the data from step 5 on (no recompilation: same config as the e2e test).
  from gandance_jax import data as data_lib
  make_source = data_lib.make_source

  class Poisoned:
    def __init__(self, source):
      self.source = source

    def __getattr__(self, name):
      return getattr(self.source, name)

    def batches(self, batch_size, start_step=0):
      for step, batch in enumerate(self.source.batches(batch_size, start_step), start_step):
        if step >= 5:
          batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        yield batch

  monkeypatch.setattr(data_lib, "make_source", lambda cfg: Poisoned(make_source(cfg)))
  workdir = str(tmp_path / "nan")
  with pytest.raises(loop.NonFiniteLossError,
                     match=r"non-finite loss/D = nan at step 5.*last good checkpoint is step 4"):
    loop.train(config_lib.validate_config(tiny_config()), workdir)
  # The checkpoint of step 4 is kept; nothing after the bad step was saved.
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [4]


def test_config_errors_name_the_field(tmp_path):
  config = tiny_config(train__batch_size=6)
  with pytest.raises(ValueError, match="train.batch_size = 6"):
    loop.train(config_lib.validate_config(config), str(tmp_path / "bad"))
  config = tiny_config(train__augment_policy="color,zoom")
  with pytest.raises(config_lib.ConfigError, match="train.augment_policy"):
    config_lib.validate_config(config)


def test_class_accuracy_of_real_digits_is_high(tmp_path):
  # The measuring code itself (the digits `classifier` evaluator that configs/digits.py
  # runs as class_accuracy): real digits are recognised as their class.
  from gandance_jax import images as images_lib
  from gandance_jax.data import load_digits
  from gandance_jax.evaluation import evaluators
  images, labels = load_digits(16)
  images, labels = images_lib.to_uint8(images[::4]), labels[::4]
  spec = evaluators.parse_spec("class_accuracy", dict(type="classifier", batch_size=150))
  data = evaluators.EvalData(str(tmp_path), {"name": "digits", "resolution": 16})
  ev = evaluators.make(spec, None, data)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # few samples for a FID: irrelevant to the accuracy
    acc = ev.metrics(data.of_images(spec, images, labels))["class_accuracy"]
    # Shuffled labels: chance level.
    rng = np.random.default_rng(0)
    shuffled = ev.metrics(data.of_images(spec, images, rng.permutation(labels)))
  assert acc > 0.95
  assert shuffled["class_accuracy"] < 0.3


def test_san_loss_option_trains_d_and_g(tiny):
  """config.train.loss='san' swaps in SAN's D and G losses (seeds/004) in the same phases,
  with D's SAN head (a per-class direction table instead of the label MLP)."""
  config, fns, state, batch = tiny
  san_config = config.copy_and_resolve_references()
  with san_config.unlocked():
    san_config.train.loss = "san"
  hp = config_lib.validate_config(san_config)
  G, D = state_lib.build_models(hp)
  assert D.head == "san" and fns.D.head == "projection"
  san_state = state_lib.init_train_state(hp, G, D, fns.g_tx, fns.d_tx)
  assert "san_head" in san_state.d_params and "mapping" not in san_state.d_params
  san_fns = step_lib.PhaseFns(hp.train, G, D, fns.g_tx, fns.d_tx)
  copy = lambda tree: jax.tree.map(np.asarray, tree)
  before = copy(san_state)
  new_san, m_san = jax.jit(san_fns.d_main)(san_state, batch)
  assert np.isfinite(float(m_san["loss/D"]))
  changed = lambda a, b: {k for k in a if any(
      not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a[k]), jax.tree.leaves(b[k])))}
  assert {"san_head", "b4", "b8"} <= changed(copy(new_san.d_params), before.d_params)
  # ADA's sign statistic reads the plain logits of the (augmented) reals.
  assert float(new_san.ada_sign_sum) == float(m_san["signs/real"])
  new_g, m_g = jax.jit(san_fns.g_main)(san_state, batch)
  assert np.isfinite(float(m_g["loss/G"]))
  # Hinge base: G loss is -mean(D(fake)).
  # Two float32 means of the same 8 logits, perhaps summed in another order: <= 8 eps
  # max|logit| absolute (the atol for a mean that cancels near 0).
  np.testing.assert_allclose(float(m_g["loss/G"]), -float(m_g["scores/fake_g"]), rtol=1e-5,
                             atol=1e-5)
  with san_config.unlocked():
    san_config.train.loss = "wgan"
  with pytest.raises(config_lib.ConfigError, match=r"config.train.loss = 'wgan'"):
    config_lib.validate_config(san_config)
