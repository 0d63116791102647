"""The paper's BigGAN setting: ImageNet 128x128 with ajbrock/BigGAN-PyTorch's
`scripts/launch_BigGAN_bs256x8.sh` hyper-parameters, GANdance label reset.

launch_BigGAN_bs256x8.sh: batch 256 with 8 G and 8 D gradient accumulations (2048 images per
update; accumulation is not implemented here, so train.batch_size = 2048 per step, sharded
over the devices), num_D_steps 1, G_lr 1e-4, D_lr 4e-4, betas (0, 0.999), adam_eps 1e-6,
SN_eps 1e-6, BN_eps 1e-5, G_ortho 0, shared embedding (shared_dim 128), hierarchical z
(dim_z 120), G_ch = D_ch = 96, attention at 64 in G and D, ortho init, G EMA decay 0.9999
from iteration 20000, 150k iterations (the README: 307.2 M images); sampling uses 16 standing-statistics accumulations (utils.py default
num_standing_accumulations, as sample_BigGAN_bs256x8.sh).

Data: ImageNet at 128x128 as an ADM-layout .npz or a class-folder tree
(`--config.data.name=folder --config.data.path=...`); there is no TFDS source at 128.
"""

import ml_collections

from gandance_jax import config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, shrink=False)
  config = config_lib.base_config()
  config.data.update(dict(name="folder", resolution=128, xflip=True, path=""))
  config.generator.update(dict(num_classes=1000, empty_class=True, img_channels=3))
  config_lib.use_biggan(config)
  config.generator.update(dict(ch=96, dim_z=120, shared_dim=128, hier=True, attention="64",
                               weight_init="ortho", sn_eps=1e-6, bn_eps=1e-5))
  config.discriminator.update(dict(ch=96, attention="64", weight_init="ortho", sn_eps=1e-6))
  config.train.update(dict(
      batch_size=2048, num_D_steps=1, total_kimg=307200.0, g_lr=1e-4, d_lr=4e-4,
      betas=(0.0, 0.999), eps=1e-6, G_ortho=0.0, ema_decay=0.9999, ema_start=20000,
      standing_stats=16, label_reset_prob=0.1))
  config.checkpoint_every_steps = 1000
  config.sample_every_steps = 2000
  config.evals.fid50k = dict(type="fid", extractor="inception", convention="tf1",
                             num_samples=50000, guidance_scales=[1.0, 1.3],
                             every_steps=2000, reference="")
  if args.shrink:
    config.generator.update(dict(num_classes=10, ch=4, dim_z=24, shared_dim=8))
    config.discriminator.update(dict(ch=4))
    config.train.update(dict(batch_size=8, total_kimg=0.024, standing_stats=2))
    config.evals = {}
  return config
