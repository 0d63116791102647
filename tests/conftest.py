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
