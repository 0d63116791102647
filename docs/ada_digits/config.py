"""The config of docs/ada_digits (run.py sets seed, arm, steps and the FID reference per run).

configs/digits.py on a fixed class-stratified cut of 300 training images, one in-loop FID
evaluator on the digits classifier's features at guidance scale 1 (plain conditional
sampling) every 250 steps and at the end; the class accuracy comes from the same pass, so
configs/digits.py's separate classifier evaluator is dropped.

  python -m gandance_jax.main --config=docs/ada_digits/config.py --workdir=/tmp/x \\
      --config.train.augment=ada --config.evals.fid.reference=/tmp/all_digits_stats.npz
"""

import importlib.util
import os

import ml_collections

_DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs",
                       "digits.py")


def get_config() -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("digits_config", _DIGITS)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.max_images = 300
  config.train.total_kimg = 24.0   # 1500 steps of 16 (80 passes over the 300 images)
  del config.evals["class_accuracy"]
  # NVIDIA's metric protocol (random noise, labels drawn from the data's class frequencies);
  # `reference` = statistics of all 1797 digits (run.py computes them): the ADA paper
  # measures limited-data runs against all available training images.
  config.evals.fid = dict(
      type="fid", extractor="digits", num_samples=1000, guidance_scales=(1.0,), mode="none",
      every_steps=250, final=True, batch_size=250, reference="")
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.sample_every_steps = 1500
  return config
