"""CIFAR-10 with NVIDIA's stylegan2-ada-pytorch `--cfg=cifar` settings (32x32, 10 classes).

train.py's cfg_specs['cifar'] and what it implies, field by field:
  ref_gpus=2   batch_gpu = 32: minibatch-stddev groups never cross the two GPUs'
               halves of the batch -> discriminator.mbstd_shards = 2
  kimg=100000  train.total_kimg
  mb=64        train.batch_size
  mbstd=32     discriminator.mbstd_group_size
  fmaps=1      channel_base = 1 * 32768, channel_max 512 (G and D)
  lrate=0.0025 train.g_lr, train.d_lr (Adam betas (0, 0.99), eps 1e-8: the base defaults)
  gamma=0.01   train.r1_gamma
  ema=500      train.ema_kimg
  ramp=0.05    train.ema_rampup
  map=2        generator.mapping_layers (D's label mapping keeps its default 8 layers)
and `if cfg == 'cifar'`: pl_weight 0, style_mixing_prob 0, D architecture 'orig' (G 'skip');
--aug=ada default: ADA target 0.6, ada_kimg 500 (100 only with --resume), ada_interval 4,
--augpipe=bgc. Not matched: NVIDIA trains the 4 highest resolutions in float16
(num_fp16_res=4); here everything is float32 unless num_bf16_res is set. x-flips
(--mirror=1) are on, and GANdance's empty class with label reset p = 0.1.
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
      z_dim=512, w_dim=512, mapping_layers=2, channel_base=32768, channel_max=512,
      architecture="skip"))
  config.discriminator.update(dict(
      architecture="orig", channel_base=32768, channel_max=512, mapping_layers=8,
      mbstd_group_size=32, mbstd_shards=2))
  config.train.update(dict(
      batch_size=64, total_kimg=100000.0, g_lr=0.0025, d_lr=0.0025, betas=(0.0, 0.99),
      eps=1e-8, r1_gamma=0.01, r1_interval=16, ema_kimg=500.0, ema_rampup=0.05,
      style_mixing_prob=0.0, pl_weight=0.0, label_reset_prob=0.1, augment="ada",
      ada_pipe="bgc", ada_target=0.6, ada_kimg=500.0, ada_interval=4))
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
