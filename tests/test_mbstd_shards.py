"""Minibatch-stddev groups formed per batch shard (discriminator.mbstd_shards): the same
function as grouping each block separately, no cross-device collectives when the shards are
the devices, and the same logits however the batch is placed."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import layers
from gandance_jax.train import sharding
from tests import _mp_common as common


def test_shards_group_each_block_separately():
  x = jax.random.normal(jax.random.key(0), (16, 4, 4, 6))
  whole = layers.minibatch_std(x, 4, 2, num_shards=1)
  # One shard: NVIDIA's grouping (member * N/G + group) of the whole batch.
  g = x.reshape(4, 4, 4, 4, 2, 3)
  want = jnp.sqrt(jnp.var(g, axis=0) + 1e-8).mean(axis=(1, 2, 4))  # [N/G, F]
  # A variance over 4 members, a sqrt and a mean of 16: <= ~25 roundings of positive O(1)
  # values, 25 eps/2 = 1.5e-6 relative (seen 1.3e-7); a wrong grouping is O(0.1).
  np.testing.assert_allclose(whole[:, 0, 0, 6:], jnp.tile(want, (4, 1)), rtol=1e-5)
  # Two shards = the two halves on their own.
  split = layers.minibatch_std(x, 4, 2, num_shards=2)
  halves = jnp.concatenate([layers.minibatch_std(x[:8], 4, 2),
                            layers.minibatch_std(x[8:], 4, 2)])
  # The same arithmetic on the same halves (seen exactly equal); another fusion could round
  # each positive statistic differently, 2 x 25 eps/2 = 3e-6 relative at most.
  np.testing.assert_allclose(split, halves, rtol=1e-5)
  assert not np.allclose(split, whole)  # a real change of groups, not a no-op
  with pytest.raises(ValueError, match="shards 3 must be >= 1 and divide the batch size 16"):
    layers.minibatch_std(x, 4, 2, num_shards=3)
  with pytest.raises(ValueError, match="group size 4 must divide the samples per shard 6"):
    layers.minibatch_std(x[:12], 4, 2, num_shards=2)


def test_batch_size_checks_name_the_field():
  mesh = sharding.make_mesh(1)
  hp = common.tiny_hparams(discriminator__mbstd_shards=3)
  with pytest.raises(ValueError, match="config.discriminator.mbstd_shards = 3 is invalid"):
    sharding.check_batch_size(hp, mesh)
  hp = common.tiny_hparams(discriminator__mbstd_shards=2, train__batch_size=12)
  with pytest.raises(ValueError, match="the 6 samples per minibatch-stddev shard"):
    sharding.check_batch_size(hp, mesh)


WORKER = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from gandance_jax.networks import stylegan2
mesh = jax.make_mesh((4,), ("data",))
out = {}
img = jax.random.normal(jax.random.key(1), (16, 16, 16, 3))
labels = jnp.arange(16) % 3
for shards in (1, 4):
  D = stylegan2.Discriminator(num_classes=3, resolution=16, img_channels=3, channel_base=64,
                              channel_max=16, mapping_layers=1, mbstd_group_size=4,
                              mbstd_shards=shards)
  d_vars = stylegan2.init_discriminator(D, jax.random.key(0))
  fn = lambda v, x, c: D.apply(v, x, c)
  local = jax.jit(fn)(d_vars, img, labels)
  sharded_fn = jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P("data")),
                                         NamedSharding(mesh, P("data"))))
  sharded = sharded_fn(d_vars, img, labels)
  text = sharded_fn.lower(d_vars, img, labels).compile().as_text()
  out[shards] = dict(local=np.asarray(local).tolist(), sharded=np.asarray(sharded).tolist(),
                     all_reduces=text.count("all-reduce("), devices=len(jax.devices()))
json.dump(out, sys.stdout)
"""


def test_device_local_groups_need_no_collectives_and_match():
  result = subprocess.run([sys.executable, "-c", WORKER], cwd=common.REPO,
                          env=common.subprocess_env(4), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout)
  for shards in ("1", "4"):
    assert out[shards]["devices"] == 4
    # The same logits whether the batch is on one device or split over four: D's 5 conv /
    # FC layers (fan-in <= 3 * 3 * 16 = 144) may be blocked differently per batch size and
    # the whole-batch groups' moments are summed across devices in arrival order, so each
    # layer's float32 sums reassociate: <= K eps = 1.7e-5 relative per layer at worst
    # (~sqrt(K) eps typically; seen 1.8e-7 at |logit| <= 0.7). 1e-4 relative (+1e-5 for a
    # logit that cancels near 0) covers 5 such layers; grouping per shard vs per batch changes
    # the logits by O(0.1) (asserted below).
    np.testing.assert_allclose(out[shards]["sharded"], out[shards]["local"], rtol=1e-4,
                               atol=1e-5)
  # Whole-batch groups span the 4 devices (member j, j + 4, ... of 16): D's forward needs
  # cross-device reductions; one group set per device needs none.
  assert out["1"]["all_reduces"] > 0
  assert out["4"]["all_reduces"] == 0
  assert not np.allclose(out["1"]["local"], out["4"]["local"])
