"""The embedded default: scikit-learn's 8x8 digits, upsampled to 16x16, 10 classes, CPU sized.

  python -m gandance_jax.main --config=configs/digits.py --workdir=/tmp/digits
  python -m gandance_jax.main --config=configs/digits.py:shrink --workdir=/tmp/digits_tiny

Arguments (`config_lib.parse_arg`): `shrink` makes a seconds-long smoke-test version; `fid`
(e.g. `:shrink,fid`) adds an in-loop FID on the digits classifier's features at guidance
scales 1.0 and 1.3 (evaluation/evaluators/fid.py); its fields can be overridden, e.g.
`--config.evals.fid.every_steps=250`.

The class accuracy of G EMA samples (the digits analogue of the paper's classifier score) is
the evaluator `class_accuracy` (type 'classifier', evaluation/evaluators/classifier.py): every
250 steps and at the end of training, plain conditional sampling, balanced labels; metrics.jsonl gets
`class_accuracy/class_accuracy@1` (and the classifier score and mean p(c|x) beside it).
"""

import ml_collections

from gandance_jax import config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = config_lib.parse_arg(arg, shrink=False, fid=False)
  config = config_lib.base_config()
  config.data.name = "digits"
  # Shared by data, G and D (FieldReferences, see config_lib.base_config).
  config.data.resolution = 16
  config.generator.num_classes = 10
  config.generator.empty_class = True
  config.generator.img_channels = 1

  # Sized for a few minutes on 2 CPU cores (about 60k parameters each; 16 channels at 16x16,
  # 32 below; 'orig' architectures avoid the extra FIR resampling of skip/resnet, which is
  # the slow part of these networks on XLA:CPU). Measured: --mode=all (2000 steps, sampling,
  # evaluation) 1 min 35 s on an idle 2-core machine (~8 min when the cores are shared);
  # class accuracy of G EMA samples 0.871 (the digits CNN).

  # 32 kimg = 2000 steps of 16 (about 18 epochs of the 1797 digits): DiffAugment
  # (translation + cutout on reals and fakes) keeps D from memorising the small set.
  config_lib.cpu_sized_digits(config, batch_size=16, total_kimg=32.0)
  config.checkpoint_every_steps = 500
  config.sample_every_steps = 500
  config.sample.update(dict(num_samples=1000, batch_size=250))
  # 100 samples per class, guidance scale 1 (plain conditional), every 250 steps and at the
  # end, so the curves show a trend. Measured side by side with the end-only version (both
  # --mode=all on one loaded 2-core machine): 2001 s vs 1937 s wall, +3%; the same final
  # class accuracy (0.888: the evaluations do not touch the training state or its keys).
  config.evals.class_accuracy = dict(
      type="classifier", extractor="digits", num_samples=1000, guidance_scales=(1.0,),
      mode="none", every_steps=250, final=True, batch_size=250)

  if args.shrink:
    config_lib.shrink_digits(config)
    config.evals.class_accuracy.every_steps = 0  # the smoke test evaluates once, at the end
  if args.fid:
    config.evals.fid = dict(
        type="fid", extractor="digits", num_samples=60 if args.shrink else 1000,
        guidance_scales=(1.0, 1.3), mode="learned", every_steps=5 if args.shrink else 500,
        batch_size=20 if args.shrink else 250)
  return config
