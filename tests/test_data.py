"""Tests of the input pipelines: factory, in-memory sources, npz / folder, tfds, device feed."""

from __future__ import annotations

import itertools
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from gandance_jax import config_lib, data
from gandance_jax.data import base, folder


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


# ----------------------------------------------------------------------------- package


def test_import_does_not_load_tensorflow():
  code = ("import sys, gandance_jax.data; "
          "sys.exit(int('tensorflow' in sys.modules or 'jax' in sys.modules))")
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------- factory


@pytest.mark.parametrize("config, match", [
    ({"name": "mnist"}, r"data\.name must be one of .*'digits'.*'cifar10'"),
    ({"name": "digits", "resolution": 12}, r"data\.resolution must be a power of two"),
    ({"name": "digits", "resolution": "16"}, r"data\.resolution must be an int"),
    ({"name": "digits", "seed": -1}, r"data\.seed must be a non-negative int"),
    ({"name": "digits", "xflip": "yes"}, r"data\.xflip must be True or False"),
    ({"name": "npz"}, r"data\.path must name the dataset"),
    ({"name": "folder", "path": ""}, r"data\.path must name the dataset"),
    ({"name": "npz", "path": "/nonexistent/x.npz"}, r"data\.path=.*does not exist"),
    ({"name": "mixture_8gaussians", "xflip": True}, r"data\.xflip must be False"),
    ({"name": "cifar10", "shuffle_buffer": 0}, r"data\.shuffle_buffer must be a positive"),
])
def test_make_source_rejects_bad_config(config, match):
  with pytest.raises(ValueError, match=match):
    data.make_source(config)


def test_make_source_accepts_config_dict():
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict({"name": "digits", "resolution": 8, "path": "",
                                   "xflip": False, "seed": 0, "data_dir": None})
  src = data.make_source(cfg)
  assert isinstance(src, data.ArraySource)
  assert (src.num_classes, src.resolution, src.channels, src.num_examples) == (10, 8, 1, 1797)
  assert src.example_shape == (8, 8, 1)


def test_make_source_tfds_is_lazy_and_validated():
  src = data.make_source({"name": "imagenet_resized/64x64", "resolution": None, "seed": 1})
  assert isinstance(src, data.TfdsSource)
  assert (src.num_classes, src.resolution, src.channels) == (1000, 64, 3)
  assert src.num_examples == 1_281_167


# ----------------------------------------------------------------------------- digits source


@pytest.fixture(scope="module")
def digits_source():
  return data.make_source({"name": "digits", "resolution": 8, "xflip": True, "seed": 7})


def test_digits_batch_shapes_and_ranges(digits_source):
  batch = next(digits_source.batches(64, process_index=0, process_count=1))
  assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  assert batch["label"].min() >= 0 and batch["label"].max() < 10
  batch["image"][...] = 0.0  # batches must be writable copies, not views of the cache
  assert data.load_digits(8)[0].max() == 1.0


def test_resume_equals_tail_of_uninterrupted_run(digits_source):
  # 1797 examples, B = 96: steps 17..21 straddle the epoch boundary at position 1797.
  full = _take(digits_source.batches(96, 0, process_index=0, process_count=1), 22)
  resumed = _take(digits_source.batches(96, 17, process_index=0, process_count=1), 5)
  _assert_batches_equal(full[17:], resumed)
  # A fresh source object (as after a restart) gives the same stream.
  again = data.make_source({"name": "digits", "resolution": 8, "xflip": True, "seed": 7})
  _assert_batches_equal(full[17:],
                        _take(again.batches(96, 17, process_index=0, process_count=1), 5))


def test_two_processes_concatenate_to_global_batch(digits_source):
  for step in (0, 18, 40):
    global_batch = digits_source.global_batch_at(step, 96)
    shards = [next(digits_source.batches(96, step, process_index=p, process_count=2))
              for p in range(2)]
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]),
                                    global_batch[key])
    one_process = next(digits_source.batches(96, step, process_index=0, process_count=1))
    np.testing.assert_array_equal(one_process["image"], global_batch["image"])


