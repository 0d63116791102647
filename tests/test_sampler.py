"""The jit-compiled, sharded GANdance sampler (gandance_jax.sampler_lib.make_sampler)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gandance_jax import guidance
from gandance_jax.networks import stylegan2
from gandance_jax import sampler as sampler_lib
from tests.conftest import random_variables

NUM_CLASSES = 7
TINY = dict(z_dim=16, w_dim=16, num_classes=NUM_CLASSES, resolution=16, img_channels=3,
            channel_base=128, channel_max=16, mapping_layers=2)




@pytest.fixture(scope="module")
def gen():
  G = stylegan2.Generator(empty_class=True, **TINY)
  return G, random_variables(G)


LABELS = np.asarray([0, 3, 6, 2, 3, 1], np.int32)
KEY = jax.random.key(42)
# The sampler's one jitted program vs guidance.guided_ws around another jitted mapping: the
# same maths, other fusions. w is O(3) from 2 FC layers of fan-in <= 32 (products ~0.2), a
# mean of <= 3 rows and a multiply-add: <= K eps sum|products| = 2e-5 per layer at worst
# (a few ulps typically, see test_guidance.W_TOL). atol 1e-4 (+1e-5 relative) is 2x that
# worst case; a wrong z, label, scale or opposite set moves w by > 1e-2.
LATENT_TOL = dict(rtol=1e-5, atol=1e-4)


def test_scale_one_is_the_unguided_sampler_bitwise(gen):
  G, v = gen
  unguided = np.asarray(sampler_lib.make_sampler(G, mode="none")(v, KEY, LABELS))
  for mode, kwargs in (("training_free", dict(num_opposite=3)), ("learned", {})):
    for scale in (1.0, np.ones(G.num_ws)):
      sampler = sampler_lib.make_sampler(G, mode=mode, scale=scale, **kwargs)
      np.testing.assert_array_equal(np.asarray(sampler(v, KEY, LABELS)), unguided)
  guided = np.asarray(sampler_lib.make_sampler(G, mode="learned", scale=1.5)(v, KEY, LABELS))
  assert np.abs(guided - unguided).max() > 1e-3


def _mapping_fns(G, v):
  jit2 = jax.jit(lambda v_, z_, c_: G.apply(v_, z_, c_, broadcast=False, method=G.mapping))
  return lambda z_, c_: jit2(v, z_, c_)


def test_sampler_latents_are_guided_ws(gen):
  G, v = gen
  z = sampler_lib.sample_z(KEY, np.arange(len(LABELS)), G.z_dim)
  mapping = _mapping_fns(G, v)
  w_avg = guidance.w_avg_of(v)
  opposite = np.asarray([1, 2, 5], np.int32)
  for mode, kwargs, ref_kwargs in (
      ("training_free", dict(opposite_labels=opposite), dict(opposite_labels=opposite)),
      ("learned", {}, dict(empty_label=G.empty_label))):
    sampler = sampler_lib.make_sampler(G, mode=mode, scale=1.3, truncation_psi=0.8, **kwargs)
    expected = guidance.guided_ws(mapping, z, jnp.asarray(LABELS), scale=1.3,
                                  truncation_psi=0.8, w_avg=w_avg, num_ws=G.num_ws,
                                  **ref_kwargs)
    np.testing.assert_allclose(sampler.latents(v, KEY, LABELS), expected, **LATENT_TOL)
  # Unguided latents are NVIDIA's truncated mapping of the same z.
  none = sampler_lib.make_sampler(G, mode="none", truncation_psi=0.8)
  nvidia = jax.jit(lambda v_, z_, c_: G.apply(v_, z_, c_, truncation_psi=0.8,
                                              method=G.mapping))(v, z, LABELS)
  np.testing.assert_allclose(none.latents(v, KEY, LABELS), nvidia, **LATENT_TOL)


def test_random_opposite_sets_are_per_sample_subsets(gen):
  G, v = gen
  idx = np.arange(40)
  sets = np.asarray(sampler_lib.sample_opposite_sets(KEY, idx, NUM_CLASSES, 3))
  assert sets.shape == (40, 3) and sets.min() >= 0 and sets.max() < NUM_CLASSES
  assert all(len(set(row)) == 3 for row in sets.tolist())  # Without replacement.
  assert len({tuple(sorted(r)) for r in sets.tolist()}) > 10  # Drawn per sample.
  np.testing.assert_array_equal(  # A sample's set depends only on (key, its index).
      sampler_lib.sample_opposite_sets(KEY, idx[17:19], NUM_CLASSES, 3), sets[17:19])
  sampler = sampler_lib.make_sampler(G, mode="training_free", scale=1.4, num_opposite=3)
  z = sampler_lib.sample_z(KEY, np.arange(len(LABELS)), G.z_dim)
  mapping = _mapping_fns(G, v)
  expected = guidance.guided_ws(mapping, z, jnp.asarray(LABELS), scale=1.4,
                                opposite_labels=sets[:len(LABELS)], num_ws=G.num_ws)
  np.testing.assert_allclose(sampler.latents(v, KEY, LABELS), expected, **LATENT_TOL)


def test_compiled_once_per_batch_shape(gen):
  G, v = gen
  samplers = [sampler_lib.make_sampler(G, mode="learned", scale=s, truncation_psi=psi)
              for s, psi in ((1.2, 1.0), (1.4, 0.7), (2.0, 1.0))]
  spec = samplers[0].spec
  assert all(s.spec == spec for s in samplers)
  compiled = samplers[0].program("sample")
  samplers[0](v, KEY, LABELS)
  size = compiled._cache_size()  # pylint: disable=protected-access
  for sampler in samplers:  # Other scales, psi, keys and labels: no new compilation.
    sampler(v, KEY, LABELS)
    sampler(v, jax.random.key(7), LABELS[::-1])
  assert compiled._cache_size() == size  # pylint: disable=protected-access


def test_stream_equals_one_batch(gen):
  G, v = gen
  sampler = sampler_lib.make_sampler(G, mode="learned", scale=1.3)
  whole = np.asarray(sampler(v, KEY, LABELS))
  offsets, parts = zip(*sampler.stream(v, KEY, LABELS, chunk_size=4))
  assert offsets == (0, 4)  # The last chunk is padded to 4 and trimmed.
  # Chunks of 4 run the convolutions at another batch size than the whole batch, so XLA may
  # block the reductions differently: float32 rounding (eps 1.2e-7) accumulates over the ~8
  # convolution/demodulation layers with fan-in up to 3*3*32, i.e. a few 1e-6 per layer
  # relative to outputs of magnitude <= 1; 1.3e-5 was seen on a loaded machine. 1e-4 is
  # ~800 ulp at 1.0 and still orders of magnitude below any real difference (a different z,
  # label or noise moves pixels by > 1e-2).
  _CHUNKING_ATOL = 1e-4
  np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=_CHUNKING_ATOL)
  # A request can also continue at a global offset (e.g. a second job).
  tail = np.concatenate([x for _, x in sampler.stream(v, KEY, LABELS[2:], chunk_size=4,
                                                      start_index=2)])
  np.testing.assert_allclose(tail, whole[2:], rtol=0, atol=_CHUNKING_ATOL)


_TF = dict(mode="training_free", scale=1.3)


@pytest.mark.parametrize("make_kwargs, match", [
    (dict(mode="guided"), "mode must be one of"),
    (dict(noise_mode="bad"), "noise_mode must be one of"),
    (dict(mode="learned", scale=float("nan")), "scale must be finite"),
    (dict(mode="learned", scale=float("-inf")), "scale must be finite"),
    (dict(mode="learned", scale=[1.2, 1.3]), r"scale must be a scalar or a \[6\] vector"),
    (dict(mode="none", scale=1.3), "scale must be 1 in mode 'none'"),
    (dict(_TF, opposite_labels=[]), "opposite_labels must be a non-empty"),
    (dict(_TF, opposite_labels=[1, 7]), r"ids must be in \[0, 7\)"),
    (dict(_TF, opposite_labels=list(range(8))), "only 7 classes"),
    (dict(_TF, opposite_labels=[2, 2]), "must not repeat"),
    (dict(_TF, num_opposite=8), r"num_opposite must be an integer in \[0, 7\]"),
    (dict(_TF, num_opposite=-1), "num_opposite"),
    (dict(mode="learned", scale=1.3, opposite_labels=[1]), "only used in mode 'training_free'"),
    (dict(mode="learned", scale=1.3, truncation_psi=float("nan")),
     "truncation_psi must be a finite"),
])
def test_bad_options_raise_before_compiling(gen, monkeypatch, make_kwargs, match):
  G, _ = gen
  monkeypatch.setattr(sampler_lib, "_compiled", _no_compile)
  with pytest.raises(ValueError, match=match):
    sampler_lib.make_sampler(G, **make_kwargs)


def _no_compile(*args, **kwargs):
  raise AssertionError("nothing may be compiled for invalid input")


def test_bad_labels_and_models_raise_before_compiling(gen, monkeypatch):
  G, v = gen
  monkeypatch.setattr(sampler_lib, "_compiled", _no_compile)
  G_plain = stylegan2.Generator(empty_class=False, **TINY)
  with pytest.raises(ValueError, match="'learned' needs a generator with the empty class"):
    sampler_lib.make_sampler(G_plain, mode="learned", scale=1.3)
  sampler = sampler_lib.make_sampler(G, mode="learned", scale=1.3)
  with pytest.raises(ValueError, match=r"labels: label ids must be in \[0, 7\)"):
    sampler(v, KEY, np.asarray([0, 8]))
  with pytest.raises(ValueError, match=r"labels: label ids must be in \[0, 7\)"):
    sampler(v, KEY, np.asarray([-1, 2]))
  with pytest.raises(ValueError, match="labels: .*needs empty_class=True"):
    sampler_lib.make_sampler(G_plain, mode="training_free", scale=1.3)(v, KEY, np.asarray([7]))
  with pytest.raises(ValueError, match="labels must be a non-empty"):
    list(sampler.stream(v, KEY, np.zeros((0,), np.int32), chunk_size=4))
  with pytest.raises(ValueError, match="chunk_size must be a positive"):
    list(sampler.stream(v, KEY, LABELS, chunk_size=0))
  with pytest.raises(ValueError, match="class-conditional"):
    sampler_lib.make_sampler(stylegan2.Generator(**{**TINY, "num_classes": 0}), mode="none")


_SHARDED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from test_sampler import TINY
    from conftest import random_variables
    from gandance_jax import sampler as sampler_lib
    from gandance_jax.networks import stylegan2
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() == 4, jax.devices()
    G = stylegan2.Generator(empty_class=True, **TINY)
    v = random_variables(G)
    key = jax.random.key(3)
    labels = np.arange(10, dtype=np.int32) % 7
    # Per-sample z, random opposite set (|C| = 3) and random noise: all index-derived.
    kwargs = dict(mode="training_free", scale=1.4, num_opposite=3, noise_mode="random")
    one_device = sampler_lib.make_sampler(G, devices=jax.devices()[:1], **kwargs)
    whole = np.asarray(one_device(v, key, labels))
    sharded = sampler_lib.make_sampler(G, **kwargs)
    assert sharded.num_devices == 4
    chunks = list(sharded.stream(v, key, labels, chunk_size=4))
    streamed = np.concatenate([x for _, x in chunks])
    out = sharded(v, key, labels[:4])  # Same shape as the chunks: no new compile.
    # Variables replicated over all 4 devices (as checkpoint.load_generator returns them)
    # feed a sampler on 2 of them.
    everywhere = jax.device_put(v, jax.sharding.NamedSharding(sharded.mesh, P()))
    pair = sampler_lib.make_sampler(G, mode="none", devices=jax.devices()[:2])
    assert pair(everywhere, key, labels[:4]).shape == (4, 16, 16, 3)
    print(json.dumps(dict(
        offsets=[o for o, _ in chunks],
        max_diff=float(np.abs(streamed - whole).max()),
        bitwise=bool(np.array_equal(streamed, whole)),
        call_max_diff=float(np.abs(np.asarray(out) - whole[:4]).max()),
        spec=str(out.sharding.spec), num_shards=len(out.sharding.device_set))))
""")


def test_chunked_sharded_sampling_equals_one_batch():
  """4 forced CPU devices: chunked + sharded sampling == one batch on one device."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", TESTS_DIR=os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["offsets"] == [0, 4, 8]
  assert result["num_shards"] == 4 and "data" in result["spec"]
  # Other batch size per device and another device count than the one-device batch: the same
  # reduction-order argument as in test_stream_equals_one_batch (seen 1.34e-5 under load).
  assert result["max_diff"] < 1e-4, result
  assert result["call_max_diff"] < 1e-4, result
