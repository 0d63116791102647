"""The paper's StyleGAN2 on ImageNet 64x64 (1000 classes), learning-based GANdance.

Network as the paper's StyleGAN2-ADA baseline at 64x64: 512 channels up to 32x32 and 256 at
64x64 (channel_base 16384), 8 mapping layers, conditional projection D.
"""

import ml_collections

from gandance_jax import config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, shrink=False)
  config = config_lib.base_config()
  config.data.update(dict(name="imagenet_resized/64x64", resolution=64, xflip=True))
  # Shared by data, G and D (FieldReferences, see config_lib.base_config).
  config.generator.update(dict(num_classes=1000, empty_class=True, img_channels=3))
  config.generator.update(dict(
      z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512,
      architecture="skip"))
  config.discriminator.update(dict(
      architecture="resnet", channel_base=16384, channel_max=512, mapping_layers=8,
      mbstd_group_size=4))
  config.train.update(dict(
      batch_size=256, total_kimg=100000.0, g_lr=0.0025, d_lr=0.0025, r1_gamma=0.2,
      ema_kimg=20.0, ema_rampup=None, style_mixing_prob=0.9, pl_weight=0.0,
      label_reset_prob=0.1, augment="none"))
  config.checkpoint_every_steps = 5000
  config.sample_every_steps = 5000
  config.evals.fid50k = dict(type="fid", extractor="inception", convention="tf1",
                             num_samples=50000, guidance_scales=[1.0, 1.3],
                             every_steps=50000, reference="")
  if args.shrink:
    config.generator.update(dict(num_classes=10, z_dim=32, w_dim=32, channel_base=512,
                                 channel_max=32, mapping_layers=2))
    config.discriminator.update(dict(channel_base=512, channel_max=32,
                                     mapping_layers=2))
    config.train.update(dict(batch_size=8, total_kimg=0.08))
    config.evals = {}
  return config
