"""The digits sweep on BigGAN (paper Fig. 6b analogue; CPU, four ~15-25 minute trainings).

  python launch/sweep.py --sweep=configs/sweeps/digits_biggan.py --outdir=docs/sweep_digits_biggan
  # reuse a finished run of configs/biggan_digits.py (p = 0.1, its default) for 'p0.1':
  python launch/sweep.py --sweep=configs/sweeps/digits_biggan.py:p01=/tmp/bg_digits \
      --outdir=docs/sweep_digits_biggan

Four training runs of configs/biggan_digits.py that differ only in the label-reset
probability p, then FID (digits-classifier features) vs guidance scale for training-free
GANdance with |C| in {2, 5, 10} and for the learned variant (Table 1), per p (Fig. 6b: every
scale, learned and training-free), and layer-wise schedules (Fig. 4), as
configs/sweeps/digits_mini.py does for StyleGAN2.

BigGAN's ws rows (networks/biggan.py) are [y, z_i] per slot: row 0 (resolution 4) feeds the
unconditional first linear layer, so its scale changes nothing; rows 1-3 condition the
blocks that output 8, 16 and 32. The layer-wise schedules are therefore over 8/16/32, with 4
set to the same value as 8 for readability. No truncation grid: BigGAN has no w_avg (psi
must be 1) and its truncated-normal z threshold is not a sweep cell field.
"""

import types

from gandance_jax import config_lib


def get_config(arg: str = "") -> types.SimpleNamespace:
  args = config_lib.parse_arg(arg, shrink=False, p01="")
  # A plain namespace rather than a ConfigDict: run overrides are keyed by dotted names.
  sweep = types.SimpleNamespace()
  sweep.base_config = "configs/biggan_digits.py"
  sweep.overrides = {}
  sweep.runs = {
      "p0": {"train.label_reset_prob": 0.0},
      "p0.1": {"train.label_reset_prob": 0.1},
      "p0.2": {"train.label_reset_prob": 0.2},
      "p0.5": {"train.label_reset_prob": 0.5},
  }
  if args.p01:  # an existing run of the base config (its label_reset_prob is 0.1)
    sweep.runs["p0.1"] = {"train.label_reset_prob": 0.1, "workdir": args.p01}
  sweep.eval = dict(extractor="digits", num_samples=2000, batch_size=250, seed=0)
  scales = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
  sweep.grids = {
      "table1_training_free": dict(runs=["p0.1"], mode="training_free",
                                   num_opposite=[2, 5, 10], scales=scales),
      "table1_learned": dict(runs=["p0.1"], mode="learned", scales=scales),
      # Fig. 6b: FID vs guidance scale, one curve per p. Learned guidance at p = 0 steers
      # away from an empty-class embedding that was never trained (its initial values), so
      # the same runs are also guided training-free (|C| = 10), which needs no empty class.
      "reset_p": dict(runs=["p0", "p0.1", "p0.2", "p0.5"], mode="learned", scales=scales),
      "reset_p_training_free": dict(runs=["p0", "p0.1", "p0.2", "p0.5"],
                                    mode="training_free", num_opposite=[10], scales=scales),
      "layerwise": dict(runs=["p0.1"], mode="learned", schedules={
          "all 1.4": "4:1.4,8:1.4,16:1.4,32:1.4",
          "<=16: 1.6, 32: 1.0": "4:1.6,8:1.6,16:1.6,32:1.0",
          "8: 1.0, >=16: 1.6": "4:1.0,8:1.0,16:1.6,32:1.6",
          "<=16: 1.4, 32: 1.2": "4:1.4,8:1.4,16:1.4,32:1.2",
      }),
  }
  if args.shrink:  # a few minutes on 2 cores (BigGAN's compile dominates): for checks
    sweep.base_config = "configs/biggan_digits.py:shrink"
    sweep.runs = {"p0.2": {"train.label_reset_prob": 0.2}}
    sweep.eval = dict(extractor="digits", num_samples=40, batch_size=20, seed=0)
    sweep.grids = {
        "table1_learned": dict(runs=["p0.2"], mode="learned", scales=[1.0, 1.5]),
        "layerwise": dict(runs=["p0.2"], mode="learned",
                          schedules={"low": "4:1.5,8:1.5,16:1.0,32:1.0"}),
    }
  return sweep
