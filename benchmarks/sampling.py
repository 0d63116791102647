"""Guided vs unguided sampling speed, and host memory of streamed .npz sampling.

Speed: the ImageNet-64-shaped generator (z_dim = w_dim = 512, 8 mapping layers, 1000 classes
+ the empty class, 64x64, channel_base 16384 / channel_max 512: 512 channels up to 32x32 and
256 at 64x64; about 24.6M parameters), random weights. For each mode the sampler's compiled
program is timed on the same batch; rounds are interleaved over the modes so that load from
other processes hits all of them alike, and the best round is kept. Printed next to the
measured overhead ``guided / unguided - 1`` is its FLOP bound
``|C| * flops(mapping) / (flops(mapping) + flops(synthesis))`` with FLOPs per (z, c) pair
and per image from XLA's cost analysis.

Memory: a generator with the same 64x64x3 output but few channels streams N images into an
ADM .npz (sample_cli.write_npz_stream) in a fresh process for two N; the peak RSS of each is
printed (it should not grow with N).

  python benchmarks/sampling.py [--batch 8] [--rounds 3] [--rss 1000,10000]
  python benchmarks/sampling.py --family=biggan --rss=''   # the paper's BigGAN at 128x128

`--family=biggan`: the speed test on the paper's BigGAN generator (configs/biggan_imagenet128.py:
ch 96, 128x128, hierarchical z 120, shared_dim 128, attention at 64, 1000 classes + empty),
random weights; its "mapping" is the shared class embedding and the z chunks
(networks/biggan.py), so the FLOP bound of training-free guidance is small.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

# Run as `python benchmarks/sampling.py`: the repository root is not on sys.path by itself.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))   # bench_lib

from gandance_jax import images, sample_cli  # pylint: disable=wrong-import-position
from gandance_jax.networks import biggan, stylegan2  # pylint: disable=wrong-import-position
from gandance_jax import sampler as sampler_lib  # pylint: disable=wrong-import-position

IMAGENET64 = dict(z_dim=512, w_dim=512, num_classes=1000, empty_class=True, resolution=64,
                  img_channels=3, mapping_layers=8, channel_base=16384, channel_max=512)
# Same output shape, few channels: makes large N affordable on a CPU for the memory test.
TINY64 = dict(IMAGENET64, channel_base=256, channel_max=16)




def _flops(compiled) -> float:
  """XLA's FLOP count; NaN where the backend has no cost analysis (the timings still count)."""
  from bench_lib import flops_of  # pylint: disable=g-import-not-at-top  (benchmarks/)
  flops = flops_of(compiled)
  return float("nan") if flops is None else flops


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB.


def _current_rss_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


BIGGAN128 = dict(num_classes=1000, empty_class=True, resolution=128, ch=96, dim_z=120,
                 shared_dim=128, hier=True, attention="64", sn_eps=1e-6)


def speed(batch: int, rounds: int, family: str = "stylegan2") -> None:
  if family == "biggan":
    G = biggan.Generator(**BIGGAN128)
    v = biggan.init_generator(G, jax.random.key(0))
  else:
    G = stylegan2.Generator(**IMAGENET64)
    v = stylegan2.init_generator(G, jax.random.key(0))
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(v["params"]))
  print(f"generator: {n_params / 1e6:.1f}M parameters, num_ws={G.num_ws}, batch={batch}, "
        f"devices={jax.devices()}")
  res = measure(G, v, batch, rounds, log=print)
  print(f"XLA cost analysis: mapping {res['mapping_flops'] / 1e6:.2f} MFLOP per (z, c) pair, "
        f"synthesis {res['synthesis_flops'] / 1e9:.2f} GFLOP per image (analytic count of its "
        f"convolutions: {res['synthesis_flops_analytic'] / 1e9:.2f} GFLOP)")
  print(f"\n{'mode':24s} {'img/s':>6s} {'s/img':>6s} {'overhead':>8s} {'latents':>8s} "
        f"{'FLOP bound':>10s} {'ratio':>6s} {'bound*':>7s} {'prog FLOPs':>10s}")
  for name, m in res["modes"].items():
    print(f"{name:24s} {m['img_per_s']:6.2f} {1 / m['img_per_s']:6.3f} {m['overhead']:+8.3f} "
          f"{m['latent_overhead']:+8.3f} {m['flop_bound']:10.3f} {m['ratio']:6.3f} "
          f"{m['flop_bound_analytic']:7.3f} {m['program_flop_overhead']:+10.3f}")
  print("overhead: guided / unguided - 1, end to end, best of the interleaved rounds (noisy "
        "when other processes share the cores);\nlatents: (guided latents time - unguided "
        "latents time) / unguided end-to-end time, i.e. the overhead measured on the part "
        "guidance changes;\nFLOP bound: |C| flops(mapping) / (flops(mapping) + "
        "flops(synthesis)) with XLA's counts; ratio = (1 + overhead) / (1 + bound), goal <= "
        "1.25;\nbound*: the same bound with the analytic convolution count of the synthesis; "
        "prog FLOPs: FLOP overhead of the whole compiled sampler (XLA cost analysis).")
  print("end-to-end rounds (s):", {n: m["seconds_all"] for n, m in res["modes"].items()})
  print("latents best (ms):", {n: round(1e3 * m["latents_s"], 2) for n, m in res["modes"].items()})


