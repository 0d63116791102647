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


def test_cifar_matches_nvidia_cifar_settings():
  c = load_config("cifar10")
  assert (c.data.resolution, c.generator.channel_max, c.generator.mapping_layers) == (32, 512, 2)
  assert (c.train.r1_gamma, c.train.batch_size, c.train.ema_kimg, c.train.g_lr) == (
      0.01, 64, 500.0, 0.0025)


def test_shrink_is_smaller():
  full, tiny = load_config("digits"), load_config("digits", "shrink")
  assert tiny.generator.channel_max < full.generator.channel_max
  assert tiny.train.total_kimg < full.train.total_kimg


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
