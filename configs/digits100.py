"""digits100 (docs/digits100/): 10 digits x 10 appearance styles, 16x16 RGB, 100 classes.

The many-class miniature of the paper's setting (data/digits100.py): several styles differ only
by a close colour or by the stroke, so a conditional generator can draw the wrong class or a
blend, which guidance is meant to fix.

  python -m gandance_jax.main --config=configs/digits100.py --workdir=runs/d100 --mode=all
  python -m gandance_jax.main --config=configs/digits100.py:shrink --workdir=/tmp/d100_tiny

Arguments (`config_lib.parse_arg`): `shrink` (seconds-long smoke test), `fid` (in-loop FID on
the digits100 classifier's features at guidance scales 1.0 and 1.3).

The end-of-training evaluator `class_accuracy` (type 'classifier', extractor 'digits100')
writes `class_accuracy/class_accuracy@1` (all 100 classes right), `digit_accuracy@1` and
`style_accuracy@1` to metrics.jsonl.
"""

import ml_collections

from gandance_jax import config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, shrink=False, fid=False)
  config = config_lib.base_config()
  config.data.name = "digits100"
  # Shared by data, G and D (FieldReferences, see config_lib.base_config).
  config.data.resolution = 16
  config.generator.num_classes = 100
  config.generator.empty_class = True
  config.generator.img_channels = 3

  # The digits networks with RGB output and 100 classes (a side-by-side step timing put them
  # at 1.05x the digits step).
  # 160 kimg = 5000 steps of 32 (~9 epochs of the 17,970 images). DiffAugment without
  # 'color': colour is half of the class here.
  # Measured on the shared 2-core CPU (other jobs running, docs/sweep_digits100/): 94-570
  # images/s (3-18 steps/s); steps 0-2500 took 7.2-9.6 min per run and the 2500->5000 resume
  # 4.6-10.5 min (277-633 s) with start-up and compile, so these 5000 steps take 12-20 min
  # at that load. At 5000 steps the unguided samples get the style 0.80-0.89 of the time
  # and the digit 0.13-0.29 (at 2500: style 0.34-0.57, digit at chance;
  # docs/sweep_digits100/README.md).
  config_lib.cpu_sized_digits(config, batch_size=32, total_kimg=160.0)
  config.checkpoint_every_steps = 1000
  config.sample_every_steps = 1000
  # Grid rows: digit 2 in all ten styles (labels 20-29), where the close pairs sit side by side.
  config.sample.update(dict(classes=tuple(range(20, 30)), num_samples=5000, batch_size=250))
  # 50 samples per class at the end of training, plain conditional sampling.
  config.evals.class_accuracy = dict(
      type="classifier", extractor="digits100", num_samples=5000, guidance_scales=(1.0,),
      mode="none", every_steps=0, final=True, batch_size=250)

  if args.shrink:
    config_lib.shrink_digits(config)
  if args.fid:
    config.evals.fid = dict(
        type="fid", extractor="digits100", num_samples=100 if args.shrink else 5000,
        guidance_scales=(1.0, 1.3), mode="learned", every_steps=5 if args.shrink else 1000,
        batch_size=20 if args.shrink else 250)
  return config
