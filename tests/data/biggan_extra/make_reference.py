"""Writes the extra BigGAN reference outputs of tests/test_biggan.py (run once, by hand).

  python make_reference.py --biggan_repo=/path/to/BigGAN-PyTorch --out_dir=.

Needs torch and numpy, and an unmodified checkout of ajbrock/BigGAN-PyTorch, whose
`BigGAN.py` / `layers.py` are imported from --biggan_repo (nothing of it is copied here).
For each setting in SETTINGS it builds the reference Generator / Discriminator, perturbs
every parameter and buffer by 0.1 * N(0, 1) (attention gammas by N(0, 1), so attention
matters), and saves `<name>.npz`:

  G.<key> / D.<key>           the perturbed state dicts (torch layout)
  in.z, in.labels, in.x_real  inputs (labels int64; x_real NCHW in [-1, 1])
  out.img                     G.eval()(z, G.shared(labels))            [B, 3, H, W]
  out.img_train_bn            the same from a train-mode copy
  out.d_logits_real           D.eval()(x_real, labels)                 [B, 1]
  out.d_logits_fake           D.eval()(out.img, labels)
  out.d_logits_real_train     D.train()(x_real, labels) (a copy)
  out.after_train.G.<key>     u<i>, sv<i>, stored_mean, stored_var after that train forward
  out.after_train.D.<key>
  grad.G.<key>                (settings with grads) d/dW of sum(out.img * in.img_weights)
                              in eval mode, for a few W
  grad.D.<key>                d/dW of sum(D.eval()(x_real, labels) * in.logit_weights)

and `settings.json`: each setting's constructor arguments (the golden JSON's names) and,
for the architecture-table check, the G/D state-dict key -> shape of one network per table
resolution (32, 64, 128, 256).
"""

import argparse
import copy
import json
import os
import sys

import numpy as np
import torch

SETTINGS = {
    # res 64, hier with dim_z 19 over 5 slots (chunk 3, 4 dims dropped), shared_dim 8 !=
    # chunk, 6 real classes + the empty one (n_classes counts it), 2 SVs and 2 power steps
    # (train mode then differs from eval), non-default eps, attention at 32 in G, 8 in D.
    "res64_hier_empty": dict(
        constructor=dict(resolution=64, G_ch=2, D_ch=2, dim_z=19, shared_dim=8, n_classes=7,
                         empty_class=True, G_attn="32", D_attn="8", hier=True, G_shared=True,
                         bottom_width=4, num_G_SVs=2, num_G_SV_itrs=2, num_D_SVs=2,
                         num_D_SV_itrs=2, BN_eps=1e-4, SN_eps=1e-8, D_wide=True,
                         G_init="ortho", D_init="ortho"),
        batch=2, labels=[6, 5]),
    # res 32 without hier (every block sees y alone, the whole z feeds the linear layer),
    # shared_dim 0 (= dim_z), attention at 32 in G, none in D, skinny D (D_wide False);
    # gradients of a few weights (spectral norm's sigma carries W's gradient).
    "res32_flat_skinny": dict(
        constructor=dict(resolution=32, G_ch=4, D_ch=4, dim_z=12, shared_dim=0, n_classes=5,
                         G_attn="32", D_attn="0", hier=False, G_shared=True, bottom_width=4,
                         num_G_SVs=1, num_G_SV_itrs=1, num_D_SVs=1, num_D_SV_itrs=1,
                         BN_eps=1e-5, SN_eps=1e-6, D_wide=False, G_init="N02", D_init="N02"),
        batch=4, labels=[4, 1, 3, 0], grads=True),
    # res 128, the ImageNet table, at width 1 (attention where it has >= 8 channels); one
    # sample to keep the file small (train-mode BN then averages over H, W only).
    "res128_hier": dict(
        constructor=dict(resolution=128, G_ch=1, D_ch=1, dim_z=20, shared_dim=6, n_classes=3,
                         G_attn="16", D_attn="8", hier=True, G_shared=True, bottom_width=4,
                         num_G_SVs=1, num_G_SV_itrs=1, num_D_SVs=1, num_D_SV_itrs=1,
                         BN_eps=1e-5, SN_eps=1e-6, D_wide=True, G_init="ortho",
                         D_init="ortho"),
        batch=1, labels=[2]),
}
TABLE_CONSTRUCTOR = dict(G_ch=8, D_ch=8, dim_z=120, shared_dim=128, n_classes=10, hier=True,
                         G_shared=True)
TABLE_ATTENTION = {32: ("16", "16"), 64: ("32", "16"), 128: ("64", "32"), 256: ("64", "32")}
GRAD_KEYS = {"G": ["shared.weight", "linear.weight", "blocks.0.0.bn1.gain.weight",
                   "output_layer.2.weight"],
             "D": ["blocks.0.0.conv1.weight", "linear.weight", "embed.weight"]}


