"""Train-step speed at real widths: one G step + one D step of the StyleGAN2 networks, side by
side for implementation variants (and optionally NVIDIA's PyTorch networks), in one run.

  python benchmarks/train_widths.py                          # tiny + cifar widths, all variants
  python benchmarks/train_widths.py --widths=cifar --repeats=3
  python benchmarks/train_widths.py --nvidia_repo=/path/to/stylegan2-ada-pytorch \\
      --torch_python=/tmp/torchenv/bin/python                # + NVIDIA's PyTorch, same work
  python benchmarks/train_widths.py --layers=16 [--nvidia_repo=... --torch_python=...]
                                      # only the 512-channel layers (G up, G conv, D down)

The work (issue 18): 10 classes, skip G / orig D, conv_clamp 256, 2 mapping layers, the
non-saturating loss, Adam, no regularisation, G in training mode with random noise;
`tiny` = res 16, channel_base 512, batch 32; `cifar` = res 32, channel_base 32768 (512
channels, NVIDIA's CIFAR widths), batch 16. The step is built here from the networks alone
(it does not use gandance_jax.train), so that it measures the layers.

Variants (the same process, interleaved, so that the load of a shared machine hits them alike):
  xla    - every convolution through XLA's own kernels (jax.lax.conv_general_dilated and its
           autodiff), the implementation before issue 18;
  taps   - layers.py's default: on CPU the weight gradients (and strided / input-dilated
           convolutions) as one GEMM per kernel tap.
Reported per variant: images/s of the combined step, per-phase ms (G step, D step and their
forward-only parts, so backward = step - forward), XLA's FLOP count of the compiled step and
the achieved FLOP/s. `--sampling` adds the forward synthesis with fused vs non-fused
modulated convolution. Absolute numbers on a shared CPU are noisy; compare ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

WIDTHS = {  # name -> (resolution, channel_base, batch)
    "tiny": (16, 512, 32),
    "cifar": (32, 32768, 16),
}
NUM_CLASSES, MAPPING_LAYERS, CONV_CLAMP, Z_DIM = 10, 2, 256.0, 512
LR, BETAS, EPS = 0.0025, (0.0, 0.99), 1e-8


@contextlib.contextmanager
def _variant(name: str):
  """Selects the convolution implementation at trace time."""
  from gandance_jax import layers  # pylint: disable=g-import-not-at-top
  # pylint: disable=protected-access
  orig = (layers._conv_hwio, layers._TAPS_MIN_CHANNELS, layers._TAPS_MIN_CHANNELS_DILATED)
  if name == "xla":
    layers._conv_hwio = layers._conv_native
  elif name == "taps":  # the per-tap form at every width, whatever layers.py chooses
    layers._TAPS_MIN_CHANNELS = layers._TAPS_MIN_CHANNELS_DILATED = 0
  elif name != "auto":
    raise ValueError(f"variant must be 'xla', 'taps' or 'auto', got {name!r}")
  try:
    yield
  finally:
    (layers._conv_hwio, layers._TAPS_MIN_CHANNELS, layers._TAPS_MIN_CHANNELS_DILATED) = orig


def _build(width: str):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from gandance_jax.networks import stylegan2  # pylint: disable=g-import-not-at-top

  res, base, batch = WIDTHS[width]
  G = stylegan2.Generator(z_dim=Z_DIM, w_dim=512, num_classes=NUM_CLASSES, resolution=res,
                          mapping_layers=MAPPING_LAYERS, channel_base=base, channel_max=512,
                          architecture="skip", conv_clamp=CONV_CLAMP)
  D = stylegan2.Discriminator(num_classes=NUM_CLASSES, resolution=res, architecture="orig",
                              channel_base=base, channel_max=512, conv_clamp=CONV_CLAMP,
                              mapping_layers=MAPPING_LAYERS)
  g_vars = stylegan2.init_generator(G, 0)
  d_vars = stylegan2.init_discriminator(D, 1)
  tx = optax.adam(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS)
  rng = np.random.default_rng(0)
  real = jnp.asarray(rng.uniform(-1, 1, (batch, res, res, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32)

  def gen(g_params, key):
    kz, kn = jax.random.split(key)
    z = jax.random.normal(kz, (batch, Z_DIM))
    v = {**g_vars, "params": g_params}
    return G.apply(v, z, labels, noise_mode="random", rngs={"noise": kn})

  def disc(d_params, img):
    return D.apply({**d_vars, "params": d_params}, img, labels)

  def g_loss(g_params, d_params, key):
    return jnp.mean(jax.nn.softplus(-disc(d_params, gen(g_params, key))))

  def d_loss(d_params, fake):
    return (jnp.mean(jax.nn.softplus(disc(d_params, fake)))
            + jnp.mean(jax.nn.softplus(-disc(d_params, real))))

  def g_step(state, key):
    gp, dp, gs, ds = state
    grads = jax.grad(g_loss)(gp, dp, key)
    upd, gs = tx.update(grads, gs, gp)
    return optax.apply_updates(gp, upd), dp, gs, ds

  def d_step(state, key):
    gp, dp, gs, ds = state
    fake = jax.lax.stop_gradient(gen(gp, key))
    grads = jax.grad(d_loss)(dp, fake)
    upd, ds = tx.update(grads, ds, dp)
    return gp, optax.apply_updates(dp, upd), gs, ds

  def step(state, key):
    kg, kd = jax.random.split(key)
    return d_step(g_step(state, kg), kd)

  def g_fwd(state, key):
    return g_loss(state[0], state[1], key)

  def d_fwd(state, key):
    return d_loss(state[1], gen(state[0], key))

  state = (g_vars["params"], d_vars["params"], tx.init(g_vars["params"]),
           tx.init(d_vars["params"]))
  fns = dict(step=step, g_step=g_step, d_step=d_step, g_fwd=g_fwd, d_fwd=d_fwd)
  return fns, state, batch


def _flops(compiled) -> float:
  """XLA's FLOP count (bench_lib.flops_of), NaN where the backend has none."""
  flops = bench_lib.flops_of(compiled)
  return float("nan") if flops is None else flops


