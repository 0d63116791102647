"""gandance_jax: GANdance guided sampling for class-conditional GANs in JAX/Flax."""

__version__ = "0.1.0"
