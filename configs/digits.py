"""The embedded default: scikit-learn's 8x8 digits, upsampled to 16x16, 10 classes, CPU sized.

  python -m gandance_jax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m gandance_jax.main --config=configs/digits.py:shrink --workdir=/tmp/digits_tiny

`:shrink` (or any arg containing 'shrink') makes a seconds-long smoke-test version.
"""

import ml_collections

from gandance_jax import config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.data.name = "digits"
  config.data.resolution = 16
  res = config.data.resolution

  config.generator.update(dict(
      z_dim=64, w_dim=64, num_classes=10, empty_class=True, resolution=res, img_channels=1,
      mapping_layers=2, channel_base=1024, channel_max=64, architecture="skip"))
  config.discriminator.update(dict(
      num_classes=10, empty_class=True, resolution=res, img_channels=1, architecture="resnet",
      channel_base=1024, channel_max=64, mapping_layers=2, mbstd_group_size=4))

  config.train.update(dict(
      batch_size=32, total_kimg=200, g_lr=0.002, d_lr=0.002, r1_gamma=0.1,
      ema_kimg=1.0, ema_rampup=0.05, style_mixing_prob=0.0, label_reset_prob=0.1,
      augment="diffaugment", augment_policy="translation,cutout"))
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.sample_every_steps = 1000
  config.sample.update(dict(num_samples=1000, batch_size=250))

  if "shrink" in arg:
    config.generator.update(dict(z_dim=16, w_dim=16, channel_base=128, channel_max=16))
    config.discriminator.update(dict(channel_base=128, channel_max=16))
    config.train.update(dict(batch_size=8, total_kimg=0.08))
    config.log_every_steps = 2
    config.checkpoint_every_steps = 5
    config.sample_every_steps = 5
    config.sample.update(dict(num_samples=40, batch_size=20))
  return config