def run_jax(widths, variants, repeats: int, phases: bool) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top

  out = []
  for width in widths:
    fns, state, batch = _build(width)
    names = list(fns) if phases else ["step"]
    compiled, flops, compile_s = {}, {}, {}
    key = jax.random.key(0)
    for v in variants:
      with _variant(v):
        for n in names:
          t0 = time.perf_counter()
          # A fresh function object per variant: jit caches traces by function identity.
          c = jax.jit(lambda s, k, f=fns[n]: f(s, k)).lower(state, key).compile()
          compile_s[v, n] = time.perf_counter() - t0
          compiled[v, n], flops[v, n] = c, _flops(c)
          jax.block_until_ready(c(state, key))  # warm-up
    times = {k: [] for k in compiled}
    for _ in range(repeats):  # interleaved: variant A, variant B, A, B, ...
      for n in names:
        for v in variants:
          t0 = time.perf_counter()
          jax.block_until_ready(compiled[v, n](state, key))
          times[v, n].append(time.perf_counter() - t0)
    for v in variants:
      rec = dict(framework="jax", width=width, variant=v, batch=batch,
                 step_ms=1e3 * min(times[v, "step"]),
                 img_per_s=batch / min(times[v, "step"]),
                 step_ms_all=[round(1e3 * t, 1) for t in times[v, "step"]],
                 step_gflop=flops[v, "step"] / 1e9,
                 achieved_gflop_per_s=flops[v, "step"] / 1e9 / min(times[v, "step"]),
                 compile_s={n: round(compile_s[v, n], 1) for n in names})
      if phases:
        for n in names[1:]:
          rec[f"{n}_ms"] = 1e3 * min(times[v, n])
          rec[f"{n}_gflop"] = flops[v, n] / 1e9
        rec["g_bwd_ms"] = rec["g_step_ms"] - rec["g_fwd_ms"]
        rec["d_bwd_ms"] = rec["d_step_ms"] - rec["d_fwd_ms"]
      print(json.dumps(rec), flush=True)
      out.append(rec)
  return out


