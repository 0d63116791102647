"""Fine-tuning a pre-trained conditional GAN with the empty class added (warm_start.py): the
widened networks compute what NVIDIA's pre-trained ones compute for every class, from an
.npz of NVIDIA state dicts and from a run of this project."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from gandance_jax import config_lib
from gandance_jax.train import loop
from gandance_jax.train import state as state_lib
from gandance_jax.train import warm_start
from tests import _mp_common as common
from tests.conftest import TEST_DATA_DIR

NVIDIA = TEST_DATA_DIR / "stylegan2_ada_extra" / "sg2ada_c3_res8_orig_orig"


def _nvidia_config(**generator):
  """A project config with the networks of the NVIDIA parity file, plus the empty class."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  s = json.loads(NVIDIA.with_suffix(".json").read_text())
  config = digits.get_config("shrink")
  config.generator.update({**dict(
      z_dim=s["z_dim"], w_dim=s["w_dim"], num_classes=s["c_dim"], empty_class=True,
      resolution=s["img_resolution"], img_channels=s["img_channels"],
      mapping_layers=s["mapping_layers"], channel_base=s["channel_base"],
      channel_max=s["channel_max"], conv_clamp=s["conv_clamp"],
      architecture=s["g_architecture"]), **generator})
  config.discriminator.update(dict(
      num_classes=s["c_dim"], empty_class=True, resolution=s["img_resolution"],
      img_channels=s["img_channels"], mapping_layers=s["d_mapping_layers"],
      channel_base=s["channel_base"], channel_max=s["channel_max"],
      conv_clamp=s["conv_clamp"], architecture=s["d_architecture"],
      mbstd_group_size=s["mbstd_group_size"], mbstd_num_channels=s["mbstd_num_channels"]))
  return config


def _fresh_state(config):
  hp = config_lib.validate_config(config)
  G, D = state_lib.build_models(hp)
  g_tx, d_tx = state_lib.make_optimizers(hp.train)
  return G, D, jax.jit(lambda: state_lib.init_train_state(hp, G, D, g_tx, d_tx))()


@pytest.fixture(scope="module")
def nvidia_npz(tmp_path_factory):
  data = np.load(NVIDIA.with_suffix(".npz"))
  path = tmp_path_factory.mktemp("pretrained") / "cond.npz"
  np.savez(path, **{k: data[k] for k in data.files if k.startswith(("G.", "D."))})
  return path, data


@pytest.mark.parametrize("init", ["mean", "init"])
def test_nvidia_weights_widened_compute_the_same(nvidia_npz, init):
  path, data = nvidia_npz
  config = _nvidia_config()
  config.train.init_from, config.train.init_empty = str(path), init
  G, D, fresh = _fresh_state(config)
  state = warm_start.apply(fresh, config_lib.validate_config(config))
  assert G.empty_class and G.c_dim == 4

  # Every class: ws, images and D logits of NVIDIA's pre-trained networks (3 classes).
  labels = data["in.labels"].astype(np.int32)
  g_vars, d_vars = state.g_ema_variables, state.d_variables
  ws = G.apply(g_vars, data["in.z"], labels, method=G.mapping)
  # PyTorch vs XLA float32, the bounds of test_stylegan2._check_parity (fan-in sums in
  # another order: ws 1e-4, images and logits 1e-3, each well above the typical rounding).
  np.testing.assert_allclose(ws, data["out.ws"], rtol=0, atol=1e-4)
  img = G.apply(g_vars, ws, noise_mode="const", method=G.synthesis)
  np.testing.assert_allclose(img, data["out.img"].transpose(0, 2, 3, 1), rtol=0, atol=1e-3)
  x_real = data["in.x_real"].transpose(0, 2, 3, 1)
  np.testing.assert_allclose(D.apply(d_vars, x_real, labels), data["out.d_logits_real"][:, 0],
                             rtol=0, atol=1e-3)

  # The new row: the mean of the (rescaled) class rows, or this run's fresh row.
  for params, fresh_params in ((state.g_params, fresh.g_params),
                               (state.d_params, fresh.d_params)):
    key = "mapping_network" if "mapping_network" in params else "mapping"
    w = np.asarray(params[key]["embed"]["weight"])
    assert w.shape[0] == 4
    want = (w[:3].mean(0) if init == "mean" else
            np.asarray(fresh_params[key]["embed"]["weight"])[3])
    # A float32 mean of 3 rows (or a copy): 3 roundings of entries <= max|w|, so an absolute
    # bound (a mean of mixed signs can cancel near 0, where rtol alone fails).
    np.testing.assert_allclose(w[3], want, rtol=0,
                               atol=4 * np.finfo(np.float32).eps * np.abs(w[:3]).max())
  if init == "mean":
    # The empty condition's embedding is the embedding of the average one-hot label.
    embed = lambda c: G.apply(g_vars, data["in.z"][:1], c, method=G.mapping)
    # float32 1/3 one-hot @ embedding vs the stored mean row: a few ulps of the embedding,
    # carried through the 2-layer mapping (fan-in <= 64): ~1e-6 of w = O(1).
    np.testing.assert_allclose(embed(np.full((1, 4), [1 / 3] * 3 + [0], np.float32)),
                               embed(np.asarray([3])), rtol=1e-5, atol=1e-6)
  # No G_ema in the file: the EMA starts at G; optimizer state and step stay fresh.
  jax.tree.map(np.testing.assert_array_equal, state.g_ema_params, state.g_params)
  assert int(state.step) == 0


