"""`--mode=sample` (gandance_jax.sample_cli): grids, interpolation strips, streamed .npz."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gandance_jax import config_lib, images, sample_cli
from gandance_jax.networks import stylegan2
from gandance_jax import sampler as sampler_lib
from tests.conftest import random_variables

TINY = dict(z_dim=16, w_dim=16, num_classes=7, resolution=16, img_channels=3,
            channel_base=128, channel_max=16, mapping_layers=2)




@pytest.fixture(scope="module")
def gen():
  G = stylegan2.Generator(empty_class=True, **TINY)
  return G, random_variables(G)


def _sample_config(**overrides):
  s = config_lib.base_config().sample
  # Grid rows (2 classes x 2) = batch_size, so the grid and npz programs are shared.
  s.update(dict(mode="training_free", num_opposite=3, scales=(1.0, 1.5), classes=(1, 4),
                grid_rows_per_class=2, interp_steps=3, npz_scales=(1.0, 1.3),
                num_samples=10, batch_size=4, seed=5))
  s.update(overrides)
  return s


def test_run_with_generator_writes_everything(gen, tmp_path):
  G, v = gen
  s = _sample_config()
  out = sample_cli.run_with_generator(G, v, s, str(tmp_path))
  # (a) Guidance grid: rows = 2 classes x 2 z's, columns = 2 scales; 16 px upscaled 4x, plus
  # the label margins: 7 px left (3 px class ids, 2 px either side), 9 px on top (5 px
  # scales, 2 px either side).
  (grid_path,) = out["grid"]
  assert os.path.basename(grid_path) == "grid_training_free.png"
  assert Image.open(grid_path).size == ((2 * 17 - 1 + 7) * 4, (4 * 17 - 1 + 9) * 4)
  # (b) Interpolation strip: one pair (1, 4), 3 steps, at the interpolation scale; 15 px on
  # the left for the label '1-4' (11 px, 2 px either side).
  (interp_path,) = out["interp"]
  assert os.path.basename(interp_path) == "interp_training_free_s1.3.png"
  assert Image.open(interp_path).size == ((3 * 17 - 1 + 15) * 4, 16 * 4)
  # (c) One ADM-layout npz per scale, the same labels in each.
  assert [os.path.basename(p) for p in out["npz"]] == [
      "samples_10_training_free_s1.npz", "samples_10_training_free_s1.3.npz"]
  files = [np.load(p) for p in out["npz"]]
  for f in files:
    assert sorted(f.files) == ["arr_0", "arr_1"]
    assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (10, 16, 16, 3)
    assert f["arr_1"].shape == (10,) and f["arr_1"].min() >= 0 and f["arr_1"].max() < 7
  np.testing.assert_array_equal(files[0]["arr_1"], files[1]["arr_1"])
  # The npz holds exactly the sampler's images (ADM quantisation) for those labels.
  key = jax.random.fold_in(jax.random.key(5), sample_cli._NPZ)  # pylint: disable=protected-access
  sampler = sampler_lib.make_sampler(G, mode="training_free", scale=1.3, num_opposite=3)
  expected = np.concatenate([images.to_uint8(x, "adm") for _, x in sampler.stream(
      v, key, files[1]["arr_1"].astype(np.int32), chunk_size=4)])
  np.testing.assert_array_equal(files[1]["arr_0"], expected)
  assert np.abs(files[0]["arr_0"].astype(int) - files[1]["arr_0"]).max() > 0


def test_layerwise_and_outputs_selection(gen, tmp_path):
  G, v = gen
  s = _sample_config(mode="learned", layer_scales="4:1.5,8:1.5,16:1.0",
                     outputs=("interp",), interp_pairs=((0, 6), (2, 3)))
  out = sample_cli.run_with_generator(G, v, s, str(tmp_path))
  assert out["grid"] == [] and out["npz"] == []
  (interp_path,) = out["interp"]
  assert os.path.basename(interp_path) == "interp_learned_layerwise.png"
  assert Image.open(interp_path).size == ((3 * 17 - 1 + 15) * 4, (2 * 17 - 1) * 4)


def test_write_npz_stream(tmp_path):
  rng = np.random.default_rng(0)
  data = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(7)
  path = sample_cli.write_npz_stream(str(tmp_path / "a.npz"), [data[:3], data[3:6], data[6:]],
                                     data.shape, labels)
  with np.load(path) as f:
    np.testing.assert_array_equal(f["arr_0"], data)
    np.testing.assert_array_equal(f["arr_1"], labels)
    assert f["arr_1"].dtype == np.int64
  with pytest.raises(ValueError, match="6 images were written, expected 7"):
    sample_cli.write_npz_stream(str(tmp_path / "b.npz"), [data[:6]], data.shape, labels)
  with pytest.raises(ValueError, match="more than 7"):
    sample_cli.write_npz_stream(str(tmp_path / "b.npz"), [data, data[:1]], data.shape, labels)
  assert sorted(os.listdir(tmp_path)) == ["a.npz"]  # Nothing half-written is left.


@pytest.mark.parametrize("overrides, field", [
    (dict(num_samples=0), "sample.num_samples"),
    (dict(num_samples=-5), "sample.num_samples"),
    (dict(batch_size=0), "sample.batch_size"),
    (dict(scales=(1.0, float("nan"))), r"sample.scales\[1\]"),
    (dict(npz_scales=(float("inf"),)), r"sample.npz_scales\[0\]"),
    (dict(interp_scale=float("nan")), "sample.interp_scale"),
    (dict(num_opposite=8), "sample.num_opposite"),
    (dict(opposite_labels=(1, 9)), "sample.opposite_labels"),
    (dict(opposite_labels=(1, 1)), "sample.opposite_labels"),
    (dict(opposite_labels=tuple(range(8))), "sample.opposite_labels"),
    (dict(classes=(0, 7)), "sample.classes"),
    (dict(interp_pairs=((0, 9),)), "sample.interp_pairs"),
    (dict(interp_steps=1), "sample.interp_steps"),
    (dict(mode="guided"), "sample.mode"),
    (dict(noise_mode="noisy"), "sample.noise_mode"),
    (dict(outputs=("grid", "video")), "sample.outputs"),
    (dict(layer_scales="4:1.5,8"), "sample.layer_scales"),
    (dict(layer_scales="4:1.5,8:1.2"), "sample.layer_scales"),  # Misses 16.
    (dict(layer_scales="4:1.5,8:1.2,16:1,32:1"), "sample.layer_scales"),  # No 32 here.
    (dict(truncation_psi=float("nan")), "sample.truncation_psi"),
    (dict(quantization="srgb"), "sample.quantization"),
])
def test_bad_config_raises_before_compiling(gen, tmp_path, monkeypatch, overrides, field):
  G, v = gen
  monkeypatch.setattr(sampler_lib, "_compiled", _no_compile)
  with pytest.raises(ValueError, match=f"config.{field} = "):
    sample_cli.run_with_generator(G, v, _sample_config(**overrides), str(tmp_path))
  assert not os.listdir(tmp_path)


def _no_compile(*args, **kwargs):
  raise AssertionError("nothing may be compiled for an invalid config")


def test_learned_needs_the_empty_class(tmp_path, monkeypatch):
  monkeypatch.setattr(sampler_lib, "_compiled", _no_compile)
  G = stylegan2.Generator(empty_class=False, **TINY)
  with pytest.raises(ValueError, match="config.sample.mode = 'learned'.*empty_class"):
    sample_cli.run_with_generator(G, {}, _sample_config(mode="learned"), str(tmp_path))


def test_run_from_checkpoint(gen, tmp_path, monkeypatch):
  """run(config, workdir) samples the G EMA that checkpoint.load_generator_from returns."""
  G, v = gen
  calls = []
  def load_generator_from(workdir, which="latest"):
    calls.append((workdir, which))
    return G, v, config_lib.base_config(), 1234
  fake = types.SimpleNamespace(load_generator_from=load_generator_from)
  monkeypatch.setattr(sample_cli, "checkpoint", fake)
  config = config_lib.base_config()
  config.sample = _sample_config(outputs=("grid",))
  out = sample_cli.run(config, str(tmp_path))
  assert calls == [(str(tmp_path), "latest")]
  assert out["grid"] == [str(tmp_path / "samples" / "step_1234" / "grid_training_free.png")]
  assert os.path.exists(out["grid"][0])
  # --checkpoint=best: the best in-loop snapshot, in its own output folder.
  out = sample_cli.run(config, str(tmp_path), "best")
  assert calls[-1] == (str(tmp_path), "best")
  assert out["grid"] == [str(tmp_path / "samples" / "best_step_1234" /
                             "grid_training_free.png")]
