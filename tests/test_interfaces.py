"""The seams of the redesign: the generator interface, the one "scale 1" decision, the one
guided-latents path, the one label reset, typed hyper-parameters and the config helpers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import config_lib, guidance
from gandance_jax import sampler as sampler_lib
from gandance_jax.networks import base, stylegan2, toy2d
from gandance_jax.train import losses
from gandance_jax.train import toy as toy_train
from tests._mp_common import tiny_config
from tests.conftest import random_variables

TINY = dict(z_dim=8, w_dim=8, num_classes=5, empty_class=True, resolution=8, img_channels=1,
            mapping_layers=2, channel_base=32, channel_max=8)


def test_both_families_implement_the_generator_interface():
  for G in (stylegan2.Generator(**TINY),
            toy2d.Toy2DGenerator(num_classes=5, empty_class=True)):
    assert isinstance(G, base.ConditionalGenerator), type(G).__name__
    assert len(G.ws_resolutions()) == G.num_ws
    assert G.empty_label == G.num_classes
  # A module without the interface is not taken for one.
  assert not isinstance(stylegan2.Discriminator(num_classes=5, resolution=8),
                        base.ConditionalGenerator)


def test_is_unguided_is_the_one_scale_one_decision():
  assert guidance.is_unguided("none", 1.0)
  assert guidance.is_unguided("learned", 1.0)
  assert guidance.is_unguided("training_free", np.ones(4))
  assert not guidance.is_unguided("learned", 1.3)
  assert not guidance.is_unguided("learned", np.array([1.0, 1.2]))
  # A traced scale is never known to be 1: the guided program keeps scale-1 rows exact.
  seen = []
  jax.jit(lambda s: seen.append(guidance.is_unguided("learned", s)) or s)(1.0)
  assert seen == [False]
  # make_sampler follows it: scale 1 compiles the unguided program.
  G = stylegan2.Generator(**TINY)
  assert sampler_lib.make_sampler(G, mode="learned", scale=1.0).spec.mode == "none"
  assert sampler_lib.make_sampler(G, mode="learned", scale=1.2).spec.mode == "learned"


def test_guided_latents_is_the_path_of_sampler_and_guided_ws():
  G = stylegan2.Generator(**TINY)
  v = random_variables(G)
  key, labels = jax.random.key(1), np.array([0, 3, 4, 1], np.int32)
  z = sampler_lib.sample_z(key, jnp.arange(4), G.z_dim)
  mapping = lambda z_, c_: G.apply(v, z_, c_, broadcast=False, method=G.mapping)
  for mode, kwargs in (("learned", dict(empty_label=G.empty_label)),
                       ("training_free", dict(opposite_labels=jnp.arange(5)))):
    got = guidance.guided_latents(G, v, z, labels, mode=mode, scale=1.3,
                                  opposite_labels=kwargs.get("opposite_labels"))
    want = guidance.guided_ws(mapping, z, labels, scale=1.3, w_avg=guidance.w_avg_of(v),
                              num_ws=G.num_ws, **kwargs)
    np.testing.assert_array_equal(got, want)
  # The sampler's latents are these (sample i uses z of global index i). The same ops in
  # another XLA program may contract multiply-adds differently (an ulp per op over a few
  # layers): the tolerance test_sampler uses for the same comparison.
  sampler = sampler_lib.make_sampler(G, mode="learned", scale=1.3, devices=jax.devices()[:1])
  np.testing.assert_allclose(
      sampler.latents(v, key, labels),
      guidance.guided_latents(G, v, z, labels, mode="learned", scale=1.3),
      rtol=1e-5, atol=1e-4)
  # Scale 1 in a guided mode is plain conditional sampling, bit for bit.
  np.testing.assert_array_equal(
      guidance.guided_latents(G, v, z, labels, mode="learned", scale=1.0),
      guidance.guided_latents(G, v, z, labels, mode="none"))


def test_one_label_reset_with_one_bound():
  labels = jnp.arange(8, dtype=jnp.int32) % 5
  u = jnp.linspace(0.0, 0.99, 8)
  out = losses.reset_labels(None, labels, 0.5, 5, uniform=u)
  np.testing.assert_array_equal(out, np.where(np.asarray(u) < 0.5, 5, labels))
  np.testing.assert_array_equal(losses.reset_labels(jax.random.key(0), labels, 1.0, 5),
                                np.full(8, 5))
  assert losses.reset_labels(jax.random.key(0), labels, 0.0, 5) is labels
  assert losses.reset_labels(jax.random.key(0), labels, 0.5, None) is labels
  # One bound, [0, 1], in both trainers' validation.
  losses.check_reset_prob(1.0, True)
  with pytest.raises(ValueError, match=r"label_reset_prob = 1.5 is invalid: .*\[0, 1\]"):
    losses.check_reset_prob(1.5, True)
  with pytest.raises(ValueError, match="empty_class"):
    losses.check_reset_prob(0.1, False)
  toy_train.ToyConfig(label_reset_prob=1.0, empty_class=True).validate()
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    toy_train.ToyConfig(label_reset_prob=1.5, empty_class=True).validate()
  config = tiny_config(train__label_reset_prob=1.0)
  assert config_lib.validate_config(config).train.label_reset_prob == 1.0


def test_validate_config_returns_frozen_typed_hparams():
  hp = config_lib.validate_config(tiny_config())
  assert hp.train.batch_size == 8 and isinstance(hp.train.betas, tuple)
  assert hp.generator["resolution"] == hp.discriminator["resolution"] == 8
  with pytest.raises(dataclasses.FrozenInstanceError):
    hp.train.batch_size = 16
  with pytest.raises(TypeError):
    hp.generator["resolution"] = 16
  assert hp.config["train"]["batch_size"] == 8  # the JSON form checkpoints keep
  assert [s.name for s in hp.evals] == ["class_accuracy"]


def test_shared_fields_are_set_once():
  config = config_lib.base_config()
  config.data.resolution = 32
  config.generator.num_classes = 7
  config.discriminator.img_channels = 3
  for net in (config.generator, config.discriminator):
    assert (net.resolution, net.num_classes, net.img_channels) == (32, 7, 3)
  assert config.data.resolution == 32


def test_parse_arg():
  args = config_lib.parse_arg("shrink,steps=3", shrink=False, fid=False, steps=10)
  assert (args.shrink, args.fid, args.steps) == (True, False, 3)
  assert not config_lib.parse_arg("", shrink=False).shrink
  # A substring is not an option (the old `"shrink" in arg` took 'noshrink' for 'shrink').
  with pytest.raises(config_lib.ConfigError, match="'noshrink' is invalid"):
    config_lib.parse_arg("noshrink", shrink=False)