MODES = (("unguided", dict(mode="none"), 0),
         *((f"training-free |C|={k}", dict(mode="training_free", scale=1.3, num_opposite=k), k)
           for k in (10, 100, 1000)),
         ("learned", dict(mode="learned", scale=1.3), 1))


def measure(G: stylegan2.Generator, v, batch: int, rounds: int, modes=MODES,
            log=lambda msg: None, program_flops: bool = True) -> dict:
  """Times the sampler of each mode (name, make_sampler kwargs, |C|) on one batch.

  Returns {'mapping_flops', 'synthesis_flops', 'synthesis_flops_analytic',
  'modes': {name: {img_per_s, seconds, overhead, latent_overhead, flop_bound, ratio, ...}}}:
  per mode the best of `rounds` interleaved end-to-end calls, and 5 x `rounds` calls of the
  guided latents alone. The first mode is the baseline of the overheads. `program_flops`
  False skips the second compile that counts each whole sampler's FLOPs (None then).
  """
  z = jnp.zeros((batch, G.z_dim))
  labels = np.arange(batch, dtype=np.int32) * 7 % G.num_classes
  mapping = jax.jit(lambda v_, z_, c_: G.apply(v_, z_, c_, broadcast=False, method=G.mapping))
  synthesis = jax.jit(lambda v_, ws: G.apply(v_, ws, noise_mode="const", method=G.synthesis))
  f_map = _flops(mapping.lower(v, z, labels).compile()) / batch
  ws = jnp.zeros((batch, G.num_ws, G.w_dim))
  f_syn = _flops(synthesis.lower(v, ws).compile()) / batch
  f_syn_conv = (analytic_synthesis_flops(G) if isinstance(G, stylegan2.Generator)
                else float("nan"))

  key = jax.random.key(0)
  samplers, prog_flops, compile_s = {}, {}, {}
  for name, kwargs, _ in modes:
    sampler = sampler_lib.make_sampler(G, **kwargs)
    t0 = time.perf_counter()
    sampler(v, key, labels).block_until_ready()  # Compile + first run.
    compile_s[name] = time.perf_counter() - t0
    prog_flops[name] = (_flops(sampler.lower(v, key, labels).compile()) / batch
                        if program_flops else None)
    samplers[name] = sampler
    log(f"  compiled {name:24s} in {compile_s[name]:6.1f} s")

  times = {name: [] for name, _, _ in modes}
  for r in range(rounds):  # Interleaved, so background load is shared by all modes.
    for name, _, _ in modes:
      t0 = time.perf_counter()
      samplers[name](v, jax.random.fold_in(key, r), labels).block_until_ready()
      times[name].append(time.perf_counter() - t0)
  # The guided latents alone (z, opposite sets, mappings, guidance, truncation): what
  # guidance adds is their time minus the unguided latents' time. Short, so many repeats.
  latent_times = {name: [] for name, _, _ in modes}
  for name, _, _ in modes:
    samplers[name].latents(v, key, labels).block_until_ready()  # Compile.
  for r in range(5 * rounds):
    for name, _, _ in modes:
      t0 = time.perf_counter()
      samplers[name].latents(v, jax.random.fold_in(key, r), labels).block_until_ready()
      latent_times[name].append(time.perf_counter() - t0)

  base_name = modes[0][0]
  base = min(times[base_name])
  base_latents = min(latent_times[base_name])
  out = {}
  for name, _, k in modes:
    t = min(times[name])
    overhead = t / base - 1
    bound = k * f_map / (f_map + f_syn)
    out[name] = dict(
        num_opposite=k, batch=batch, seconds=t, img_per_s=batch / t,
        seconds_all=[round(x, 4) for x in times[name]], latents_s=min(latent_times[name]),
        overhead=overhead, latent_overhead=(min(latent_times[name]) - base_latents) / base,
        flop_bound=bound, ratio=(1 + overhead) / (1 + bound),
        flop_bound_analytic=k * f_map / (f_map + f_syn_conv),
        program_flops_per_image=prog_flops[name],
        program_flop_overhead=(prog_flops[name] / prog_flops[base_name] - 1
                               if program_flops else None),
        compile_s=compile_s[name])
  return dict(mapping_flops=f_map, synthesis_flops=f_syn, synthesis_flops_analytic=f_syn_conv,
              modes=out)


