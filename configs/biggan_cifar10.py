"""BigGAN on CIFAR-10 with ajbrock/BigGAN-PyTorch's `scripts/launch_cifar_ema.sh` settings.

launch_cifar_ema.sh: batch_size 50, num_D_steps 4 (so 200 images per iteration: here
train.batch_size = 200, four D batches of 50 and a G batch of 50), G_lr = D_lr = 2e-4,
Adam betas (0, 0.999) and adam_eps 1e-8 (utils.py defaults), G_ch = D_ch = 64, dim_z 128,
no attention, N02 init, SN_eps 1e-8, BN_eps 1e-5, G EMA decay 0.9999 from iteration 1000,
500 epochs (25 M images = 125k iterations), hinge loss, no ortho regularisation.

Differences: the script runs without G_shared (one class embedding per conditional BN);
this implementation has the shared embedding only (biggan.Generator: `G_shared` must be
True), with shared_dim = dim_z and without hierarchical z. GANdance: the empty class and
label reset p = 0.1, as the StyleGAN2 configs.
"""

import ml_collections

from gandance_jax import config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, shrink=False)
  config = config_lib.base_config()
  config.data.update(dict(name="cifar10", resolution=32, xflip=False))
  config.generator.update(dict(num_classes=10, empty_class=True, img_channels=3))
  config_lib.use_biggan(config)
  config.generator.update(dict(ch=64, dim_z=128, shared_dim=0, hier=False, attention="0",
                               weight_init="N02", sn_eps=1e-8, bn_eps=1e-5))
  config.discriminator.update(dict(ch=64, attention="0", weight_init="N02", sn_eps=1e-8))
  config.train.update(dict(
      batch_size=200, num_D_steps=4, total_kimg=25000.0, g_lr=2e-4, d_lr=2e-4,
      betas=(0.0, 0.999), eps=1e-8, G_ortho=0.0, ema_decay=0.9999, ema_start=1000,
      standing_stats=0, label_reset_prob=0.1))
  config.checkpoint_every_steps = 2000
  config.sample_every_steps = 2000
  config.evals.fid10k = dict(type="fid", extractor="inception", num_samples=10000,
                             guidance_scales=[1.0, 1.2], every_steps=5000)
  if args.shrink:
    config.generator.update(dict(ch=4, dim_z=16))
    config.discriminator.update(dict(ch=4))
    config.train.update(dict(batch_size=16, total_kimg=0.048))
    config.evals = {}
  return config
