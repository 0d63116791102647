"""CIFAR-10 with NVIDIA's stylegan2-ada-pytorch `cifar` settings (32x32, 10 classes).

cfg=cifar: ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1 (channel_base 16384 -> 512
channels at every resolution), lrate=0.0025, gamma=0.01, ema=500 kimg, ramp=0.05, map=2,
style mixing off, x-flips on.
"""

import ml_collections

from gandance_jax import config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, shrink=False)
  config = config_lib.base_config()
  config.data.update(dict(name="cifar10", resolution=32, xflip=True))
  # Shared by data, G and D (FieldReferences, see config_lib.base_config).
  config.generator.update(dict(num_classes=10, empty_class=True, img_channels=3))
  config.generator.update(dict(
      z_dim=512, w_dim=512, mapping_layers=2, channel_base=16384, channel_max=512,
      architecture="skip"))
  config.discriminator.update(dict(
      architecture="resnet", channel_base=16384, channel_max=512, mapping_layers=2,
      mbstd_group_size=32))
  config.train.update(dict(
      batch_size=64, total_kimg=100000.0, g_lr=0.0025, d_lr=0.0025, r1_gamma=0.01,
      ema_kimg=500.0, ema_rampup=0.05, style_mixing_prob=0.0, pl_weight=0.0,
      label_reset_prob=0.1, augment="ada", ada_target=0.6))
  config.checkpoint_every_steps = 5000
  config.sample_every_steps = 5000
  config.evals.fid10k = dict(type="fid", extractor="inception", num_samples=10000,
                             guidance_scales=[1.0, 1.2], every_steps=50000)
  if args.shrink:
    config.generator.update(dict(z_dim=32, w_dim=32, channel_base=256, channel_max=32))
    config.discriminator.update(dict(channel_base=256, channel_max=32, mbstd_group_size=4))
    config.train.update(dict(batch_size=8, total_kimg=0.08))
    config.evals = {}
  return config