def test_epochs_are_permutations_and_seed_matters(digits_source):
  n = digits_source.num_examples
  # With B dividing nothing in particular, positions [0, N) are one full permutation.
  idx = np.concatenate([digits_source.indices_at(s, 599) for s in range(3)])
  assert np.array_equal(np.sort(idx), np.arange(n))
  idx2 = np.concatenate([digits_source.indices_at(s, 599) for s in range(3, 6)])
  assert np.array_equal(np.sort(idx2), np.arange(n))
  assert not np.array_equal(idx, idx2)  # a new order every epoch
  other = data.make_source({"name": "digits", "resolution": 8, "seed": 8})
  assert not np.array_equal(other.indices_at(0, 64), digits_source.indices_at(0, 64))


def test_xflip_mirrors_about_half(digits_source):
  plain = data.make_source({"name": "digits", "resolution": 8, "xflip": False, "seed": 7})
  a, b = digits_source.global_batch_at(3, 256), plain.global_batch_at(3, 256)
  np.testing.assert_array_equal(a["label"], b["label"])  # same examples
  same = np.all(a["image"] == b["image"], axis=(1, 2, 3))
  mirrored = np.all(a["image"] == b["image"][:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  flipped = mirrored & ~same
  assert 0.3 < flipped.mean() < 0.7


def test_batches_validates_layout(digits_source):
  with pytest.raises(ValueError, match=r"global_batch_size=10 must be a positive multiple"):
    digits_source.batches(10, process_index=0, process_count=4)
  with pytest.raises(ValueError, match=r"process_index=2 is not in \[0, 2\)"):
    digits_source.batches(8, process_index=2, process_count=2)
  with pytest.raises(ValueError, match=r"start_step must be a non-negative int"):
    digits_source.batches(8, -1, process_index=0, process_count=1)


def test_batches_defaults_to_jax_process():
  src = data.make_source({"name": "digits", "resolution": 8, "seed": 0})
  batch = next(src.batches(16))
  np.testing.assert_array_equal(batch["label"], src.global_batch_at(0, 16)["label"])


# ----------------------------------------------------------------------------- data.max_images


def test_max_images_is_a_fixed_stratified_subset():
  full = data.make_source({"name": "digits", "resolution": 8, "seed": 0})
  src = data.make_source({"name": "digits", "resolution": 8, "seed": 3, "max_images": 300})
  assert src.num_examples == 300
  # 1797 digits with 174..183 images per class: 300 * n_c / 1797 is 29.05..30.55, so every
  # class gets 29..31 and the counts differ from the exact quotas by less than one image.
  counts = np.bincount(src.labels, minlength=10)
  quotas = 300 * np.bincount(full.labels, minlength=10) / full.num_examples
  assert counts.sum() == 300 and np.all(np.abs(counts - quotas) < 1), (counts, quotas)
  # The images are training images, each once: match every subset image to the full set.
  keep = base.stratified_subset(full.labels, 300, num_classes=10)
  assert len(np.unique(keep)) == 300
  np.testing.assert_array_equal(src.images, full.images[keep])
  np.testing.assert_array_equal(src.labels, full.labels[keep])
  # The same images whatever data.seed (it only reorders the batches) ...
  other = data.make_source({"name": "digits", "resolution": 8, "seed": 4, "max_images": 300})
  np.testing.assert_array_equal(other.images, src.images)
  assert not np.array_equal(other.indices_at(0, 64), src.indices_at(0, 64))
  # ... while the subset seed picks others, and a smaller cut keeps the balance too.
  assert not np.array_equal(base.stratified_subset(full.labels, 300, 10, seed=1), keep)
  assert np.bincount(full.labels[base.stratified_subset(full.labels, 10, 10)],
                     minlength=10).tolist() == [1] * 10
  # Largest remainders: quotas 1.5 / 0.5 / 1.0 of 3 from 6 labels (3, 1, 2) -> 2, 0, 1 (the
  # tie between classes 0 and 1 at remainder 0.5 goes to the lower id).
  small = base.stratified_subset(np.array([0, 0, 0, 1, 2, 2]), 3, 3)
  assert np.bincount(np.array([0, 0, 0, 1, 2, 2])[small], minlength=3).tolist() == [2, 0, 1]
  assert data.make_source({"name": "digits", "resolution": 8, "max_images": 0}
                          ).num_examples == full.num_examples


@pytest.mark.parametrize("cfg, message", [
    ({"name": "digits", "max_images": 1798}, r"data\.max_images must be an int in \[1, 1797\]"),
    ({"name": "digits", "max_images": -1}, r"data\.max_images must be an int"),
    ({"name": "digits", "max_images": 2.5}, r"data\.max_images must be an int"),
    ({"name": "npz", "path": "x.npz", "max_images": 10},
     r"data\.max_images = 10 is supported for data\.name='digits' only"),
])
def test_max_images_errors_name_the_field(cfg, message):
  with pytest.raises(ValueError, match=message):
    data.make_source(cfg)


@pytest.mark.parametrize("name, value, message", [
    ("digits", 1798, r"config\.data\.max_images = 1798 is invalid: must be <= the 1797"),
    ("digits", -5, r"config\.data\.max_images = -5 is invalid: must be an integer >= 0"),
    ("cifar10", 300, r"config\.data\.max_images = 300 .*'digits' only"),
])
def test_config_validates_max_images(name, value, message):
  config = config_lib.base_config()
  config.data.name = name
  config.data.max_images = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate_config(config)


# ----------------------------------------------------------------------------- npz


def _write_npz(path, images, labels=None):
  if labels is None:
    np.savez(path, images)
  else:
    np.savez(path, images, labels)
  return str(path)


def test_npz_source_roundtrip_and_conversion(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
  labels = np.arange(20) % 4
  path = _write_npz(tmp_path / "d.npz", images, labels)
  src = data.make_source({"name": "npz", "path": path, "seed": 1})
  assert (src.num_classes, src.resolution, src.channels, src.num_examples) == (4, 8, 3, 20)
  batch = src.global_batch_at(0, 20)  # one whole epoch, in permuted order
  idx = src.indices_at(0, 20)
  np.testing.assert_array_equal(batch["label"], labels[idx])
  # float32 u / 127.5 - 1 against float64: <= 2 roundings of values in [-1, 1] (1.2e-7); an
  # image of another index differs by >= 1/127.5.
  np.testing.assert_allclose(batch["image"], images[idx] / 127.5 - 1.0, atol=1e-6)
  assert batch["image"].dtype == np.float32

  # Down-sizing and channel conversion.
  grey = data.make_source({"name": "npz", "path": path, "resolution": 4, "channels": 1})
  assert grey.example_shape == (4, 4, 1) and grey.images.dtype == np.uint8
  # Explicit num_classes larger than max label + 1 is kept.
  assert data.make_source({"name": "npz", "path": path, "num_classes": 6}).num_classes == 6


def test_npz_resize_of_constant_image_is_constant(tmp_path):
  images = np.full((2, 16, 16, 1), 200, np.uint8)
  path = _write_npz(tmp_path / "c.npz", images, np.array([0, 1]))
  out, labels = folder.load_npz(path, resolution=4)
  assert out.shape == (2, 4, 4, 1) and np.all(out == 200)
  assert labels.dtype == np.int32


@pytest.mark.parametrize("kind, match", [
    ("float", r"arr_0 must be uint8"),
    ("no_labels", r"missing arr_1"),
    ("neg_label", r"labels out of range"),
    ("len_mismatch", r"arr_1 must be labels \[4\]"),
    ("not_pow2", r"image size must be a power of two"),
    ("non_square", r"not square; set data\.resolution"),
])
def test_npz_errors(tmp_path, kind, match):
  images = np.zeros((4, 8, 8, 3), np.uint8)
  labels = np.array([0, 1, 2, 3])
  if kind == "float":
    images = images.astype(np.float32)
  elif kind == "no_labels":
    labels = None
  elif kind == "neg_label":
    labels = np.array([0, -1, 2, 3])
  elif kind == "len_mismatch":
    labels = np.array([0, 1, 2])
  elif kind == "not_pow2":
    images = np.zeros((4, 12, 12, 3), np.uint8)
  elif kind == "non_square":
    images = np.zeros((4, 8, 16, 3), np.uint8)
  path = _write_npz(tmp_path / "bad.npz", images, labels)
  with pytest.raises(ValueError, match=match):
    folder.load_npz(path)


def test_npz_label_out_of_range_for_num_classes(tmp_path):
  path = _write_npz(tmp_path / "l.npz", np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 1, 5]))
  with pytest.raises(ValueError, match=r"out of range for data\.num_classes=3"):
    data.make_source({"name": "npz", "path": path, "num_classes": 3})
  with pytest.raises(ValueError, match=r"data\.resolution must be a power of two"):
    data.make_source({"name": "npz", "path": path, "resolution": 6})


# ----------------------------------------------------------------------------- folder


def _write_image(path, size, colour, mode="RGB"):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, colour).save(path)


