"""Miniature reproduction of the paper's sweeps on the embedded digits (CPU, ~1 hour).

  python launch/sweep.py --sweep=configs/sweeps/digits_mini.py --outdir=docs/sweep_digits

Four training runs of configs/digits.py that differ only in the label-reset probability p
(paper Fig. 6), then: FID (digits-classifier features) vs guidance scale for training-free
GANdance with |C| in {2, 5, 10} and for the learned variant (Table 1), vs truncation psi
(Table 3), vs p (Fig. 6), layer-wise schedules (Fig. 4); the classifier score (Table S1)
comes with every cell.
"""

import types

from gandance_jax import config_lib


def get_config(arg: str = "") -> types.SimpleNamespace:
  # A plain namespace rather than a ConfigDict: run overrides are keyed by dotted names.
  sweep = types.SimpleNamespace()
  sweep.base_config = "configs/digits.py"
  sweep.overrides = {}
  sweep.runs = {
      "p0": {"train.label_reset_prob": 0.0},
      "p0.1": {"train.label_reset_prob": 0.1},
      "p0.2": {"train.label_reset_prob": 0.2},
      "p0.5": {"train.label_reset_prob": 0.5},
  }
  sweep.eval = dict(extractor="digits", num_samples=2000, batch_size=250, seed=0)
  scales = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
  sweep.grids = {
      "table1_training_free": dict(runs=["p0.1"], mode="training_free",
                                   num_opposite=[2, 5, 10], scales=scales),
      "table1_learned": dict(runs=["p0.1"], mode="learned", scales=scales),
      "psi_learned": dict(runs=["p0.1"], mode="learned", scales=[1.0, 1.4],
                          psi=[0.6, 0.8, 1.0]),
      "reset_p": dict(runs=["p0", "p0.1", "p0.2", "p0.5"], mode="learned",
                      scales=[1.0, 1.4]),
      "layerwise": dict(runs=["p0.1"], mode="learned", schedules={
          "all 1.4": "4:1.4,8:1.4,16:1.4",
          "<=8: 1.6, 16: 1.0": "4:1.6,8:1.6,16:1.0",
          "<=8: 1.0, 16: 1.6": "4:1.0,8:1.0,16:1.6",
          "<=8: 1.4, 16: 1.2": "4:1.4,8:1.4,16:1.2",
      }),
  }
  if config_lib.parse_arg(arg, shrink=False).shrink:  # seconds-long version for tests
    sweep.base_config = "configs/digits.py:shrink"
    sweep.runs = {"p0.2": {"train.label_reset_prob": 0.2}}
    sweep.eval = dict(extractor="digits", num_samples=40, batch_size=20, seed=0)
    sweep.grids = {
        "table1_learned": dict(runs=["p0.2"], mode="learned", scales=[1.0, 1.5]),
        "layerwise": dict(runs=["p0.2"], mode="learned",
                          schedules={"low": "4:1.5,8:1.5,16:1.0"}),
    }
  return sweep