def g_kwargs(c):
  keys = ("resolution", "G_ch", "dim_z", "shared_dim", "n_classes", "G_attn", "hier",
          "G_shared", "bottom_width", "num_G_SVs", "num_G_SV_itrs", "BN_eps", "SN_eps", "G_init")
  return {k: c[k] for k in keys if k in c}


def d_kwargs(c):
  keys = ("resolution", "D_ch", "n_classes", "D_attn", "D_wide", "num_D_SVs", "num_D_SV_itrs",
          "SN_eps", "D_init")
  return {k: c[k] for k in keys if k in c}


def perturb(model):
  with torch.no_grad():
    for key, t in model.state_dict().items():
      if t.is_floating_point():
        scale = 1.0 if key.endswith("gamma") else 0.1
        t.add_(scale * torch.randn_like(t))


def state(model, prefix):
  return {f"{prefix}.{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()}


def buffers_after(model, prefix):
  return {f"out.after_train.{prefix}.{k}": v.detach().numpy().copy()
          for k, v in model.state_dict().items()
          if k.rsplit(".", 1)[-1].startswith(("u", "sv", "stored_"))}


def make(BigGAN, name, spec):
  c = spec["constructor"]
  torch.manual_seed(sum(map(ord, name)))
  G = BigGAN.Generator(**g_kwargs(c), no_optim=True)
  D = BigGAN.Discriminator(**d_kwargs(c))
  perturb(G)
  perturb(D)
  G.eval()
  D.eval()
  b, res = spec["batch"], c["resolution"]
  out = {**state(G, "G"), **state(D, "D")}
  z = torch.randn(b, G.dim_z)
  labels = torch.tensor(spec["labels"], dtype=torch.int64)
  x_real = torch.rand(b, 3, res, res) * 2 - 1
  img_weights = torch.randn(b, 3, res, res)
  logit_weights = torch.randn(b, 1)
  with torch.no_grad():
    img = G(z, G.shared(labels))
    out["out.img"] = img.numpy()
    out["out.d_logits_real"] = D(x_real, labels).numpy()
    out["out.d_logits_fake"] = D(img, labels).numpy()
    G_train, D_train = copy.deepcopy(G).train(), copy.deepcopy(D).train()
    out["out.img_train_bn"] = G_train(z, G_train.shared(labels)).numpy()
    out["out.d_logits_real_train"] = D_train(x_real, labels).numpy()
    out.update(buffers_after(G_train, "G"))
    out.update(buffers_after(D_train, "D"))
  out.update({"in.z": z.numpy(), "in.labels": labels.numpy(), "in.x_real": x_real.numpy()})
  if spec.get("grads"):
    # Gradients in eval mode (sigma carries W's gradient; u and v do not).
    G_grad, D_grad = copy.deepcopy(G), copy.deepcopy(D)
    (G_grad(z, G_grad.shared(labels)) * img_weights).sum().backward()
    (D_grad(x_real, labels) * logit_weights).sum().backward()
    params = {"G": dict(G_grad.named_parameters()), "D": dict(D_grad.named_parameters())}
    for net, keys in GRAD_KEYS.items():
      for k in keys:
        out[f"grad.{net}.{k}"] = params[net][k].grad.numpy().copy()
    out.update({"in.img_weights": img_weights.numpy(), "in.logit_weights": logit_weights.numpy()})
  return {k: np.asarray(v, np.int64 if k == "in.labels" else np.float32)
          for k, v in out.items()}


def table_shapes(BigGAN):
  tables = {}
  for res, (g_attn, d_attn) in TABLE_ATTENTION.items():
    c = dict(TABLE_CONSTRUCTOR, resolution=res, G_attn=g_attn, D_attn=d_attn)
    G = BigGAN.Generator(**g_kwargs(c), no_optim=True, skip_init=True)
    D = BigGAN.Discriminator(**d_kwargs(c), skip_init=True)
    tables[str(res)] = dict(constructor=c,
                            G={k: list(v.shape) for k, v in G.state_dict().items()},
                            D={k: list(v.shape) for k, v in D.state_dict().items()})
  return tables


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--biggan_repo", required=True)
  parser.add_argument("--out_dir", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  sys.path.insert(0, args.biggan_repo)
  import BigGAN  # pylint: disable=import-outside-toplevel
  torch.set_default_dtype(torch.float32)
  meta = {"source": "ajbrock/BigGAN-PyTorch BigGAN.py + layers.py, unmodified, CPU float32",
          "torch": torch.__version__, "settings": {}, "tables": table_shapes(BigGAN)}
  for name, spec in SETTINGS.items():
    arrays = make(BigGAN, name, spec)
    np.savez_compressed(os.path.join(args.out_dir, f"{name}.npz"), **arrays)
    meta["settings"][name] = dict(constructor=spec["constructor"], batch=spec["batch"],
                                  grads=bool(spec.get("grads")))
  with open(os.path.join(args.out_dir, "settings.json"), "w") as f:
    json.dump(meta, f, indent=1)


if __name__ == "__main__":
  main()