def analytic_synthesis_flops(G: stylegan2.Generator) -> float:
  """2 * MACs of the synthesis convolutions (3x3 convs at output resolution, 1x1 toRGB)."""
  syn = G._synthesis_module(None)  # pylint: disable=protected-access
  total = 0.0
  for spec in syn._block_specs():  # pylint: disable=protected-access
    r, cin, cout = spec["resolution"], spec["in_channels"], spec["out_channels"]
    if cin:
      total += 2 * 9 * cin * cout * r * r  # conv0 (2x up)
    total += 2 * 9 * cout * cout * r * r  # conv1
    total += 2 * cout * G.img_channels * r * r  # torgb
  return total


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _vm_hwm_mib() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def rss_child(n: int, batch: int) -> None:
  """Streams n samples of TINY64 into an npz in this (fresh) process; prints RSS figures."""
  G = stylegan2.Generator(**TINY64)
  v = stylegan2.init_generator(G, jax.random.key(0))
  sampler = sampler_lib.make_sampler(G, mode="training_free", scale=1.3, num_opposite=10)
  labels = np.asarray(jax.random.randint(jax.random.key(1), (n,), 0, G.num_classes), np.int32)
  # Warm up (compile, first chunks) before measuring: compilation dominates the peak.
  list(sampler.stream(v, jax.random.key(0), labels[:2 * batch], chunk_size=batch))
  peak_compile = _peak_rss_mib()
  reset = _reset_peak_rss()
  start = _current_rss_mib()
  trace = []
  t0 = time.perf_counter()

  def chunks():
    for i, (_, x) in enumerate(sampler.stream(v, jax.random.key(0), labels, chunk_size=batch)):
      yield images.to_uint8(x, "adm")
      trace.append(_current_rss_mib())

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "samples.npz")
    sample_cli.write_npz_stream(path, chunks(), (n, 64, 64, 3), labels)
    size = os.path.getsize(path)
  q = [trace[int(f * (len(trace) - 1))] for f in (0.1, 0.5, 1.0)]
  peak = f"{_vm_hwm_mib():7.1f}" if reset else "    n/a"
  print(f"N={n:6d}: {size / 2**20:6.1f} MiB npz in {time.perf_counter() - t0:5.1f} s | peak RSS "
        f"incl. compile {peak_compile:6.1f} MiB | while streaming: peak {peak} MiB, RSS at "
        f"start {start:6.1f}, after 10% / 50% / 100% of chunks {q[0]:6.1f} / {q[1]:6.1f} / "
        f"{q[2]:6.1f} MiB")


def rss(ns: list[int], batch: int) -> None:
  print(f"\nhost memory of streamed sampling (64x64x3, few channels, chunks of {batch}, "
        "each N in a fresh process):")
  for n in ns:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--batch", str(batch)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
      print(out.stderr[-3000:])
      raise SystemExit(out.returncode)
    print(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8, help="images per call (speed test)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--rss", default="1000,10000", help="N values of the memory test, '' = skip")
  parser.add_argument("--rss-batch", type=int, default=250)
  parser.add_argument("--skip-speed", action="store_true")
  parser.add_argument("--family", default="stylegan2", choices=("stylegan2", "biggan"),
                      help="generator of the speed test")
  parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.rss_child:
    rss_child(args.rss_child, args.batch)
    return
  if not args.skip_speed:
    speed(args.batch, args.rounds, args.family)
  if args.rss:
    rss([int(n) for n in args.rss.split(",")], args.rss_batch)


if __name__ == "__main__":
  main()
