"""Shared pytest fixtures and paths."""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = (REPO_ROOT / ".." / "shared" / "golden").resolve()
TEST_DATA_DIR = REPO_ROOT / "tests" / "data"

# Keep TensorFlow (used by tfds input) quiet and off any GPU in tests.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def golden_path(*parts: str) -> pathlib.Path:
  """Path under ../shared/golden; skips the test (naming the path) if it is missing."""
  path = GOLDEN_DIR.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"golden reference data not found at {path}")
  return path


def random_vars(module, *args, seed=0):
  """Variables of `module` with N(0, 1) leaves, from eval_shape (no init compile: on CPU
  the jitted init costs seconds of compilation, a test only needs some weights)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)
