"""The network families a config can name (`generator.family` / `discriminator.family`).

A config's `generator` / `discriminator` sections are the keyword arguments of the family's
constructors plus an optional `family` ('stylegan2' when absent, so configs and config.json
files written before BigGAN existed keep working). The trainer, `checkpoint.load_generator`
and the tools build the modules through these functions, so they never ask which family
they drive.

  G = make_generator(config.generator)          # stylegan2.Generator or biggan.Generator
  g_vars = init_generator(G, key)               # {'params', 'buffers'} / {'params', 'batch_stats'}
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

from gandance_jax.networks import biggan, stylegan2

FAMILIES = ("stylegan2", "biggan")
DEFAULT = "stylegan2"


def family_of(section: Mapping[str, Any]) -> str:
  """The family named by a generator / discriminator section (default 'stylegan2')."""
  family = dict(section).get("family", DEFAULT)
  if family not in FAMILIES:
    raise ValueError(f"family = {family!r} is invalid: allowed values are {list(FAMILIES)}")
  return family


def constructor_kwargs(section: Mapping[str, Any]) -> dict[str, Any]:
  """The section without `family`: the keyword arguments of the family's constructor."""
  return {k: v for k, v in dict(section).items() if k != "family"}


def make_generator(section: Mapping[str, Any]) -> Any:
  """The generator module of a config's `generator` section."""
  cls = biggan.Generator if family_of(section) == "biggan" else stylegan2.Generator
  return cls(**constructor_kwargs(section))


def make_discriminator(section: Mapping[str, Any]) -> Any:
  """The discriminator module of a config's `discriminator` section."""
  cls = biggan.Discriminator if family_of(section) == "biggan" else stylegan2.Discriminator
  return cls(**constructor_kwargs(section))


def is_biggan(module: Any) -> bool:
  return isinstance(module, (biggan.Generator, biggan.Discriminator))


def init_generator(G: Any, key: jax.Array) -> dict[str, Any]:
  """G's variables: StyleGAN2 {'params', 'buffers'}, BigGAN {'params', 'batch_stats'}."""
  return (biggan.init_generator if is_biggan(G) else stylegan2.init_generator)(G, key)


def init_discriminator(D: Any, key: jax.Array) -> dict[str, Any]:
  """D's variables: StyleGAN2 {'params', 'buffers'}, BigGAN {'params', 'batch_stats'}."""
  return (biggan.init_discriminator if is_biggan(D) else stylegan2.init_discriminator)(D, key)


__all__ = ["FAMILIES", "family_of", "constructor_kwargs", "make_generator",
           "make_discriminator", "is_biggan", "init_generator", "init_discriminator"]
