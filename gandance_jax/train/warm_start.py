"""Learning-based GANdance on a pre-trained conditional GAN: reuse every parameter, add the
empty class, fine-tune.

The paper (Sec. 3.3, last paragraph) notes that the empty condition only widens the label
embeddings of G and D by one row, so a pre-trained conditional GAN can be fine-tuned with
label reset instead of trained from scratch. A run does this when `config.train.init_from`
names the pre-trained weights and its workdir has no checkpoint yet (a resumed run always
continues from its own checkpoint):

  # from a run of this project (its newest readable checkpoint; G, G EMA, D and buffers)
  python -m gandance_jax.main --config=configs/digits.py --workdir=runs/ft \\
      --config.train.init_from=runs/pretrained
  # from NVIDIA stylegan2-ada-pytorch weights: a network snapshot pickle (read without torch
  # or NVIDIA's code, gandance_jax.interop), a .pth of NVIDIA-keyed state dicts (e.g. written
  # by `python -m gandance_jax.interop export`) or an .npz of state dicts
  python -m gandance_jax.main --config=configs/cifar10.py --workdir=runs/ft \\
      --config.train.init_from=network-snapshot-025000.pkl

BigGAN-PyTorch checkpoints (G.pth / D.pth folders) are refused: BigGAN training is not wired.
The `.npz` holds numpy arrays keyed ``G.<name>``, ``D.<name>`` and optionally ``G_ema.<name>``
as in the modules' ``state_dict()``; with NVIDIA's code on the path::

  import legacy, numpy as np
  with open('network-snapshot.pkl', 'rb') as f:
    data = legacy.load_network_pkl(f)
  np.savez('cond.npz', **{f'{k}.{n}': t.detach().cpu().numpy()
                         for k in ('G', 'D', 'G_ema') for n, t in data[k].state_dict().items()})

The networks of the config must match the pre-trained ones (shapes are checked leaf by leaf,
errors name the leaf); only `empty_class` may go from False to True.

Widening an embedding keeps the network's function: the equalised-lr `embed` layer scales
its weight by 1/sqrt(c_dim), so the stored class rows are multiplied by sqrt((K + 1) / K)
and class-conditional outputs are unchanged. The new row (`config.train.init_empty`) is
'mean', the mean of the class rows (the embedding of the average one-hot label, a warm start
for the joint distribution), or 'init', this run's freshly initialised row. Optimizer
states, pl_mean, augment p and the step start fresh; the G EMA starts from the pre-trained
G_ema and runs without ramp-up (`TrainHParams.ema_rampup_effective`, NVIDIA's --resume rule).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np

from gandance_jax import errors
from gandance_jax import interop
from gandance_jax import multihost
from gandance_jax.networks import stylegan2
from gandance_jax.train import state as state_lib
from gandance_jax.train.hparams import HParams

INIT_EMPTY = ("mean", "init")
PyTree = Any


class WarmStartError(errors.BadInputError):
  """The pre-trained weights do not fit the config; the message names the leaf."""


def _is_embed_weight(path: tuple[str, ...]) -> bool:
  return len(path) >= 2 and path[-2] == "embed" and path[-1] == "weight"


def _flat(tree: PyTree) -> dict[tuple[str, ...], Any]:
  return {tuple(str(getattr(k, "key", k)) for k in p): v
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def widen_embedding(weight: np.ndarray, fresh_row: np.ndarray | None = None,
                    init: str = "mean") -> np.ndarray:
  """A stored `embed` weight [K, F] -> [K + 1, F] with the same class embeddings.

  Args:
    weight: the equalised-lr layer's stored weight (effective weight = weight / sqrt(K)).
    fresh_row: [F], the new row as stored by this run's init (used when init == 'init').
    init: 'mean' (effective new row = mean of the effective class rows) or 'init'.
  """
  w = np.asarray(weight, np.float32)
  k = w.shape[0]
  # Effective rows are w / sqrt(K); after widening they are w' / sqrt(K + 1).
  scaled = w * np.float32(np.sqrt((k + 1) / k))
  if init == "mean":
    new = scaled.mean(axis=0, keepdims=True)
  elif init == "init":
    if fresh_row is None:
      raise ValueError("init='init' needs the freshly initialised row")
    new = np.asarray(fresh_row, np.float32).reshape(1, -1)
  else:
    raise ValueError(f"init must be one of {list(INIT_EMPTY)}, got {init!r}")
  return np.concatenate([scaled, new], axis=0)


def fit(pretrained: PyTree, target: PyTree, name: str, init: str = "mean") -> PyTree:
  """`pretrained` numpy leaves arranged as `target` (this run's fresh variables).

  Equal shapes are copied; an `embed/weight` with one row fewer than the target is widened
  (`widen_embedding`). Anything else raises WarmStartError naming the leaf.
  """
  src, dst = _flat(pretrained), _flat(target)
  missing, unexpected = sorted(set(dst) - set(src)), sorted(set(src) - set(dst))
  if missing or unexpected:
    fmt = lambda paths: ["/".join(p) for p in paths[:6]]
    raise WarmStartError(f"{name}: the pre-trained network has another architecture: missing "
                         f"{fmt(missing)}, unexpected {fmt(unexpected)}")
  out = {}
  for path, want in dst.items():
    have = np.asarray(src[path])
    label = f"{name}/{'/'.join(path)}"
    if have.shape == tuple(want.shape):
      out[path] = have.astype(want.dtype)
    elif (_is_embed_weight(path) and have.ndim == 2 and have.shape[1] == want.shape[1]
          and have.shape[0] + 1 == want.shape[0]):
      out[path] = widen_embedding(have, np.asarray(want)[-1], init)
    else:
      raise WarmStartError(f"{label} has shape {have.shape} in the pre-trained weights but "
                           f"{tuple(want.shape)} in this config (only empty_class may be "
                           "added; check the network settings)")
  leaves = [out[p] for p in dst]
  return jax.tree.unflatten(jax.tree.structure(target), leaves)


def _pretrained_module(hp: HParams, kind: str, c_dim: int, path: str):
  """This config's G or D, with or without the empty class to fit a pre-trained c_dim."""
  cfg = dict(hp.generator if kind == "G" else hp.discriminator)
  k = int(cfg["num_classes"])
  if c_dim not in (k, k + 1):
    raise WarmStartError(f"config.train.init_from = {path!r}: its {kind} has {c_dim} label "
                         f"inputs, the config has num_classes = {k} (+1 with the empty class)")
  cfg["empty_class"] = c_dim == k + 1
  return (stylegan2.Generator if kind == "G" else stylegan2.Discriminator)(**cfg)


def _from_state_dicts(state: dict[str, np.ndarray], path: str, hp: HParams
                      ) -> dict[str, PyTree]:
  """{'G', 'G_ema', 'D'} variables from NVIDIA state dicts keyed 'G.*', 'G_ema.*', 'D.*'."""
  for prefix in ("G.", "D."):
    if not any(k.startswith(prefix) for k in state):
      raise WarmStartError(f"config.train.init_from = {path!r} has no '{prefix}*' arrays "
                           f"(key prefixes: {sorted({k.split('.')[0] for k in state})}); "
                           "expected NVIDIA StyleGAN2 state dicts of G (or G_ema) and D")
  out = {}
  for prefix, kind in (("G.", "G"), ("G_ema.", "G"), ("D.", "D")):
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:  # No G_ema: the EMA starts at G.
      continue
    embed = sub.get("mapping.embed.weight")
    c_dim = 0 if embed is None else int(embed.shape[1])  # torch layout [out, in]
    module = _pretrained_module(hp, kind, c_dim, path)
    try:
      variables = stylegan2.variables_from_torch_state_dict(module, sub)
    except ValueError as e:
      raise WarmStartError(f"config.train.init_from = {path!r}: {e}") from None
    out[prefix[:-1]] = jax.tree.map(np.asarray, variables)
  out.setdefault("G_ema", out["G"])
  return out


def _from_torch_npz(path: str, hp: HParams) -> dict[str, PyTree]:
  """{'G', 'G_ema', 'D'} variables from an .npz of NVIDIA state dicts (see module doc)."""
  with np.load(path) as f:
    state = {k: np.asarray(f[k]) for k in f.files}
  return _from_state_dicts(state, path, hp)


# Keys that only BigGAN-PyTorch's G / D state dicts have (the shared class embedding, the
# spectral-norm buffers u0 / sv0).
_BIGGAN_KEYS = ("shared.weight", ".u0", ".sv0")


def _refuse_biggan(path: str, what: str) -> None:
  raise WarmStartError(
      f"config.train.init_from = {path!r} is {what}; warm starts from BigGAN-PyTorch files "
      "are not supported yet (BigGAN trains from scratch). Expected a run's workdir, a "
      "stylegan2-ada "
      "network-snapshot .pkl, or a StyleGAN2 .pth / .npz of NVIDIA state dicts")


def _from_pickle(path: str, hp: HParams) -> dict[str, PyTree]:
  """{'G', 'G_ema', 'D'} from a stylegan2-ada `network-snapshot-*.pkl` (its state dicts go
  through the same path as an .npz, so the networks are those of the config)."""
  try:
    snapshot = interop.load_nvidia_pickle(path)
  except interop.InteropError as e:
    raise WarmStartError(f"config.train.init_from: {e}") from None
  state = {f"{name}.{k}": v for name, sd in snapshot["state_dicts"].items()
           if name in ("G", "G_ema", "D") for k, v in sd.items()}
  return _from_state_dicts(state, path, hp)


def _from_pth(path: str, hp: HParams) -> dict[str, PyTree]:
  """{'G', 'G_ema', 'D'} from a torch `.pth` of NVIDIA-keyed state dicts {'G_ema', 'D', 'G'}
  (as `python -m gandance_jax.interop export` writes)."""
  try:
    state = interop.read_torch_state_dict(path)
  except interop.InteropError as e:
    raise WarmStartError(f"config.train.init_from: {e}") from None
  if any(k.endswith(_BIGGAN_KEYS) for k in state):
    _refuse_biggan(path, "a BigGAN-PyTorch state dict")
  if "G." not in {k[:2] for k in state} and any(k.startswith("G_ema.") for k in state):
    # An export holds G_ema and D only: the fine-tune's G starts at G_ema.
    state.update({"G." + k[len("G_ema."):]: v for k, v in state.items()
                  if k.startswith("G_ema.")})
  return _from_state_dicts(state, path, hp)


def _from_workdir(workdir: str) -> tuple[dict[str, PyTree], int]:
  """{'G', 'G_ema', 'D'} variables of a project run's newest readable checkpoint."""
  state, step = state_lib.load_train_state(workdir)
  return {"G": {"params": state.g_params, "buffers": state.g_buffers},
          "G_ema": {"params": state.g_ema_params, "buffers": state.g_buffers},
          "D": {"params": state.d_params, "buffers": state.d_buffers}}, step


def load_pretrained(path: str, hp: HParams) -> dict[str, PyTree]:
  """{'G', 'G_ema', 'D'}: {'params', 'buffers'} numpy trees from a workdir, a network
  snapshot .pkl, a .pth or an .npz of NVIDIA state dicts."""
  if os.path.isdir(path):
    if any(os.path.exists(os.path.join(path, f)) for f in ("G.pth", "G_ema.pth", "D.pth")):
      _refuse_biggan(path, "a BigGAN-PyTorch checkpoint folder (G.pth / D.pth)")
    variables, step = _from_workdir(path)
    logging.info("warm start: %s, checkpoint at step %d", path, step)
    return variables
  if not os.path.exists(path):
    raise WarmStartError(f"config.train.init_from = {path!r} does not exist (a workdir of a "
                         "run, a network-snapshot .pkl, or a .pth / .npz of NVIDIA state "
                         "dicts)")
  with open(path, "rb") as f:
    head = f.read(4)
  if path.endswith(".npz"):
    return _from_torch_npz(path, hp)
  if path.endswith((".pth", ".pt")) or head == b"PK\x03\x04":
    return _from_pth(path, hp)
  if path.endswith(".pkl"):
    return _from_pickle(path, hp)
  raise WarmStartError(f"config.train.init_from = {path!r} has an unknown kind (starts with "
                       f"{head!r}); expected a run's workdir, a network-snapshot .pkl, or a "
                       ".pth / .npz of NVIDIA state dicts")


def apply(state: Any, hp: HParams) -> Any:
  """A fresh TrainState with G, G EMA, D (and their buffers) from `config.train.init_from`.

  `state` may be replicated over several processes; the network fields of the result are
  host numpy trees (every process computes the same), which the caller places.
  """
  t = hp.train
  init = t.init_empty
  pre = load_pretrained(str(t.init_from), hp)
  host = lambda tree: jax.tree.map(np.asarray, multihost.local_copy(tree))
  g = fit(pre["G"], {"params": host(state.g_params), "buffers": host(state.g_buffers)}, "G",
          init)
  # G EMA: its own params; the buffers (w_avg, filters, noise) are G's, as in NVIDIA's loop.
  g_ema = fit(pre["G_ema"]["params"], host(state.g_ema_params), "G_ema", init)
  d = fit(pre["D"], {"params": host(state.d_params), "buffers": host(state.d_buffers)}, "D",
          init)
  return state.replace(g_params=g["params"], g_buffers=g["buffers"], g_ema_params=g_ema,
                       d_params=d["params"], d_buffers=d["buffers"])
