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


def random_variables(G, seed=0):
  """G's variables drawn with numpy from the distributions `G.init` uses, without tracing it.

  Weights N(0, 1) (std 100 for the lr-0.01 mapping layers, as G.init draws them), biases
  near their init (1 for affine layers) plus 0.1 N(0, 1), the real FIR filters, and non-zero
  noise strengths / w_avg / noise_const so that noise and truncation have visible effects.
  For tests, where compiling the init costs seconds on a CPU.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gandance_jax import layers  # pylint: disable=g-import-not-at-top
  from gandance_jax.networks import stylegan2  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(lambda k: stylegan2.init_generator(G, k), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    names = [getattr(p, "key", "") for p in path]
    if names[-1] == "resample_filter":
      return jnp.asarray(layers.setup_filter(G.resample_filter))
    if names[-1] == "bias":
      return jnp.asarray((1.0 if "affine" in names else 0.0)
                         + 0.1 * rng.standard_normal(s.shape), jnp.float32)
    std = 100.0 if "mapping_network" in names and names[-2].startswith("fc") else 1.0
    return jnp.asarray(std * rng.standard_normal(s.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)
