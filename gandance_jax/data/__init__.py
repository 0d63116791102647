"""Input pipelines: bundled digits, tfds (cifar10, imagenet_resized), npz / image folder,
2D Gaussian mixtures. `make_source(config.data)` is the entry point (pipeline.py); the
interface and the in-memory sources are in base.py.

Importing this package does not import TensorFlow (only building a tfds pipeline does).
"""

from gandance_jax.data.base import (SOURCE_NAMES, ArraySource, Source, StepSource,
                                    prefetch_to_device)
from gandance_jax.data.digits import load_digits
from gandance_jax.data.mixtures2d import MixtureSource, MixtureSpec
from gandance_jax.data.pipeline import make_source
from gandance_jax.data.tfds_input import TfdsSource

__all__ = [
    "SOURCE_NAMES",
    "ArraySource",
    "MixtureSource",
    "MixtureSpec",
    "Source",
    "StepSource",
    "TfdsSource",
    "load_digits",
    "make_source",
    "prefetch_to_device",
]
