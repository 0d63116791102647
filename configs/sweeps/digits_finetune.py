"""Learning-based GANdance by fine-tuning a pre-trained conditional GAN (paper Sec. 3.3's
remark) on the embedded digits (CPU, ~20 minutes):

  python launch/sweep.py --sweep=configs/sweeps/digits_finetune.py --outdir=docs/finetune_digits

'pre' is configs/digits.py trained without the empty class (p = 0, 2000 steps); 'ft' starts
from it with the empty class added (train.init_from, the new row = mean of the class rows)
and trains 500 more steps with label reset p = 0.1; 'cont' is the control, the same 500
steps from 'pre' without the empty class. FID / classifier metrics vs guidance
scale: training-free on 'pre' (the only guidance it has), learned and training-free on 'ft'.
Same evaluation protocol as configs/sweeps/digits_mini.py (2000 samples, seed 0), so the
rows compare with docs/sweep_digits (p0.1 there: the empty class trained from scratch).
"""

import types

from gandance_jax import config_lib


def get_config(arg: str = "") -> types.SimpleNamespace:
  sweep = types.SimpleNamespace()
  sweep.base_config = "configs/digits.py"
  sweep.overrides = {}
  no_empty = {"generator.empty_class": False, "discriminator.empty_class": False,
              "train.label_reset_prob": 0.0, "sample.mode": "training_free"}
  sweep.runs = {
      "pre": dict(no_empty),
      "ft": {"train.init_from": "{outdir}/runs/pre", "train.label_reset_prob": 0.1,
             "train.total_kimg": 8.0},
      # Control: the same 500 more steps (fresh Adam) without the empty class or reset.
      "cont": {**no_empty, "train.init_from": "{outdir}/runs/pre", "train.total_kimg": 8.0},
  }
  sweep.eval = dict(extractor="digits", num_samples=2000, batch_size=250, seed=0)
  scales = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
  sweep.grids = {
      "pre_training_free": dict(runs=["pre"], mode="training_free", num_opposite=[10],
                                scales=scales),
      "ft_learned": dict(runs=["ft"], mode="learned", scales=scales),
      "ft_training_free": dict(runs=["ft"], mode="training_free", num_opposite=[10],
                               scales=scales),
      "cont_training_free": dict(runs=["cont"], mode="training_free", num_opposite=[10],
                                 scales=scales),
  }
  if config_lib.parse_arg(arg, shrink=False).shrink:  # seconds-long version for tests
    sweep.base_config = "configs/digits.py:shrink"
    sweep.runs["ft"]["train.total_kimg"] = 0.016
    sweep.eval = dict(extractor="digits", num_samples=40, batch_size=20, seed=0)
    sweep.grids = {"ft_learned": dict(runs=["ft"], mode="learned", scales=[1.0, 1.5])}
  return sweep