def test_mismatched_networks_are_named(nvidia_npz, tmp_path):
  path, _ = nvidia_npz
  config = _nvidia_config(channel_max=8)
  config.train.init_from = str(path)
  _, _, fresh = _fresh_state(config)
  with pytest.raises(warm_start.WarmStartError, match="cond.npz.*shape"):
    warm_start.apply(fresh, config_lib.validate_config(config))
  config = _nvidia_config(num_classes=5)
  config.discriminator.num_classes = 5
  config.train.init_from = str(path)
  _, _, fresh = _fresh_state(config)
  with pytest.raises(warm_start.WarmStartError, match="3 label inputs.*num_classes = 5"):
    warm_start.apply(fresh, config_lib.validate_config(config))
  config.train.init_from = str(tmp_path / "nowhere.npz")
  with pytest.raises(warm_start.WarmStartError, match="does not exist"):
    warm_start.apply(fresh, config_lib.validate_config(config))


def test_fine_tune_a_run_of_this_project(tmp_path):
  """Pre-train without the empty class (p = 0), fine-tune with it (p = 0.5): the fine-tune
  starts from the pre-trained weights (2 Adam steps move them by < 0.02), not from its seed."""
  steps = dict(train__total_kimg=0.016, checkpoint_every_steps=2, sample_every_steps=1000,
               log_every_steps=1, train__augment="none", train__r1_gamma=0.0,
               train__pl_weight=0.0)
  pre_config = common.tiny_config(generator__empty_class=False,
                                  discriminator__empty_class=False,
                                  train__label_reset_prob=0.0, sample__mode="training_free",
                                  **steps)
  loop.train(config_lib.validate_config(pre_config), str(tmp_path / "pre"))
  pre, _ = state_lib.load_train_state(str(tmp_path / "pre"))

  config = common.tiny_config(train__init_from=str(tmp_path / "pre"), seed=1, **steps)
  loop.train(config_lib.validate_config(config), str(tmp_path / "ft"))
  tuned, step = state_lib.load_train_state(str(tmp_path / "ft"))
  scratch_config = common.tiny_config(seed=1, **steps)
  _, _, scratch = _fresh_state(scratch_config)
  assert step == 2
  for name in ("g_ema_params", "d_params"):
    a, b, c = (jax.tree_util.tree_leaves_with_path(getattr(s, name))
               for s in (pre, tuned, scratch))
    for (path, x), (_, y), (_, z) in zip(a, b, c):
      label = f"{name}{jax.tree_util.keystr(path)}"
      if "embed" in label and "weight" in label:
        assert y.shape[0] == x.shape[0] + 1, label  # the empty row was added
        continue
      assert np.abs(np.asarray(y) - x).max() < 0.02, label
      if x.size > 8:
        assert np.abs(np.asarray(z) - x).max() > 0.2, label  # a fresh init is far away
  assert (tmp_path / "ft" / "curves.png").exists()  # written by the loop at the end
  records = [json.loads(line) for line in open(tmp_path / "ft" / "metrics.jsonl")]
  assert all(np.isfinite(r["loss/G"]) for r in records if "loss/G" in r)


def test_config_checks():
  config = common.tiny_config(train__init_empty="zero")
  with pytest.raises(config_lib.ConfigError, match="config.train.init_empty = 'zero'"):
    config_lib.validate_config(config)


def test_widen_embedding_keeps_effective_rows():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(7, 5)).astype(np.float32)
  wide = warm_start.widen_embedding(w)
  # Effective rows: stored / sqrt(in_features) (equalised learning rate).
  # Element-wise rescaling: ~4 roundings, 2.4e-7 relative; the new row is a mean of 7 rows of
  # mixed sign, so its bound is absolute: 8 roundings of entries <= max|w| / sqrt(7).
  np.testing.assert_allclose(wide[:7] / np.sqrt(8), w / np.sqrt(7), rtol=1e-6)
  np.testing.assert_allclose(wide[7] / np.sqrt(8), (w / np.sqrt(7)).mean(0), rtol=0,
                             atol=8 * np.finfo(np.float32).eps * np.abs(w).max() / np.sqrt(7))
  with pytest.raises(ValueError, match="init must be one of"):
    warm_start.widen_embedding(w, init="zeros")
