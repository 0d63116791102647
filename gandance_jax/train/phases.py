"""What every family's train step shares: its phases jitted over the mesh (state
replicated, the batch sharded over 'data', the state donated) and one call that runs the
phases due at a step, then `finish`.

step.TrainStep (StyleGAN2's lazy phases) and step_biggan.BigGANTrainStep (BigGAN's D steps
and G step) subclass `PhasedTrainStep`; each names its phases and says which run when.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gandance_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class PhasedTrainStep:
  """Jits `phase_names` of `fns` (each (state, batch) -> (state, metrics)) and `fns.finish`
  ((state) -> (state, metrics)) as attributes of the same names; `__call__` runs
  `phases_at(step)` then `finish`."""

  def __init__(self, fns: Any, mesh: Mesh, phase_names: tuple[str, ...]):
    self.fns = fns
    self.mesh = mesh
    rep = self.replicated = NamedSharding(mesh, P())
    data = self.batch_sharding = NamedSharding(mesh, P("data"))
    batch_shardings = {"image": data, "label": data}
    for name in phase_names:
      setattr(self, name, jax.jit(getattr(fns, name), in_shardings=(rep, batch_shardings),
                                  out_shardings=(rep, rep), donate_argnums=0))
    self.finish = jax.jit(fns.finish, in_shardings=(rep,), out_shardings=(rep, rep),
                          donate_argnums=0)

  def phases_at(self, step: int) -> list[str]:
    raise NotImplementedError

  def __call__(self, state: TrainState, batch: Batch, step: int
               ) -> tuple[TrainState, Metrics]:
    metrics: Metrics = {}
    for name in self.phases_at(step):
      phase: Callable = getattr(self, name)
      state, m = phase(state, batch)
      metrics.update(m)
    state, m = self.finish(state)
    metrics.update(m)
    return state, metrics
