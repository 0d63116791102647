"""Config files load, validate, and bad values fail naming the field."""

import importlib.util

import pytest

from gandance_jax import config_lib
from tests.conftest import REPO_ROOT


def load_config(name: str, arg: str = ""):
  spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", ["digits", "digits100", "cifar10", "imagenet64"])
@pytest.mark.parametrize("arg", ["", "shrink"])
def test_configs_validate(name, arg):
  config = load_config(name, arg)
  config_lib.validate_config(config)
  assert config.generator.resolution == config.data.resolution
  if config.generator.empty_class:
    assert config.train.label_reset_prob == 0.1


# NVlabs/stylegan2-ada-pytorch train.py, transcribed by hand (not imported):
#   cfg_specs['cifar'] = dict(ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1,
#                             lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2)
#   channel_base = int(fmaps * 32768), channel_max = 512; Adam betas [0, 0.99], eps 1e-8;
#   cfg == 'cifar': pl_weight = 0, style_mixing_prob = 0, D architecture = 'orig';
#   D's MappingNetwork keeps num_layers = 8 (only G_kwargs.mapping_kwargs gets map);
#   --aug=ada: ada_target = 0.6; training_loop defaults ada_interval = 4, ada_kimg = 500;
#   --augpipe default 'bgc'; R1 lazy interval 16 (training_loop's D_reg_interval).
NVIDIA_CIFAR = dict(ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1, lrate=0.0025,
                    gamma=0.01, ema=500, ramp=0.05, map=2)


def test_cifar_matches_nvidia_cifar_settings():
  c = load_config("cifar10")
  spec = NVIDIA_CIFAR
  g, d, t = c.generator, c.discriminator, c.train
  assert c.data.resolution == 32 and g.num_classes == 10
  # ref_gpus: batch_gpu = mb // ref_gpus; mbstd groups stay inside one GPU's share.
  assert d.mbstd_shards == spec["ref_gpus"]
  assert t.batch_size // d.mbstd_shards == spec["mb"] // spec["ref_gpus"]
  assert t.total_kimg == spec["kimg"] and t.batch_size == spec["mb"]
  assert d.mbstd_group_size == spec["mbstd"]
  assert g.channel_base == d.channel_base == int(spec["fmaps"] * 32768)
  assert g.channel_max == d.channel_max == 512
  assert t.g_lr == t.d_lr == spec["lrate"] and tuple(t.betas) == (0.0, 0.99) and t.eps == 1e-8
  assert t.r1_gamma == spec["gamma"] and t.r1_interval == 16
  assert t.ema_kimg == spec["ema"] and t.ema_rampup == spec["ramp"]
  assert g.mapping_layers == spec["map"] and d.mapping_layers == 8
  assert (t.pl_weight, t.style_mixing_prob) == (0.0, 0.0)
  assert (g.architecture, d.architecture) == ("skip", "orig")
  assert (t.augment, t.ada_pipe, t.ada_target, t.ada_kimg, t.ada_interval) == (
      "ada", "bgc", 0.6, 500, 4)


@pytest.mark.parametrize("field, value, message", [
    ("data.name", "mnist", r"config.data.name = 'mnist' is invalid: allowed values are"),
    ("generator.architecture", "unet", r"config.generator.architecture = 'unet'"),
    ("data.resolution", 24, r"config.data.resolution = 24 is invalid: must be a power of two"),
    ("train.augment", "ada2",
     r"config.train.augment = 'ada2'.*'none', 'diffaugment', 'diffaugment_ada', 'ada'"),
    ("train.ada_pipe", "bgcx", r"config.train.ada_pipe = 'bgcx'.*'bgc'"),
    ("train.label_reset_prob", 1.5, r"config.train.label_reset_prob = 1.5 .* must be <= 1"),
    ("train.batch_size", 0, r"config.train.batch_size = 0 is invalid"),
    ("sample.mode", "cfg", r"config.sample.mode = 'cfg'"),
    ("sample.num_opposite", 11, r"config.sample.num_opposite = 11 .*must be <="),
    ("mesh.data", 0, r"config.mesh.data = 0"),
])
def test_bad_values_name_the_field(field, value, message):
  config = load_config("digits")
  section, key = field.split(".")
  with config.unlocked():
    config[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(config)


def test_label_reset_needs_empty_class():
  config = load_config("digits")
  config.generator.empty_class = False
  config.discriminator.empty_class = False
  with pytest.raises(config_lib.ConfigError, match="label_reset_prob.*empty_class"):
    config_lib.validate_config(config)
  config.train.label_reset_prob = 0.0
  config.sample.mode = "training_free"
  config_lib.validate_config(config)  # plain conditional training is valid


def test_digits100_config_reaches_its_source_and_extractor():
  from gandance_jax.data import make_source  # pylint: disable=g-import-not-at-top
  config = load_config("digits100", "shrink,fid")
  hp = config_lib.validate_config(config)
  source = make_source(config.data)
  assert source.num_classes == config.generator.num_classes == 100
  batch = next(source.batches(4))
  assert batch["image"].shape == (4, 16, 16, 3) and batch["label"].max() < 100
  assert {s.extractor for s in hp.evals} == {"digits100"}
