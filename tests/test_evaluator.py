"""Plug-in evaluators (in-loop / CLI): guided samples -> FID + classifier metrics per scale."""

import json

import jax
import numpy as np
import pytest

from gandance_jax import config_lib
from gandance_jax.evaluation import evaluators
from gandance_jax.evaluation import fid as fid_lib
from gandance_jax.networks import stylegan2


def _config():
  config = config_lib.base_config()
  config.data.update(dict(name="digits", resolution=16))
  return config


def _suite(config, workdir):
  """The evaluators of `config.evals` with their data, as the loop builds them."""
  return evaluators.Suite(evaluators.parse_evals(config.evals),
                          evaluators.EvalData(workdir, config.data))


def _tiny_g():
  G = stylegan2.Generator(z_dim=8, w_dim=8, num_classes=10, empty_class=True, resolution=16,
                          img_channels=1, mapping_layers=2, channel_base=64, channel_max=8)
  return G, stylegan2.init_generator(G, jax.random.key(0))


def test_spec_validation_names_the_field(tmp_path):
  with pytest.raises(ValueError, match=r"config.evals.fid.type = 'kid'"):
    evaluators.parse_spec("fid", dict(type="kid"))
  with pytest.raises(ValueError, match=r"config.evals.e.num_sample = .*unknown field"):
    evaluators.parse_spec("e", dict(num_sample=10))
  with pytest.raises(ValueError, match=r"config.evals.e.guidance_scales"):
    evaluators.parse_spec("e", dict(guidance_scales=[1.0, float("nan")]))
  with pytest.raises(ValueError, match=r"config.evals.e.inception_weights"):
    evaluators.EvalData(str(tmp_path), _config().data).extractor(
        evaluators.parse_spec("e", dict(extractor="inception")))


def test_due_schedule(tmp_path):
  config = _config()
  config.evals.a = dict(every_steps=10)
  config.evals.b = dict(every_steps=0)
  config.evals.c = dict(every_steps=0, final=False)
  suite = _suite(config, str(tmp_path))
  assert [s.name for s in suite.due(20)] == ["a"] and suite.due(15) == []
  assert [s.name for s in suite.final()] == ["a", "b"]


def test_registry_finds_each_type(tmp_path):
  assert sorted(evaluators.REGISTRY) == ["classifier", "fid", "precision_recall"]
  data = evaluators.EvalData(str(tmp_path), _config().data)
  for name in evaluators.REGISTRY:
    spec = evaluators.parse_spec(name, dict(type=name))
    assert type(evaluators.make(spec, None, data)) is evaluators.REGISTRY[name]


def test_fid_and_classifier_metrics_per_scale(tmp_path):
  config = _config()
  config.evals.fid = dict(type="fid", extractor="digits", num_samples=60,
                          guidance_scales=[1.0, 2.0], mode="learned", every_steps=5,
                          batch_size=30)
  G, g_vars = _tiny_g()
  suite = _suite(config, str(tmp_path))
  with pytest.warns(UserWarning, match="strongly biased"):
    metrics = suite.run(G, g_vars, 5, suite.due(5))
  keys = {"fid/fid@1", "fid/fid@2", "fid/class_accuracy@1", "fid/classifier_score@2",
          "fid/target_probability@1"}
  assert keys <= set(metrics)
  assert all(np.isfinite(v) for v in metrics.values())
  # An untrained generator is far from the real digits; the reference was cached.
  ref_stats, ref_feats = suite.data.reference(suite.specs[0])
  assert ref_stats.num_samples == 1797 and ref_feats.shape == (1797, ref_stats.dim)
  half = fid_lib.feature_statistics(ref_feats[::2])
  real_vs_real = fid_lib.frechet_distance(*half, ref_stats.mu, ref_stats.sigma)
  assert metrics["fid/fid@1"] > 10 * real_vs_real
  assert (tmp_path / "reference").is_dir()
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 5 and rows[-1]["fid/fid@2"] == metrics["fid/fid@2"]
  # The sampling protocol is stored beside the numbers (NVIDIA's by default).
  assert rows[-1]["protocol/fid"] == "labels=dataset noise=random psi=1 mode=learned n=60 seed=0"
  # Scale changes the samples (learned guidance is active), so the numbers differ.
  assert metrics["fid/fid@1"] != metrics["fid/fid@2"]


