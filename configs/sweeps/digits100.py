"""The paper's sweeps on digits100, the many-class miniature (docs/sweep_digits100/).

  python launch/sweep.py --sweep=configs/sweeps/digits100.py --outdir=docs/sweep_digits100

Four training runs of configs/digits100.py (10 digits x 10 styles, 100 classes): the
label-reset probability p in {0, 0.1, 0.2} (paper Fig. 6) and a second training seed of
p = 0.1, the run every other grid uses, so the reading can tell training noise from an
effect. Then FID (digits100-classifier features) and the class / digit / style accuracy of
every cell: training-free GANdance with |C| in {5, 20, 100} and the learned variant vs the
guidance scale (Table 1, Table S1), truncation psi (Table 3), p (Fig. 6), layer-wise
schedules (Fig. 4), and the seed-noise cells.
"""

import types

from gandance_jax import config_lib


def get_config(arg: str = "") -> types.SimpleNamespace:
  # A plain namespace rather than a ConfigDict: run overrides are keyed by dotted names.
  sweep = types.SimpleNamespace()
  sweep.base_config = "configs/digits100.py"
  # The config's full training: 5000 steps of 32 (160 kimg, ~9 epochs). The first version of
  # this sweep stopped at 2500 steps, where the digit was at chance (its results are kept in
  # docs/sweep_digits100/steps2500/); the runs resume from those checkpoints. No
  # end-of-training evaluation: the sweep evaluates every cell itself.
  sweep.overrides = {"evals.class_accuracy.final": False}
  sweep.runs = {
      "p0": {"train.label_reset_prob": 0.0},
      "p0.1": {"train.label_reset_prob": 0.1},
      "p0.2": {"train.label_reset_prob": 0.2},
      # The same run as p0.1 under another root key (init, z, reset draws, augmentation) and
      # another batch order: the training noise of every p0.1 cell.
      "p0.1_seed1": {"train.label_reset_prob": 0.1, "seed": 1, "data.seed": 1},
  }
  # 10000 samples = 100 per class, labels balanced over the 100 classes; the same N and seed
  # in every cell, so the cells are comparable (the absolute FID carries the bias of N; the
  # reference is all 17,970 dataset images). A cell took 4.6-49 s here (median 6-13 s), the
  # training runs are what costs.
  sweep.eval = dict(extractor="digits100", num_samples=10000, batch_size=500, seed=0,
                    labels="balanced")
  scales = [1.0, 1.25, 1.5, 1.75, 2.0]
  sweep.grids = {
      "table1_training_free": dict(runs=["p0.1"], mode="training_free",
                                   num_opposite=[5, 20, 100], scales=scales),
      "table1_learned": dict(runs=["p0.1"], mode="learned", scales=scales),
      "psi_learned": dict(runs=["p0.1"], mode="learned", scales=[1.0, 1.5], psi=[0.8, 1.0]),
      "reset_p": dict(runs=["p0", "p0.1", "p0.2"], mode="learned", scales=[1.0, 1.5]),
      # Training noise: the second seed of p0.1 in the unguided cell and a guided cell of
      # each mode (the first seed's are in the table1 grids).
      "seed_learned": dict(runs=["p0.1_seed1"], mode="learned", scales=[1.0, 1.5]),
      "seed_training_free": dict(runs=["p0.1_seed1"], mode="training_free",
                                 num_opposite=[20], scales=[1.5]),
      # Sampling noise: the same three cells of p0.1 drawn from another eval seed (other z,
      # noise and opposite sets; the labels are the same).
      "seed_eval_learned": dict(runs=["p0.1"], mode="learned", scales=[1.0, 1.5], eval_seed=1),
      "seed_eval_training_free": dict(runs=["p0.1"], mode="training_free", num_opposite=[20],
                                      scales=[1.5], eval_seed=1),
      # 16x16 has w rows at 4, 8 and 16: the coarse layers (shape, layout) vs the finest
      # (where colour and stroke width are drawn).
      "layerwise": dict(runs=["p0.1"], mode="learned", schedules={
          "all 1.5": "4:1.5,8:1.5,16:1.5",
          "<=8: 1.5, 16: 1.0": "4:1.5,8:1.5,16:1.0",
          "<=8: 1.0, 16: 1.5": "4:1.0,8:1.0,16:1.5",
          "<=8: 1.5, 16: 1.25": "4:1.5,8:1.5,16:1.25",
      }),
  }
  if config_lib.parse_arg(arg, shrink=False).shrink:  # seconds-long version for tests
    sweep.base_config = "configs/digits100.py:shrink"
    sweep.overrides = {"evals.class_accuracy.final": False}
    sweep.runs = {"p0.2": {"train.label_reset_prob": 0.2}}
    sweep.eval = dict(extractor="digits100", num_samples=100, batch_size=50, seed=0,
                      labels="balanced")
    sweep.grids = {
        "table1_training_free": dict(runs=["p0.2"], mode="training_free",
                                     num_opposite=[100], scales=[1.5]),
        "table1_learned": dict(runs=["p0.2"], mode="learned", scales=[1.0, 1.5]),
        "layerwise": dict(runs=["p0.2"], mode="learned",
                          schedules={"low": "4:1.5,8:1.5,16:1.0"}),
    }
  return sweep
