"""BigGAN on the embedded digits (scikit-learn's 8x8 digits upsampled to 32x32, 10 classes),
CPU sized; GANdance label reset and the empty class as configs/digits.py.

  python -m gandance_jax.main --config=configs/biggan_digits.py --workdir=/tmp/bg_digits
  python -m gandance_jax.main --config=configs/biggan_digits.py:shrink --workdir=/tmp/bg_tiny

BigGAN's smallest architecture table is 32x32 (three GBlocks 4 -> 8 -> 16 -> 32), so the
digits are upsampled to 32 rather than 16. ch = 8 gives 32 channels in every block of G and
D; no attention (its cost is not worth it at this size); hierarchical z with a shared
embedding. Training: the reference's CIFAR recipe (launch_cifar_ema.sh: G/D lr 2e-4,
num_D_steps 4, EMA from step 1000) shortened, with DiffAugment translation + cutout as the
StyleGAN2 digits config (D memorises 1797 images otherwise).

Measured (configs as of commit 3d68162, i.e. ema_decay 0.999; `--mode=all`, 1500 steps, under
`nice -n 19` on the 2 shared cores at load average ~9: 51.7 min wall, 1371 s user CPU; on 2
idle cores a side-by-side step timing put it at ~11 min): class accuracy of G EMA samples
0.503 (1000 samples, plain conditional; FID 39.3 on the digits classifier's features),
short of the 0.8 asked. Why (same checkpoint, the same classifier evaluator, 1000 samples):
G itself (the train state's g_params and batch_stats) scores 0.973, G EMA with 16 standing-statistics passes 0.539, G EMA with learned guidance
0.639 at scale 1.4 and 0.751 at 2.0. The EMA, not BN statistics, is the cause: with decay
0.999 from step 300 the step-300 copy still weighs 0.999^1200 = 0.30 at step 1500 (horizon
1000 of 1200 steps), and G learns the class conditioning late (the step-500 grid barely
shows it). Hence ema_decay 0.99 (horizon 100 steps, 0.99^1200 ~ 6e-6 on the copy); the
reference's 0.9999 is for 100k+ steps. Re-run with 0.99 (`--mode=all`, the same command,
workdir /tmp/bg_digits099): G EMA class accuracy 0.998 (1000 samples, NVIDIA protocol), FID
10.1 on the digits classifier's features (39.3 before); 1.8 steps/s over its last 800 steps
on 2 otherwise idle cores, i.e. ~14 min for the 1500 steps (its wall clock, 70 min, was spent
mostly paused or at nice 19 behind a test-suite run; 1104 s user CPU).

Arguments: `shrink` (a seconds-long smoke test of every phase), `fid` (in-loop FID on the
digits classifier's features at guidance scales 1.0 and 1.3).
"""

import ml_collections

from gandance_jax import config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, shrink=False, fid=False)
  config = config_lib.base_config()
  config.data.name = "digits"
  config.data.resolution = 32
  config.generator.num_classes = 10
  config.generator.empty_class = True
  config.generator.img_channels = 1
  config_lib.use_biggan(config)
  config.generator.update(dict(ch=8, dim_z=32, shared_dim=16, hier=True, attention="0",
                               weight_init="N02", sn_eps=1e-6))
  config.discriminator.update(dict(ch=8, attention="0", weight_init="N02", sn_eps=1e-6))
  # 64 images per step = 4 D steps of 16; 1500 steps = 96 kimg.
  config.train.update(dict(
      batch_size=64, total_kimg=96.0, g_lr=2e-4, d_lr=2e-4, num_D_steps=4,
      ema_decay=0.99, ema_start=300, standing_stats=0, label_reset_prob=0.1,
      augment="diffaugment", augment_policy="translation,cutout", augment_p=1.0))
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.sample_every_steps = 500
  config.sample.update(dict(num_samples=1000, batch_size=250))
  # 100 samples per class at the end of training, plain conditional sampling.
  config.evals.class_accuracy = dict(
      type="classifier", extractor="digits", num_samples=1000, guidance_scales=(1.0,),
      mode="none", every_steps=0, final=True, batch_size=250)

  if args.shrink:
    config.generator.update(dict(ch=2, dim_z=8, shared_dim=4))
    config.discriminator.update(dict(ch=2))
    config.train.update(dict(batch_size=8, num_D_steps=2, total_kimg=0.024, ema_start=2,
                             standing_stats=2))
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.sample_every_steps = 3
    config.sample.update(dict(num_samples=40, batch_size=20))
    config.evals.class_accuracy.update(dict(num_samples=40, batch_size=20))
  if args.fid:
    config.evals.fid = dict(
        type="fid", extractor="digits", num_samples=60 if args.shrink else 1000,
        guidance_scales=(1.0, 1.3), mode="learned", every_steps=2 if args.shrink else 500,
        batch_size=20 if args.shrink else 250)
  return config