def run_sampling(widths, repeats: int) -> list[dict]:
  """Forward synthesis (const noise) with fused vs non-fused modulated convolution."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from gandance_jax.networks import stylegan2  # pylint: disable=g-import-not-at-top

  out = []
  for width in widths:
    res, base, batch = WIDTHS[width]
    G = stylegan2.Generator(z_dim=Z_DIM, w_dim=512, num_classes=NUM_CLASSES, resolution=res,
                            mapping_layers=MAPPING_LAYERS, channel_base=base, channel_max=512,
                            architecture="skip", conv_clamp=CONV_CLAMP)
    v = stylegan2.init_generator(G, 0)
    ws = jax.random.normal(jax.random.key(1), (batch, G.num_ws, 512))
    fns = {}
    for fused in (False, True):
      f = jax.jit(lambda v, ws, fused=fused: G.apply(v, ws, noise_mode="const",
                                                     fused_modconv=fused, method=G.synthesis))
      fns[fused] = f.lower(v, ws).compile()
      jax.block_until_ready(fns[fused](v, ws))
    diff = float(jnp.max(jnp.abs(fns[True](v, ws) - fns[False](v, ws))))
    times = {k: [] for k in fns}
    for _ in range(repeats):
      for fused in fns:
        t0 = time.perf_counter()
        jax.block_until_ready(fns[fused](v, ws))
        times[fused].append(time.perf_counter() - t0)
    rec = dict(framework="jax", width=width, phase="synthesis_fwd", batch=batch,
               nonfused_ms=1e3 * min(times[False]), fused_ms=1e3 * min(times[True]),
               fused_over_nonfused=min(times[True]) / min(times[False]),
               max_abs_diff=diff, gflop=_flops(fns[False]) / 1e9)
    print(json.dumps(rec), flush=True)
    out.append(rec)
  return out


LAYERS = {  # name -> (input resolution, what it is): the 512-channel convolutions of `cifar`
    "g_up": (16, "G modulated 3x3 conv, 2x up-sampling, 16 -> 32"),
    "g_conv": (32, "G modulated 3x3 conv at 32"),
    "d_down": (32, "D 3x3 conv, FIR + 2x down-sampling, 32 -> 16"),
}


def run_layers(batch: int, repeats: int, variants, c: int = 512) -> list[dict]:
  """Forward + backward (input, weight and style gradients) of single c-channel layers."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gandance_jax import layers  # pylint: disable=g-import-not-at-top

  f = jnp.asarray(layers.setup_filter([1, 3, 3, 1]))
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((3, 3, c, c)) / np.sqrt(9 * c), jnp.float32)
  s = jnp.asarray(rng.standard_normal((batch, c)), jnp.float32)
  fns = {
      "g_up": lambda x, w, s: layers.modulated_conv2d(x, w, s, up=2, padding=1,
                                                      resample_filter=f, flip_weight=False),
      "g_conv": lambda x, w, s: layers.modulated_conv2d(x, w, s, padding=1),
      "d_down": lambda x, w, s: layers.conv2d_resample(x, w, f=f, down=2, padding=1),
  }
  out = []
  for name, fn in fns.items():
    res = LAYERS[name][0]
    x = jnp.asarray(rng.standard_normal((batch, res, res, c)), jnp.float32)
    g = jnp.asarray(rng.standard_normal(jax.eval_shape(fn, x, w, s).shape), jnp.float32)
    # A random cotangent: a constant one (ones_like) lets XLA rewrite the weight gradient
    # into a much slower form than the train step ever sees.
    fwd_bwd = lambda x, w, s, g, fn=fn: jax.vjp(fn, x, w, s)[1](g)
    compiled = {}
    for v in variants:
      with _variant(v):
        compiled[v] = jax.jit(lambda *a, h=fwd_bwd: h(*a)).lower(x, w, s, g).compile()
        jax.block_until_ready(compiled[v](x, w, s, g))
    times = {v: [] for v in variants}
    for _ in range(repeats):
      for v in variants:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled[v](x, w, s, g))
        times[v].append(time.perf_counter() - t0)
    rec = dict(framework="jax", layer=name, batch=batch, channels=c,
               **{f"{v}_ms": 1e3 * min(times[v]) for v in variants},
               **{f"{v}_gflop": _flops(compiled[v]) / 1e9 for v in variants})
    print(json.dumps(rec), flush=True)
    out.append(rec)
  return out


_TORCH_LAYERS = r"""
import json, sys, time, types
import numpy as np
import torch
sys.modules.setdefault('requests', types.ModuleType('requests'))
sys.path.insert(0, sys.argv[1])
from training import networks
from torch_utils.ops import conv2d_resample, upfirdn2d
batch, repeats = int(sys.argv[2]), int(sys.argv[3])
c = 512
f = upfirdn2d.setup_filter([1, 3, 3, 1])
w = torch.randn(c, c, 3, 3) / np.sqrt(9 * c)
s = torch.randn(batch, c)
fns = {
  'g_up': (16, lambda x, w, s: networks.modulated_conv2d(x, w, s, up=2, padding=1,
           resample_filter=f, flip_weight=False, fused_modconv=False)),
  'g_conv': (32, lambda x, w, s: networks.modulated_conv2d(x, w, s, padding=1,
             fused_modconv=False)),
  'd_down': (32, lambda x, w, s: conv2d_resample.conv2d_resample(x, w, f=f, down=2, padding=1)),
}
for name, (res, fn) in fns.items():
  x = torch.randn(batch, c, res, res)
  def run():
    a, b, d = (t.clone().requires_grad_() for t in (x, w, s))
    y = fn(a, b, d)
    y.backward(torch.ones_like(y) * 0.5 + torch.rand_like(y))
  run()
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter(); run(); ts.append(time.perf_counter() - t0)
  print(json.dumps(dict(framework='torch', layer=name, batch=batch, ms=1e3 * min(ts))), flush=True)
"""


def run_torch_layers(batch: int, repeats: int, nvidia_repo: str, torch_python: str) -> list:
  proc = subprocess.run([torch_python, "-c", _TORCH_LAYERS, nvidia_repo, str(batch),
                         str(repeats)], capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"NVIDIA layer worker failed:\n{proc.stderr[-3000:]}")
  recs = [json.loads(l) for l in proc.stdout.strip().splitlines() if l.startswith("{")]
  for r in recs:
    print(json.dumps(r), flush=True)
  return recs


