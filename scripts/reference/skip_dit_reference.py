#!/usr/bin/env python3
"""Golden reference for the C++ Skip-DiT parity test.

Re-implements Skip-DiT (OpenSparseLLMs/Skip-DiT class-to-image/models.py, class DiT_skip) in
plain PyTorch on top of the DiT pieces of dit_reference.py, with the official state-dict key
names: the DiT keys plus
  skip_norms.{i}.weight / .bias          LayerNorm(2D, affine, eps 1e-6), computed in fp32
  skip_linears.{i}.linear.weight / .bias Linear(2D -> D)
for i < depth//2. Forward: for block i >= depth//2, x <- skip_linear(skip_norm(cat[x, pop()]))
(the merge replaces x, it is not a residual), then the block; the outputs of blocks
i < depth//2 are pushed on a stack (LIFO). Every parameter except pos_embed is randomised.

Example:
  /usr/bin/python3 scripts/reference/skip_dit_reference.py --preset Skip-DiT-S/2 --input-size 16 \
      --in-channels 4 --num-classes 10 --learn-sigma true --batch 4 --seed 0 \
      --out-weights W.safetensors --out-inputs IN.safetensors --out-expected OUT.safetensors \
      --cfg-scale 4.0 --cfg-channels 3 --out-expected-cfg OUTCFG.safetensors
"""
import argparse, os, sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_reference import (DiT, add_common_args, make_inputs, parse_preset, randomise,  # noqa: E402
                           save_safetensors)


class FP32LayerNorm(nn.LayerNorm):
    """Official FP32_Layernorm: LayerNorm computed in float32, cast back to the input dtype."""
    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class ResidualLinear(nn.Module):
    """Official ResidualLinear: a plain Linear(2D, D) (its second forward argument is unused)."""
    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, cat):
        return self.linear(cat)


class SkipDiT(DiT):
    def __init__(self, depth=28, hidden_size=1152, **kw):
        super().__init__(depth=depth, hidden_size=hidden_size, **kw)
        # Registered after the DiT modules, as in the official class (same state-dict order).
        self.skip_norms = nn.ModuleList(
            [FP32LayerNorm(2 * hidden_size, elementwise_affine=True, eps=1e-6) for _ in range(depth // 2)])
        self.skip_linears = nn.ModuleList([ResidualLinear(hidden_size) for _ in range(depth // 2)])

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)  # labels used as given (no dropout)
        half = len(self.blocks) // 2
        skips = []
        for i, blk in enumerate(self.blocks):
            if i >= half:
                cat = torch.cat([x, skips.pop()], dim=-1)
                x = self.skip_linears[i - half](self.skip_norms[i - half](cat))
            x = blk(x, c)
            if i < half:
                skips.append(x)
        return self.unpatchify(self.final_layer(x, c))
    # forward_with_cfg is DiT's (it calls self.forward), with cfg_channels guided channels.


def parse_skip_preset(name):
    if not name.startswith("Skip-DiT-"):
        sys.exit("unknown preset %r (expected Skip-DiT-{S,B,L,XL}/{2,4,8})" % name)
    return parse_preset(name[len("Skip-"):])  # "Skip-DiT-S/2" -> DiT-S/2 sizes


@torch.no_grad()
def randomise_skip(model, seed):
    # dit_reference.randomise covers every parameter (skip modules included): weights
    # std 1/sqrt(fan_in), biases std 0.1. The skip LayerNorm gains then get 1 + N(0, 0.1^2) so the
    # merge keeps an O(1) scale instead of shrinking x by ~10x at every decoder block.
    randomise(model, seed)
    for n in model.skip_norms:
        n.weight.add_(1.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="Skip-DiT-S/2")
    for k in ("depth", "hidden-size", "num-heads", "patch-size"):
        ap.add_argument("--" + k, type=int, default=None, help="override the preset")
    add_common_args(ap)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    cfg = parse_skip_preset(a.preset)
    for k in ("depth", "hidden_size", "num_heads", "patch_size"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    if cfg["depth"] % 2:
        sys.exit("Skip-DiT needs an even depth (the official forward pops depth - depth//2 skips)")
    if a.input_size % cfg["patch_size"]:
        sys.exit("input-size must be divisible by patch-size")
    if a.out_expected_cfg and a.batch % 2:
        sys.exit("--out-expected-cfg needs an even --batch")

    model = SkipDiT(input_size=a.input_size, in_channels=a.in_channels, num_classes=a.num_classes,
                    learn_sigma=a.learn_sigma, mlp_ratio=4.0, **cfg).eval()
    randomise_skip(model, a.seed)
    save_safetensors({k: v.float() for k, v in model.state_dict().items()}, a.out_weights)

    x, t, y = make_inputs(a)
    save_safetensors({"x": x, "t": t, "y": y}, a.out_inputs)

    with torch.no_grad():
        out = model(x, t, y)
        if not torch.isfinite(out).all():
            sys.exit("non-finite reference output")
        save_safetensors({"out": out.contiguous()}, a.out_expected)
        if a.out_expected_cfg:
            out_cfg = model.forward_with_cfg(x, t, y, a.cfg_scale, a.cfg_channels)
            save_safetensors({"out": out_cfg.contiguous()}, a.out_expected_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print("%s D=%d depth=%d heads=%d p=%d skips=%d params=%d out%s mean|out|=%.4f max|out|=%.4f" % (
        a.preset, cfg["hidden_size"], cfg["depth"], cfg["num_heads"], cfg["patch_size"],
        cfg["depth"] // 2, n_params, tuple(out.shape), out.abs().mean().item(), out.abs().max().item()))


if __name__ == "__main__":
    main()