def test_precision_recall_evaluator(tmp_path):
  config = _config()
  config.evals.pr = dict(type="precision_recall", extractor="digits", num_samples=40,
                         guidance_scales=[1.0], batch_size=40, noise_mode="const")
  G, g_vars = _tiny_g()
  suite = _suite(config, str(tmp_path))
  with pytest.warns(UserWarning):
    m = suite.run(G, g_vars, 0, suite.specs)
  assert 0.0 <= m["pr/precision@1"] <= 1.0 and 0.0 <= m["pr/recall@1"] <= 1.0


def test_eval_cli_on_sample_files(tmp_path):
  from gandance_jax.data.digits import load_digits
  from gandance_jax.evaluation import cli
  from gandance_jax.images import to_uint8
  images, labels = load_digits(16)
  real = tmp_path / "real.npz"
  np.savez(real, arr_0=to_uint8(images[::2]), arr_1=labels[::2])
  noise = tmp_path / "noise.npz"
  rng = np.random.default_rng(0)
  np.savez(noise, arr_0=rng.integers(0, 256, (400, 16, 16, 1), dtype=np.uint8),
           arr_1=labels[:400])
  config = _config()
  config.sample.update(dict(num_samples=100, scales=(1.0,)))
  config.eval_samples = str(real)
  m_real = cli.run(config, str(tmp_path))
  config.eval_samples = str(noise)
  m_noise = cli.run(config, str(tmp_path))
  assert m_real["fid/class_accuracy"] > 0.9 and m_noise["fid/class_accuracy"] < 0.5
  assert m_real["fid/fid"] < 0.1 * m_noise["fid/fid"]
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["samples"] for r in records] == [str(real), str(noise)]
  config.eval_samples = str(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match="eval_samples.*does not exist"):
    cli.run(config, str(tmp_path))


def test_label_protocols(tmp_path):
  """'dataset' draws classes with the training data's frequencies (NVIDIA's metrics),
  'balanced' is ADM's i % C; both recorded in `protocol`; bad values name the field."""
  from gandance_jax.data import load_digits  # pylint: disable=g-import-not-at-top
  from gandance_jax.evaluation.evaluators import common  # pylint: disable=g-import-not-at-top
  spec = evaluators.parse_spec("e", dict(num_samples=20000))
  assert (spec.labels, spec.noise_mode) == ("dataset", "random")
  probs = np.array([0.7, 0.3, 0.0, 0.0])
  labels = common.sample_labels(spec, 4, probs)
  assert labels.dtype == np.int32 and labels.shape == (20000,)
  np.testing.assert_array_equal(labels, common.sample_labels(spec, 4, probs))  # seeded
  freq = np.bincount(labels, minlength=4) / labels.size
  # Binomial std of a frequency: sqrt(0.7 * 0.3 / 20000) = 0.0032; 5 std = 0.016.
  np.testing.assert_allclose(freq, probs, atol=0.016)
  balanced = evaluators.parse_spec("e", dict(num_samples=10, labels="balanced"))
  np.testing.assert_array_equal(common.sample_labels(balanced, 4, probs), np.arange(10) % 4)
  assert common.protocol(balanced).startswith("labels=balanced noise=random")
  # The digits data's own class frequencies.
  _, real_labels = load_digits(16)
  data = evaluators.EvalData(str(tmp_path), _config().data)
  # Counts over the same total, in float64: exact up to 1 ulp of each frequency.
  np.testing.assert_allclose(data.class_probabilities(10),
                             np.bincount(real_labels, minlength=10) / len(real_labels))
  with pytest.raises(ValueError, match=r"config.evals.e.labels = 'uniform'.*'balanced'"):
    evaluators.parse_spec("e", dict(labels="uniform"))
  with pytest.raises(ValueError, match=r"config.evals.e.noise_mode = 'fixed'"):
    evaluators.parse_spec("e", dict(noise_mode="fixed"))
