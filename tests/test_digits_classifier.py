"""The digits classifier: trained at first use, cached, accurate; the digits FID path."""

import warnings

import numpy as np
import pytest

from gandance_jax.data.digits import load_digits
from gandance_jax.evaluation import digits_classifier as dc
from gandance_jax.evaluation import features, fid


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Trains once into a fresh cache folder, so the test never depends on ~/.cache."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("GANDANCE_CACHE", str(tmp_path_factory.mktemp("gandance_cache")))
    dc._load_or_train.cache_clear()
    try:
      yield dc.load_or_train(16)
    finally:
      dc._load_or_train.cache_clear()


def test_heldout_accuracy_and_cache(trained):
  variables, acc = trained
  assert acc > 0.9, f"held-out accuracy {acc}"
  path = dc.cache_path(16)
  assert path.is_file() and not list(path.parent.glob("*.tmp"))
  # A second process (no in-memory cache) reads the same weights back from the file.
  dc._load_or_train.cache_clear()
  again, acc2 = dc.load_or_train(16)
  assert acc2 == acc
  np.testing.assert_array_equal(again["params"]["fc2"]["kernel"],
                                variables["params"]["fc2"]["kernel"])


def test_class_accuracy_of_real_digits(trained):
  _, _, x_te, y_te = dc.heldout_split(16)
  assert dc.class_accuracy(x_te, y_te) > 0.9
  # Other resolutions are resized to the classifier's.
  images8, labels = load_digits(resolution=8)
  assert dc.class_accuracy(images8[:300], labels[:300]) > 0.9


def test_digits_fid_path(trained):
  ext = dc.get_extractor(16)
  assert (ext.dim, ext.num_classes, ext.channels, ext.convention) == (128, 10, 1, "digits_r16")
  images, labels = load_digits(resolution=16)
  real_a = fid.compute_statistics(ext, images[0::2], batch_size=128)
  real_b = fid.compute_statistics(ext, images[1::2], batch_size=128)
  noise = np.random.default_rng(0).uniform(-1, 1, (300, 16, 16, 1)).astype(np.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # N = 300 > dim + 1: no small-N warning
    fake = fid.compute_statistics(ext, noise, batch_size=128)
  real_real = real_a.frechet_distance(real_b)
  real_noise = real_a.frechet_distance(fake)
  assert real_real < 0.1 * real_noise, (real_real, real_noise)
  # The extractor's logits give classifier metrics of labelled images.
  feats, logits = features.extract(ext, images[:100], batch_size=64)
  assert feats.shape == (100, 128) and (feats >= 0).all()  # post-ReLU features
  assert (np.argmax(logits, 1) == labels[:100]).mean() > 0.9
  with pytest.raises(ValueError, match="wants 1 channels, images have 3"):
    features.extract(ext, np.zeros((2, 16, 16, 3), np.float32))
  with pytest.warns(UserWarning, match="N=50 .* strongly biased"):
    fid.compute_statistics(ext, images[:50])
