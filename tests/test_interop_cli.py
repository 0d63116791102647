"""Downloaded weights from the command line: `main.py --mode=sample/eval --network=<pkl | .pth |
workdir>` and `--config.train.init_from=<pkl | .pth>` (interop.network_file, warm_start)."""

from __future__ import annotations

import json
import types

import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from gandance_jax import config_lib, images, interop, main, sample_cli
from gandance_jax.evaluation import cli, evaluators
from gandance_jax import sampler as sampler_lib
from gandance_jax.interop import network_file
from gandance_jax.networks import stylegan2
from gandance_jax.train import state as state_lib
from gandance_jax.train import warm_start
from tests.conftest import REPO_ROOT, golden_path, random_variables

PKL = ("stylegan2_ada_pkl", "sg2ada_pkl_c10_res32.pkl")
TINY = dict(z_dim=16, w_dim=16, num_classes=7, resolution=16, img_channels=3,
            channel_base=128, channel_max=16, mapping_layers=2)
# Few samples, one chunk, npz only: one compiled program per test.
SAMPLE = dict(sample__outputs=("npz",), sample__num_samples=6, sample__batch_size=6,
              sample__seed=3)


def _main(workdir, mode: str, network: str, **config_overrides) -> int:
  """main.main in this process (no interpreter / JAX start-up): --mode, --network, and a
  configs/digits.py:shrink config with `config_overrides` ('__' for '.') as --config.*."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config("shrink")
  for dotted, value in {**SAMPLE, **config_overrides}.items():
    *parents, leaf = dotted.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  if not flags.FLAGS.is_parsed():
    # The override flags --config.* exist only for those on sys.argv at import; the tests set
    # the config flag's value instead.
    flags.FLAGS(["main", f"--config={REPO_ROOT / 'configs' / 'digits.py'}:shrink",
                 f"--workdir={workdir}"])
  with flagsaver.flagsaver(config=config, workdir=str(workdir), mode=mode, network=str(network),
                           compilation_cache_dir=""):
    return main.main(["main"])


def _expected_npz(G, g_vars, labels, mode, scale=1.0, **kwargs):
  """What sample_cli writes for `labels` (same key, chunking and quantisation)."""
  key = jax.random.fold_in(jax.random.key(3), sample_cli._NPZ)  # pylint: disable=protected-access
  sampler = sampler_lib.make_sampler(G, mode=mode, scale=scale, **kwargs)
  return np.concatenate([images.to_uint8(x, "adm") for _, x in sampler.stream(
      g_vars, key, labels.astype(np.int32), chunk_size=6)])


def test_sample_nvidia_pickle_through_main(tmp_path):
  pkl = golden_path(*PKL)
  assert _main(tmp_path, "sample", pkl, sample__mode="none") == 0
  path = tmp_path / "samples" / "network_sg2ada_pkl_c10_res32" / "samples_6_none_s1.npz"
  with np.load(path) as f:
    got, labels = f["arr_0"], f["arr_1"]
  assert got.shape == (6, 32, 32, 3) and labels.max() < 10
  # The images of load_nvidia_pickle's G_ema (mode none, scale 1) for the same z and labels.
  G, g_vars = interop.load_nvidia_pickle(pkl)["G_ema"]
  np.testing.assert_array_equal(got, _expected_npz(G, g_vars, labels, "none"))


@pytest.mark.parametrize("with_settings", [True, False])
def test_sample_exported_pth_through_main(tmp_path, with_settings):
  """A .pth as `python -m gandance_jax.interop export` writes it (settings inside), and a bare
  {'G_ema': state dict} whose architecture comes from --config.generator.*."""
  G = stylegan2.Generator(empty_class=True, **TINY)
  g_vars = random_variables(G, seed=1)
  pth = tmp_path / "tiny.pth"
  if with_settings:
    interop.export_stylegan2(pth, G, g_vars)
    overrides = {}
  else:
    interop.write_torch_file(pth, {"G_ema": interop.stylegan2_torch_state_dict(G, g_vars)})
    # The module's own fields (digits:shrink has another architecture, clamp, ...).
    overrides = {f"generator__{k}": getattr(G, k) for k in (
        *TINY, "architecture", "conv_clamp", "w_avg_beta")}
    overrides.update(discriminator__num_classes=7, discriminator__resolution=16,
                     data__resolution=16)
  work = tmp_path / "work"
  assert _main(work, "sample", pth, sample__mode="learned", sample__npz_scales=(1.5,),
               **overrides) == 0
  with np.load(work / "samples" / "network_tiny" / "samples_6_learned_s1.5.npz") as f:
    got, labels = f["arr_0"], f["arr_1"]
  np.testing.assert_array_equal(got, _expected_npz(G, g_vars, labels, "learned", 1.5))


def test_learned_mode_needs_the_empty_class(tmp_path, monkeypatch):
  pkl = golden_path(*PKL)
  monkeypatch.setattr(sampler_lib, "_compiled", lambda *a, **k: pytest.fail("compiled"))
  config = config_lib.base_config()
  config.sample.mode = "learned"
  with pytest.raises(config_lib.ConfigError, match=f"'learned'.*{pkl.name}.*training_free"):
    sample_cli.run(config, str(tmp_path), network=str(pkl))
  assert _main(tmp_path, "sample", pkl, sample__mode="learned") == 2
  assert not (tmp_path / "samples").exists()
  # --mode=eval: an evaluator configured with learned guidance.
  config.evals.fid = dict(type="fid", mode="learned", guidance_scales=[1.0, 1.5])
  with pytest.raises(config_lib.ConfigError,
                     match=f"config.evals.fid.mode = 'learned'.*{pkl.name}.*training_free"):
    cli.run(config, str(tmp_path), network=str(pkl))
  assert not (tmp_path / "metrics.jsonl").exists()


def test_bad_network_files_are_named(tmp_path):
  junk = tmp_path / "junk.pkl"
  junk.write_bytes(np.random.default_rng(0).bytes(256))
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  for path, what in ((tmp_path / "nowhere.pkl", "does not exist"), (junk, "not a pickle"),
                     (empty, "is empty")):
    with pytest.raises(network_file.NetworkFileError, match=f"{path.name}.*{what}.*expected"):
      network_file.load_network(str(path))
  for mode in ("sample", "eval", "train"):  # train: init_from is for that
    assert _main(tmp_path, mode, junk) == 2, mode
  assert not (tmp_path / "samples").exists()


def _pickle_config(pkl):
  """A project config with the networks of the golden pickle, plus the empty class."""
  s = json.loads(pkl.with_suffix(".json").read_text())
  config = config_lib.base_config()
  config.generator.update(dict(
      z_dim=s["z_dim"], w_dim=s["w_dim"], num_classes=s["c_dim"], empty_class=True,
      resolution=s["img_resolution"], img_channels=s["img_channels"],
      mapping_layers=s["mapping_layers"], channel_base=s["channel_base"],
      channel_max=s["channel_max"], conv_clamp=float(s["conv_clamp"]),
      architecture=s["g_architecture"]))
  config.discriminator.update(dict(
      num_classes=s["c_dim"], empty_class=True, resolution=s["img_resolution"],
      img_channels=s["img_channels"], mapping_layers=s["d_mapping_layers"],
      channel_base=s["channel_base"], channel_max=s["channel_max"],
      conv_clamp=float(s["conv_clamp"]), architecture=s["d_architecture"],
      mbstd_group_size=s["mbstd_group_size"]))
  config.data.resolution = s["img_resolution"]
  config.train.batch_size = 4
  return config


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_init_from_pickle_and_pth(tmp_path):
  """The fine-tune's first G_ema (and G, D) are the pickle's networks with the empty class
  added; an exported .pth of those networks starts the same fine-tune."""
  pkl = golden_path(*PKL)
  snap = interop.load_nvidia_pickle(pkl)
  config = _pickle_config(pkl)
  hp = config_lib.validate_config(config)
  G, D = state_lib.build_models(hp)
  g_tx, d_tx = state_lib.make_optimizers(hp.train)
  # Zeros of the fresh state's shapes: warm_start reads only shapes (init_empty='mean'), and
  # tracing the init is much cheaper than compiling it.
  shapes = jax.eval_shape(lambda: state_lib.init_train_state(hp, G, D, g_tx, d_tx))
  fresh = jax.tree.map(lambda s: s if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key)
                       else np.zeros(s.shape, s.dtype), shapes)

  pth = tmp_path / "export.pth"
  interop.export_stylegan2(pth, *snap["G_ema"], *snap["D"])  # G_ema and D, as the CLI does
  for path, g_source in ((pkl, "G"), (pth, "G_ema")):
    config.train.init_from = str(path)
    state = warm_start.apply(fresh, config_lib.validate_config(config))
    for ours, theirs in ((state.g_ema_params, snap["G_ema"][1]["params"]),
                         (state.g_params, snap[g_source][1]["params"]),
                         (state.d_params, snap["D"][1]["params"])):
      ours, theirs = _flat(ours), _flat(theirs)
      assert ours.keys() == theirs.keys()
      for k, have in ours.items():
        want = theirs[k]
        if "embed" in k and "weight" in k:
          # The class rows, rescaled by sqrt(11/10) for the wider equalised-lr layer: equal
          # within float32 rounding of that one multiplication (the constant and the product
          # each rounded by <= eps/2 = 6e-8 relative: <= 1.2e-7 < 2e-7).
          assert have.shape == (want.shape[0] + 1, want.shape[1]), k
          np.testing.assert_allclose(have[:-1], want * np.sqrt(11 / 10), rtol=2e-7, err_msg=k)
        else:
          np.testing.assert_array_equal(have, want, err_msg=k)
  # The pickle's G_ema is not its G (the golden file made them differ): the right one was used.
  assert any(np.abs(a - b).max() > 0 for a, b in zip(
      _flat(snap["G"][1]["params"]).values(), _flat(snap["G_ema"][1]["params"]).values()))


def test_init_from_bad_files_are_named(tmp_path):
  config = _pickle_config(golden_path(*PKL))
  hp_of = lambda path: (config.train.update(dict(init_from=str(path))),
                        config_lib.validate_config(config))[1]
  junk = tmp_path / "junk.pkl"
  junk.write_bytes(np.random.default_rng(0).bytes(256))
  junk_pth = tmp_path / "junk.pth"
  junk_pth.write_bytes(b"PK\x03\x04" + np.random.default_rng(1).bytes(256))
  biggan_g = golden_path("biggan", "biggan_c10_res32_attn16.G.pth")
  folder = tmp_path / "biggan_run"
  folder.mkdir()
  (folder / "G.pth").write_bytes(biggan_g.read_bytes())
  for path, what in ((tmp_path / "nowhere.pkl", "does not exist"), (junk, "not a pickle"),
                     (junk_pth, ""), (biggan_g, "BigGAN-PyTorch state dict.*not "
                                                          "supported"),
                     (folder, "BigGAN-PyTorch checkpoint folder.*not supported")):
    with pytest.raises(warm_start.WarmStartError, match=f"{path.name}.*{what}"):
      warm_start.load_pretrained(str(path), hp_of(path))


def test_eval_nvidia_pickle_through_main(tmp_path, monkeypatch):
  """--mode=eval --network=<pkl>: the evaluators get the pickle's G_ema (the evaluators
  themselves are tested in test_evaluator.py); the record goes to --workdir."""
  pkl = golden_path(*PKL)
  seen = []
  def run(self, G, g_vars, step, specs, **kwargs):
    seen.append((G, g_vars, step, [s.mode for s in specs]))
    return {"fid/fid@1": 1.5}
  monkeypatch.setattr(evaluators.Suite, "run", run)
  assert _main(tmp_path, "eval", pkl, sample__mode="learned", sample__scales=(1.0,)) == 0
  ((G, g_vars, step, modes),) = seen
  want_G, want_vars = interop.load_nvidia_pickle(pkl)["G_ema"]
  assert G == want_G and step == 0
  jax.tree.map(np.testing.assert_array_equal, g_vars, want_vars)
  # The digits default FID (after the config's evaluators): 'learned' needs the empty class,
  # which the pickle's G lacks.
  assert modes[-1] == "training_free" and "learned" not in modes
  (record,) = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert record == {"eval": True, "step": 0, "network": str(pkl), "fid/fid@1": 1.5}


def test_network_workdir_writes_into_workdir(tmp_path, monkeypatch):
  """--network=<another run> samples that run's checkpoint `which`; files go to --workdir."""
  G = stylegan2.Generator(empty_class=True, **TINY)
  g_vars = random_variables(G, seed=2)
  other = tmp_path / "pretrained_run"
  other.mkdir()
  calls = []
  def load_generator_from(workdir, which="latest"):
    calls.append((workdir, which))
    return G, g_vars, config_lib.base_config(), 77
  monkeypatch.setattr(network_file, "checkpoint",
                      types.SimpleNamespace(load_generator_from=load_generator_from))
  config = config_lib.base_config()
  config.sample.update(dict(mode="learned", outputs=("npz",), num_samples=6, batch_size=6,
                            seed=3, npz_scales=(1.5,)))
  out = sample_cli.run(config, str(tmp_path / "work"), "best", network=str(other))
  assert calls == [(str(other), "best")]
  (path,) = out["npz"]
  assert path == str(tmp_path / "work" / "samples" / "best_step_77" /
                     "samples_6_learned_s1.5.npz")
  with np.load(path) as f:
    np.testing.assert_array_equal(
        f["arr_0"], _expected_npz(G, g_vars, f["arr_1"], "learned", 1.5))
