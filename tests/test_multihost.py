"""The cross-process helpers of gandance_jax.multihost in 2 local processes (gloo): exact
gathers of any dtype, uneven and empty shares, and FID statistics merged across processes
equal to the statistics of all features in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gandance_jax import multihost
from gandance_jax.evaluation import fid as fid_lib
from tests import _mp_common as common

# Run by each process: process p holds rows [start, stop) of one fixed feature matrix.
WORKER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=pid)
import numpy as np
from gandance_jax import multihost
from gandance_jax.evaluation import fid as fid_lib

rng = np.random.default_rng(0)
feats = rng.normal(size=(7, 5)) * 1e3 + 1e6          # float64, large offset
start, stop = multihost.process_share(7)
acc = fid_lib.StreamingStatistics(5)
acc.update(feats[start:stop])
merged = acc.reduced_across_processes()
mu, sigma = merged.finalize()
# Uneven rows (process 1 has none) of a float64 and a uint8 array.
n_rows = 3 if pid == 0 else 0
rows = np.arange(n_rows * 4, dtype=np.float64).reshape(n_rows, 4) / 3
gathered = multihost.gather_rows(rows)
u8 = multihost.gather_rows(np.full((pid + 1, 3), 250 + pid, np.uint8))
flags = multihost.all_true(pid == 0), multihost.all_true(True)
try:
  multihost.gather_rows(np.zeros((2, 3 + pid)))
  mismatch = ""
except ValueError as e:
  mismatch = str(e)
json.dump(dict(share=[start, stop], count=merged.count, mu=mu.tolist(),
               sigma=sigma.tolist(), gathered=gathered.tolist(),
               gathered_dtype=str(gathered.dtype), u8=u8.tolist(), u8_dtype=str(u8.dtype),
               flags=flags, mismatch=mismatch), open(out, "w"))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  script = tmp / "worker.py"
  script.write_text(WORKER)
  port = common.free_port()
  env = common.subprocess_env(1)
  procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i),
                             str(tmp / f"out{i}.json")], cwd=common.REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return [json.load(open(tmp / f"out{i}.json")) for i in range(2)]


def test_shares_cover_the_items_once(results):
  assert [r["share"] for r in results] == [[0, 3], [3, 7]]
  for n in (0, 1, 5, 64, 1001):
    for count in (1, 2, 3, 8):
      shares = [multihost.process_share(n, p, count) for p in range(count)]
      assert shares[0][0] == 0 and shares[-1][1] == n
      assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
      assert max(b - a for a, b in shares) - min(b - a for a, b in shares) <= 1
  with pytest.raises(ValueError, match="process_index 2"):
    multihost.process_share(10, 2, 2)


def test_merged_statistics_equal_one_process(results):
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(7, 5)) * 1e3 + 1e6
  mu, sigma = fid_lib.feature_statistics(feats)
  for r in results:
    assert r["count"] == 7
    # float64 survives the exchange: a float32 path would be off by ~1e-1 at this offset.
    # float64 merge of 7 values ~1e6: the means round at ulp(1e6) = 1.2e-10 (1e-16 relative)
    # and sigma (~1e6) at ~ulp(1e6) * |deviation| (1e3), ~1e-13 relative; the bounds are lax.
    np.testing.assert_allclose(r["mu"], mu, rtol=1e-13)
    np.testing.assert_allclose(r["sigma"], sigma, rtol=1e-9)
  assert results[0]["mu"] == results[1]["mu"] and results[0]["sigma"] == results[1]["sigma"]


def test_gather_rows_exact_uneven_and_typed(results):
  expected = (np.arange(12, dtype=np.float64).reshape(3, 4) / 3).tolist()
  for r in results:
    assert r["gathered"] == expected and r["gathered_dtype"] == "float64"
    assert r["u8"] == [[250] * 3, [251] * 3, [251] * 3] and r["u8_dtype"] == "uint8"
    assert r["flags"] == [False, True]
    assert "trailing shape" in r["mismatch"] and "(3,)" in r["mismatch"]


def test_single_process_is_identity():
  x = np.arange(6, dtype=np.float64).reshape(3, 2)
  assert multihost.gather_rows(x) is x
  np.testing.assert_array_equal(multihost.allgather(x), x[None])
  assert multihost.all_true(True) and not multihost.all_true(False)
  acc = fid_lib.StreamingStatistics(2)
  acc.update(x)
  merged = acc.reduced_across_processes()
  np.testing.assert_array_equal(merged.finalize()[1], acc.finalize()[1])