_TORCH_WORKER = r"""
import json, sys, time
import types
import torch
sys.modules.setdefault('requests', types.ModuleType('requests'))  # dnnlib imports it, unused
sys.path.insert(0, sys.argv[1])
from training import networks
res, base, batch, repeats = (int(a) for a in sys.argv[2:6])
torch.manual_seed(0)
G = networks.Generator(z_dim=512, c_dim=10, w_dim=512, img_resolution=res, img_channels=3,
    mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=base,
    channel_max=512, num_fp16_res=0, conv_clamp=256, architecture='skip'))
D = networks.Discriminator(c_dim=10, img_resolution=res, img_channels=3, architecture='orig',
    channel_base=base, channel_max=512, num_fp16_res=0, conv_clamp=256,
    mapping_kwargs=dict(num_layers=2))
g_opt = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
d_opt = torch.optim.Adam(D.parameters(), lr=0.0025, betas=(0.0, 0.99), eps=1e-8)
real = torch.rand(batch, 3, res, res) * 2 - 1
c = torch.nn.functional.one_hot(torch.randint(0, 10, (batch,)), 10).float()
sp = torch.nn.functional.softplus
def step():
  G.requires_grad_(True); D.requires_grad_(False)
  g_opt.zero_grad(set_to_none=True)
  sp(-D(G(torch.randn(batch, 512), c), c)).mean().backward()
  g_opt.step()
  G.requires_grad_(False); D.requires_grad_(True)
  d_opt.zero_grad(set_to_none=True)
  with torch.no_grad():
    fake = G(torch.randn(batch, 512), c)
  (sp(D(fake, c)).mean() + sp(-D(real, c)).mean()).backward()
  d_opt.step()
step()
ts = []
for _ in range(repeats):
  t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
print(json.dumps(dict(framework='torch', threads=torch.get_num_threads(),
                      torch=torch.__version__, step_s=ts)))
"""


def run_torch(width: str, repeats: int, nvidia_repo: str, torch_python: str) -> dict:
  res, base, batch = WIDTHS[width]
  proc = subprocess.run([torch_python, "-c", _TORCH_WORKER, nvidia_repo, str(res), str(base),
                         str(batch), str(repeats)], capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"NVIDIA worker failed for width {width}:\n{proc.stderr[-3000:]}")
  rec = json.loads(proc.stdout.strip().splitlines()[-1])
  rec.update(width=width, batch=batch, step_ms=1e3 * min(rec["step_s"]),
             img_per_s=batch / min(rec["step_s"]))
  print(json.dumps(rec), flush=True)
  return rec


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--widths", default="tiny,cifar")
  p.add_argument("--variants", default="xla,taps",
                 help="xla (XLA's kernels), taps (per-tap everywhere), auto (layers.py's rule)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--rounds", type=int, default=1,
                 help="alternate JAX and NVIDIA measurements this many times")
  p.add_argument("--no_phases", action="store_true", help="only the combined step")
  p.add_argument("--sampling", action="store_true", help="also fused vs non-fused synthesis")
  p.add_argument("--layers", type=int, default=0,
                 help="only time the single 512-channel layers, at this batch size")
  p.add_argument("--channels", default="512",
                 help="--layers: comma-separated channel counts (where the per-tap form "
                      "starts to pay off: layers._TAPS_MIN_CHANNELS)")
  p.add_argument("--nvidia_repo", default="")
  p.add_argument("--torch_python", default="")
  p.add_argument("--json", default="", help="write all records to this file")
  a = p.parse_args()
  sys.path.insert(0, REPO)
  widths = [w for w in a.widths.split(",") if w]
  for w in widths:
    if w not in WIDTHS:
      raise SystemExit(f"--widths: unknown {w!r}, expected some of {sorted(WIDTHS)}")
  records = []
  if a.layers:
    if a.nvidia_repo:
      records += run_torch_layers(a.layers, a.repeats, a.nvidia_repo,
                                  a.torch_python or sys.executable)
    for c in (int(c) for c in a.channels.split(",")):
      records += run_layers(a.layers, a.repeats, a.variants.split(","), c)
    widths = []
  for _ in range(a.rounds if widths else 0):
    if a.nvidia_repo:
      for w in widths:
        records.append(run_torch(w, a.repeats, a.nvidia_repo, a.torch_python or sys.executable))
    records += run_jax(widths, a.variants.split(","), a.repeats, not a.no_phases)
  if a.sampling:
    records += run_sampling(widths, a.repeats)
  if a.json:
    with open(a.json, "w") as f:
      json.dump(records, f, indent=1)


if __name__ == "__main__":
  main()