def test_folder_source(tmp_path):
  root = tmp_path / "imgs"
  # Class names sort as ['bird', 'cat', 'dog'] -> ids 0, 1, 2.
  _write_image(root / "dog" / "a.png", (8, 8), (0, 0, 255))
  _write_image(root / "dog" / "b.JPG", (8, 8), (0, 0, 255))
  _write_image(root / "cat" / "a.png", (8, 8), (255, 0, 0))
  _write_image(root / "bird" / "x.jpeg", (8, 8), (0, 255, 0))
  (root / "cat" / "notes.txt").write_text("ignored")
  src = data.make_source({"name": "folder", "path": str(root), "seed": 0})
  assert src.class_names == ("bird", "cat", "dog")
  assert (src.num_classes, src.resolution, src.channels, src.num_examples) == (3, 8, 3, 4)
  np.testing.assert_array_equal(np.sort(src.labels), [0, 1, 2, 2])
  batch = src.global_batch_at(0, 4)
  for image, label in zip(batch["image"], batch["label"]):
    dominant = int(np.argmax(image.mean(axis=(0, 1))))  # green, red, blue channel
    assert dominant == {0: 1, 1: 0, 2: 2}[int(label)]


def test_folder_resize_crop_and_grey(tmp_path):
  root = tmp_path / "imgs"
  _write_image(root / "a" / "0.png", (32, 16), 100, mode="L")  # non-square, grey
  _write_image(root / "b" / "0.png", (8, 8), 50, mode="L")
  images, labels, names = folder.load_image_folder(root, resolution=8)
  assert images.shape == (2, 8, 8, 1) and names == ("a", "b")
  assert np.all(images[0] == 100) and np.all(images[1] == 50)
  np.testing.assert_array_equal(labels, [0, 1])
  rgb, _, _ = folder.load_image_folder(root, resolution=4, channels=3)
  assert rgb.shape == (2, 4, 4, 3) and np.all(rgb[0] == 100)


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match=r"does not exist"):
    folder.load_image_folder(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"has no class sub-folders"):
    folder.load_image_folder(tmp_path / "empty")
  (tmp_path / "noimg" / "cls").mkdir(parents=True)
  with pytest.raises(ValueError, match=r"holds no .* images"):
    folder.load_image_folder(tmp_path / "noimg")
  mixed = tmp_path / "mixed"
  _write_image(mixed / "a" / "0.png", (8, 8), (1, 2, 3))
  _write_image(mixed / "b" / "0.png", (16, 16), (1, 2, 3))
  with pytest.raises(ValueError, match=r"different sizes .*set data\.resolution"):
    folder.load_image_folder(mixed)
  assert folder.load_image_folder(mixed, resolution=8)[0].shape == (2, 8, 8, 3)
  with pytest.raises(ValueError, match=r"data\.resolution must be a power of two"):
    folder.load_image_folder(mixed, resolution=10)
  (mixed / "b" / "broken.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"cannot read image"):
    folder.load_image_folder(mixed, resolution=8)
  two = tmp_path / "two"
  _write_image(two / "a" / "0.png", (8, 8), (1, 2, 3))
  _write_image(two / "b" / "0.png", (8, 8), (1, 2, 3))
  with pytest.raises(ValueError, match=r"num_classes=3 but .* has 2 class folders"):
    data.make_source({"name": "folder", "path": str(two), "num_classes": 3})


# ----------------------------------------------------------------------------- tfds (mocked)

_FAKE_N = 48


def _fake_cifar_as_dataset(self, split, decoders=None, read_config=None,
                           shuffle_files=False):
  """A cifar10 stand-in that honours sub-splits: example i is an image filled with i."""
  del self, decoders, read_config, shuffle_files
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if isinstance(split, str):
    split = tfds.core.ReadInstruction.from_spec(split)
  infos = {"train": types.SimpleNamespace(num_examples=_FAKE_N, shard_lengths=[_FAKE_N])}
  ids = np.concatenate([np.arange(inst.from_ or 0, _FAKE_N if inst.to is None else inst.to)
                        for inst in split.to_absolute(infos)])
  encoded = [tf.io.encode_png(np.full((32, 32, 3), i, np.uint8)).numpy() for i in ids]
  return tf.data.Dataset.from_tensor_slices({"image": encoded,
                                             "label": (ids % 10).astype(np.int64)})


def _example_ids(batch):
  return np.rint((batch["image"][:, 0, 0, 0] + 1.0) * 127.5).astype(int)


@pytest.fixture(scope="module")
def tfds_mod():
  return pytest.importorskip("tensorflow_datasets")


def test_tfds_cifar10_mock_shapes_and_determinism(tfds_mod):
  src = data.make_source({"name": "cifar10", "xflip": True, "seed": 3, "shuffle_buffer": 16})
  with tfds_mod.testing.mock_data(num_examples=40):
    batches = _take(src.batches(8, 0, process_index=0, process_count=1), 12)
    again = _take(src.batches(8, 0, process_index=0, process_count=1), 12)
    resumed = _take(src.batches(8, 7, process_index=0, process_count=1), 5)
    other_seed = data.make_source({"name": "cifar10", "xflip": True, "seed": 4,
                                   "shuffle_buffer": 16})
    other = _take(other_seed.batches(8, 0, process_index=0, process_count=1), 2)
    small = data.make_source({"name": "cifar10", "resolution": 16, "seed": 3})
    small_batch = next(small.batches(8, 0, process_index=1, process_count=2))
  b = batches[0]
  assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == (8,) and b["label"].dtype == np.int32
  for batch in batches:
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["label"].min() >= 0 and batch["label"].max() < 10
  assert np.ptp(np.concatenate([x["image"] for x in batches])) > 1.0  # not constant
  _assert_batches_equal(batches, again)  # fixed seed -> same stream
  _assert_batches_equal(batches[7:], resumed)  # resume == tail (crosses epoch at 40)
  assert not np.array_equal(batches[0]["image"], other[0]["image"])
  assert small_batch["image"].shape == (4, 16, 16, 3)
  assert -1.0 <= small_batch["image"].min() and small_batch["image"].max() <= 1.0


def test_tfds_epochs_shuffled_and_process_shards_disjoint(tfds_mod):
  src = data.make_source({"name": "cifar10", "seed": 0, "shuffle_buffer": 64})
  with tfds_mod.testing.mock_data(as_dataset_fn=_fake_cifar_as_dataset):
    one = _take(src.batches(8, 0, process_index=0, process_count=1), 12)  # two epochs
    shards = [_take(src.batches(8, 0, process_index=p, process_count=2), 6)
              for p in range(2)]  # one epoch of 24 examples each
    flipped = data.make_source({"name": "cifar10", "seed": 0, "xflip": True,
                                "shuffle_buffer": 64})
    flip_batches = _take(flipped.batches(8, 0, process_index=0, process_count=1), 6)
  ids = np.concatenate([_example_ids(b) for b in one])
  assert np.array_equal(np.sort(ids[:48]), np.arange(48))  # epoch 1 is a permutation
  assert np.array_equal(np.sort(ids[48:]), np.arange(48))  # epoch 2 as well
  assert not np.array_equal(ids[:48], np.arange(48))  # shuffled
  assert not np.array_equal(ids[:48], ids[48:])  # reshuffled per epoch
  labels = np.concatenate([b["label"] for b in one])
  np.testing.assert_array_equal(labels, ids % 10)
  shard_ids = [np.concatenate([_example_ids(b) for b in s]) for s in shards]
  assert len(set(shard_ids[0])) == 24 and len(set(shard_ids[1])) == 24
  assert not set(shard_ids[0]) & set(shard_ids[1])  # disjoint
  assert set(shard_ids[0]) | set(shard_ids[1]) == set(range(48))
  # Flipping only mirrors (constant images are flip-invariant, so same ids & order).
  np.testing.assert_array_equal(
      np.concatenate([_example_ids(b) for b in flip_batches]), ids[:48])


# ----------------------------------------------------------------------------- device feed


def test_prefetch_to_device_builds_global_arrays():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  n = len(jax.devices())
  src = data.make_source({"name": "digits", "resolution": 8, "seed": 2})
  local = _take(src.batches(4 * n, 0), 3)
  out = _take(base.prefetch_to_device(src.batches(4 * n, 0), 2, sharding), 3)
  assert len(out) == 3
  for x, y in zip(local, out):
    assert isinstance(y["image"], jax.Array) and y["image"].sharding == sharding
    assert y["image"].shape == (4 * n * jax.process_count(), 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(y["image"]), x["image"])
    np.testing.assert_array_equal(np.asarray(y["label"]), x["label"])
  # A finite iterator is drained completely.
  assert len(list(base.prefetch_to_device(iter(local), 5, sharding))) == 3
  with pytest.raises(ValueError, match=r"prefetch size must be an int >= 1"):
    next(base.prefetch_to_device(iter(local), 0, sharding))
