"""Mesh, shardings, multi-process start-up and global batches.

One 1-D mesh with axis 'data' over all devices of all processes (pjit style): the train state
is replicated (`P()`), batches are split over 'data' (`P('data')`). Each process feeds only
its share of a batch; `jax.make_array_from_process_local_data` assembles the global array.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from gandance_jax import multihost
from gandance_jax.data import prefetch_to_device
from gandance_jax.train.hparams import HParams


Batch = dict[str, Any]


def launched_with_several_processes() -> bool:
  """True when a launcher started several processes (GANDANCE_DISTRIBUTED=1 from
  launch/slurm.sbatch or launch/tpu_pod.sh, or SLURM / Open MPI / multi-host TPU variables)."""
  def count(var: str) -> int:
    try:
      return int(os.environ.get(var, "1"))
    except ValueError:
      return 1
  if os.environ.get("GANDANCE_DISTRIBUTED", "") not in ("", "0"):  # set by launch/*.sh
    return True
  return (count("SLURM_NTASKS") > 1 or count("OMPI_COMM_WORLD_SIZE") > 1 or
          "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or
          bool(os.environ.get("JAX_COORDINATOR_ADDRESS")))


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` for multi-process runs; returns whether it did.

  Explicit arguments (as in the multi-process tests and launch/local.sh) win; otherwise
  JAX's cluster auto-detection is used when a launcher started several processes. On CPU
  the cross-process collectives go through gloo.
  """
  explicit = num_processes is not None and num_processes > 1
  if not explicit and not launched_with_several_processes():
    return False
  # Must precede backend start-up; ignored by GPU/TPU backends.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def make_mesh(num_devices: int = -1) -> Mesh:
  """A 1-D mesh with axis 'data' over `num_devices` devices (-1 = all, of all processes)."""
  devices = jax.devices()
  n = len(devices) if num_devices == -1 else int(num_devices)
  if n > len(devices) or n < 1:
    raise ValueError(f"config.mesh.data = {num_devices} is invalid: {len(devices)} devices "
                     "exist (-1 = all)")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"config.mesh.data = {num_devices} is invalid: multi-process runs use "
                     f"all {len(devices)} devices (-1)")
  # Auto axes: GSPMD propagates the shardings (the state is replicated, batches split).
  return jax.make_mesh((n,), ("data",), devices=devices[:n],
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(hp: HParams, mesh: Mesh) -> None:
  """Raises ValueError naming config.train.batch_size if it cannot be split evenly."""
  b = int(hp.train.batch_size)
  n = int(mesh.devices.size)
  if b % n:
    raise ValueError(f"config.train.batch_size = {b} is invalid: must be a multiple of the "
                     f"number of devices in the mesh ({n})")
  if b % jax.process_count():
    raise ValueError(f"config.train.batch_size = {b} is invalid: must be a multiple of the "
                     f"process count ({jax.process_count()})")
  shards = int(hp.discriminator.get("mbstd_shards", 1))
  if shards < 1 or b % shards:
    raise ValueError(f"config.discriminator.mbstd_shards = {shards} is invalid: must be >= 1 "
                     f"and divide config.train.batch_size = {b}")
  g = hp.discriminator.get("mbstd_group_size")
  per_shard = b // shards
  if g is not None and per_shard % min(int(g), per_shard):
    raise ValueError(f"config.train.batch_size = {b} is invalid: the {per_shard} samples per "
                     f"minibatch-stddev shard must be a multiple of "
                     f"discriminator.mbstd_group_size = {g}")
  if shards > 1 and shards % n and n % shards:
    logging.warning("discriminator.mbstd_shards = %d does not align with the %d devices: "
                    "minibatch-stddev groups will span devices", shards, n)


def global_batches(local_batches: Iterable[Batch], sharding: NamedSharding,
                   prefetch: int = 2) -> Iterator[Batch]:
  """Global batches, `prefetch` ahead so host->device copies overlap the step."""
  return prefetch_to_device(local_batches, prefetch, sharding)


def fetch(x: jax.Array) -> np.ndarray:
  """A replicated (possibly multi-process) array -> numpy, from this process's copy."""
  return multihost.to_host(x)
