#!/usr/bin/env python3
"""Golden reference for the C++ U-DiT parity test.

Re-implements U-DiT (YuchuanTian/U-DiT udit_models.py, configs U_DiT_S/B/L: down_factor 2,
ffn_type 'rep', rep 1, mlp_ratio 2, attn_type 'v2', posemb_type 'rope2d', downsampler 'dwconv5',
down_shortcut 1) in plain PyTorch without einops, with the official state-dict key names.
Every parameter is randomised (logit_scale stays near ln 10).

The official FeedForward folds its re-parameterised branches when switched to eval mode
(add_buffer), writing into dwconv[0].weight in place. Here the weights are saved before anything
else, the expected outputs come from the training form of the FFN (project_in, GELU,
identity + dw5 + dw3 + dw1, project_out) with labels used as given (no label dropout), and the
folded form is built into separate tensors; the script checks that both forms agree (max
difference < 1e-4) and that folding leaves the state dict unchanged, and exits non-zero if not.

Example:
  /usr/bin/python3 scripts/reference/udit_reference.py --preset U-DiT-S --input-size 16 \
      --hidden-size 16 --num-heads 2 --level-depths 1,1,1,1,1 --in-channels 4 --num-classes 10 \
      --learn-sigma true --batch 4 --seed 0 --out-weights W.safetensors --out-inputs IN.safetensors \
      --out-expected OUT.safetensors --cfg-scale 4.0 --cfg-channels 3 --out-expected-cfg OUTCFG.safetensors
"""
import argparse, math, os, sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_reference import (DiT, LabelEmbedder, TimestepEmbedder, add_common_args,  # noqa: E402
                           make_inputs, randomise, save_safetensors)

LOGIT_SCALE_MAX = 4.6052  # the official literal (ln 100 = 4.605170...)


# --------------------------------------------------------------------------- layout helpers
def polyphase_split(x, d):
    """einops 'b c (h dh) (w dw) -> b (dh dw) (h w) c' with dh = dw = d."""
    b, c, H, W = x.shape
    h, w = H // d, W // d
    x = x.reshape(b, c, h, d, w, d)            # b c h dh w dw
    x = x.permute(0, 3, 5, 2, 4, 1)            # b dh dw h w c
    return x.reshape(b, d * d, h * w, c)


def polyphase_merge(x, d, h, w):
    """einops 'b (dh dw) he (h w) c -> b (he c) (h dh) (w dw)' with dh = dw = d."""
    b, _, he, _, c = x.shape
    x = x.reshape(b, d, d, he, h, w, c)        # b dh dw he h w c
    x = x.permute(0, 3, 6, 4, 1, 5, 2)         # b he c h dh w dw
    return x.reshape(b, he * c, h * d, w * d)


def layer_norm_2d(x, eps=1e-6):
    """Official LayerNorm2d without affine: LayerNorm over the channels at every pixel."""
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, (x.shape[-1],), None, None, eps)
    return x.permute(0, 3, 1, 2)


def modulate(x, shift, scale):
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


# --------------------------------------------------------------------------- RoPE-2D
def rope2d_freqs(head_dim, n, theta=10000.0):
    """precompute_freqs_cis_2d: (n, head_dim/2) complex, x and y rotations interleaved per frequency."""
    H = int(n ** 0.5)
    pos = torch.arange(n)
    x_pos, y_pos = pos % H, pos // H
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    x_cis = torch.polar(torch.ones(n, freqs.numel()), torch.outer(x_pos, freqs).float())
    y_cis = torch.polar(torch.ones(n, freqs.numel()), torch.outer(y_pos, freqs).float())
    return torch.stack([x_cis, y_cis], dim=-1).reshape(n, -1)


def apply_rope(x, freqs):
    """x: (B, n, heads, hd) real; adjacent channel pairs (2m, 2m+1) are (re, im)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3)
    return out.type_as(x)


# --------------------------------------------------------------------------- modules
class DownSampler(nn.Module):
    """Depthwise 5x5 conv + identity shortcut, then the polyphase token split."""
    def __init__(self, dim, down_factor, kernel=5):
        super().__init__()
        self.down_factor = down_factor
        self.layer = nn.Conv2d(dim, dim, kernel_size=kernel, stride=1, padding=(kernel - 1) // 2, groups=dim)

    def forward(self, x):
        return polyphase_split(self.layer(x) + x, self.down_factor)


class DownSampleAttn(nn.Module):
    """Official DownSample_Attn with attn_type 'v2' (cosine attention) and rope2d."""
    def __init__(self, dim, num_heads, down_factor):
        super().__init__()
        self.dim, self.heads, self.d = dim, num_heads, down_factor
        self.head_dim = dim // num_heads
        self.to_qkv = nn.Linear(dim, dim * 3, bias=True)
        self.to_out = nn.Conv2d(dim, dim, 1)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.downsampler = DownSampler(dim, down_factor)

    def forward(self, x):
        b, _, h, w = x.shape
        d, heads, hd = self.d, self.heads, self.head_dim
        tok = self.downsampler(x)                       # (b, d*d, n, dim)
        p, n = tok.shape[1], tok.shape[2]
        q, k, v = self.to_qkv(tok).chunk(3, dim=-1)     # each (b, p, n, dim)
        freqs = rope2d_freqs(hd, n)
        q = apply_rope(q.reshape(b * p, n, heads, hd), freqs)
        k = apply_rope(k.reshape(b * p, n, heads, hd), freqs)
        q = q.reshape(b, p, n, heads, hd).permute(0, 1, 3, 2, 4)   # b p heads n hd
        k = k.reshape(b, p, n, heads, hd).permute(0, 1, 3, 2, 4)
        v = v.reshape(b, p, n, heads, hd).permute(0, 1, 3, 2, 4)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp()
        out = attn.softmax(dim=-1) @ v                  # b p heads n hd
        return self.to_out(polyphase_merge(out, d, h // d, w // d))


class RepFeedForward(nn.Module):
    """Official FeedForward(rep=True, bias=True); fold() builds the inference form apart from the
    parameters (cloned, never written back), forward uses it only while self.folded is set."""
    def __init__(self, dim, ratio):
        super().__init__()
        hidden = self.hidden = int(dim * ratio)
        self.project_in = nn.Sequential(nn.Conv2d(dim, hidden // 2, 1), nn.Conv2d(hidden // 2, hidden, 1))
        self.dwconv = nn.ModuleList([
            nn.Conv2d(hidden, hidden, kernel_size=5, padding=2, groups=hidden),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden),
            nn.Conv2d(hidden, hidden, kernel_size=1, padding=0, groups=hidden)])
        self.project_out = nn.Sequential(nn.Conv2d(hidden, hidden // 2, 1), nn.Conv2d(hidden // 2, dim, 1))
        self.folded = None

    @torch.no_grad()
    def fold(self):
        def fuse(seq):
            w1, w2 = seq[0].weight[:, :, 0, 0], seq[1].weight[:, :, 0, 0]
            return (w2 @ w1)[:, :, None, None].clone(), (w2 @ seq[0].bias + seq[1].bias).clone()
        w_in, b_in = fuse(self.project_in)
        w_dw = self.dwconv[0].weight.clone()
        w_dw[:, :, 1:4, 1:4] += self.dwconv[1].weight
        w_dw[:, :, 2:3, 2:3] += self.dwconv[2].weight + 1.0  # the identity branch
        b_dw = self.dwconv[0].bias + self.dwconv[1].bias + self.dwconv[2].bias
        w_out, b_out = fuse(self.project_out)
        self.folded = (w_in, b_in, w_dw, b_dw, w_out, b_out)

    def unfold(self):
        self.folded = None

    def forward(self, x):
        if self.folded is None:  # training form
            a = F.gelu(self.project_in(x))  # exact (erf) GELU
            out = a
            for conv in self.dwconv:
                out = out + conv(a)
            return self.project_out(out)
        w_in, b_in, w_dw, b_dw, w_out, b_out = self.folded
        a = F.gelu(F.conv2d(x, w_in, b_in))
        a = F.conv2d(a, w_dw, b_dw, padding=2, groups=self.hidden)
        return F.conv2d(a, w_out, b_out)


class UDiTBlock(nn.Module):
    """Two attention + FFN sub-layers, each with its own adaLN (same 6-vector order as DiT)."""
    def __init__(self, dim, num_heads, mlp_ratio, down_factor):
        super().__init__()
        self.attn1 = DownSampleAttn(dim, num_heads, down_factor)
        self.mlp1 = RepFeedForward(dim, mlp_ratio)
        self.adaLN_modulation1 = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.attn2 = DownSampleAttn(dim, num_heads, down_factor)
        self.mlp2 = RepFeedForward(dim, mlp_ratio)
        self.adaLN_modulation2 = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    @staticmethod
    def sublayer(x, c, ada, attn, mlp):
        sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = ada(c).chunk(6, dim=1)
        x = x + g_msa[:, :, None, None] * attn(modulate(layer_norm_2d(x), sh_msa, sc_msa))
        x = x + g_mlp[:, :, None, None] * mlp(modulate(layer_norm_2d(x), sh_mlp, sc_mlp))
        return x

    def forward(self, x, c):
        x = self.sublayer(x, c, self.adaLN_modulation1, self.attn1, self.mlp1)
        return self.sublayer(x, c, self.adaLN_modulation2, self.attn2, self.mlp2)


class Downsample(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n, n // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n, n * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


class PatchEmbed3x3(nn.Module):
    """Official OverlapPatchEmbed: 3x3 conv, stride 1, no patchify."""
    def __init__(self, in_ch, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x):
        return self.proj(x)


class FinalLayer(nn.Module):
    def __init__(self, dim, out_ch):
        super().__init__()
        self.out_proj = nn.Conv2d(dim, out_ch, kernel_size=3, stride=1, padding=1, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.out_proj(modulate(layer_norm_2d(x), shift, scale))


class UDiT(nn.Module):
    def __init__(self, in_channels=4, hidden_size=96, depth=(2, 5, 8, 5, 2), num_heads=4, mlp_ratio=2,
                 num_classes=1000, learn_sigma=True, down_factor=2):
        super().__init__()
        C = hidden_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels

        def blocks(n, dim):
            return nn.ModuleList([UDiTBlock(dim, num_heads, mlp_ratio, down_factor) for _ in range(n)])

        # Registration order follows the official __init__.
        self.x_embedder = PatchEmbed3x3(in_channels, C)
        self.t_embedder_1 = TimestepEmbedder(C)
        self.y_embedder_1 = LabelEmbedder(num_classes, C)
        self.t_embedder_2 = TimestepEmbedder(2 * C)
        self.y_embedder_2 = LabelEmbedder(num_classes, 2 * C)
        self.t_embedder_3 = TimestepEmbedder(4 * C)
        self.y_embedder_3 = LabelEmbedder(num_classes, 4 * C)
        self.encoder_level_1 = blocks(depth[0], C)
        self.down1_2 = Downsample(C)                       # C -> 2C at half resolution
        self.encoder_level_2 = blocks(depth[1], 2 * C)
        self.down2_3 = Downsample(2 * C)                   # 2C -> 4C
        self.latent = blocks(depth[2], 4 * C)
        self.up3_2 = Upsample(4 * C)                       # 4C -> 2C at double resolution
        self.reduce_chan_level2 = nn.Conv2d(4 * C, 2 * C, kernel_size=1, bias=True)
        self.decoder_level_2 = blocks(depth[3], 2 * C)
        self.up2_1 = Upsample(2 * C)                       # 2C -> C
        self.reduce_chan_level1 = nn.Conv2d(2 * C, 2 * C, kernel_size=1, bias=True)
        self.decoder_level_1 = blocks(depth[4], 2 * C)     # level 1 decoder runs at 2C
        self.output = nn.Conv2d(2 * C, 2 * C, kernel_size=3, stride=1, padding=1, bias=True)
        self.final_layer = FinalLayer(2 * C, self.out_channels)

    def ffns(self):
        return [m for m in self.modules() if isinstance(m, RepFeedForward)]

    def fold(self):
        for m in self.ffns():
            m.fold()

    def unfold(self):
        for m in self.ffns():
            m.unfold()

    def forward(self, x, t, y):
        x = self.x_embedder(x)
        # Labels used as given: the official embedders drop labels only in training mode.
        c1 = self.t_embedder_1(t) + self.y_embedder_1(y)
        c2 = self.t_embedder_2(t) + self.y_embedder_2(y)
        c3 = self.t_embedder_3(t) + self.y_embedder_3(y)
        enc1 = x
        for blk in self.encoder_level_1:
            enc1 = blk(enc1, c1)
        enc2 = self.down1_2(enc1)
        for blk in self.encoder_level_2:
            enc2 = blk(enc2, c2)
        lat = self.down2_3(enc2)
        for blk in self.latent:
            lat = blk(lat, c3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(lat), enc2], dim=1))
        for blk in self.decoder_level_2:
            dec2 = blk(dec2, c2)
        dec1 = self.reduce_chan_level1(torch.cat([self.up2_1(dec2), enc1], dim=1))
        for blk in self.decoder_level_1:
            dec1 = blk(dec1, c2)  # c2, not c1: decoder level 1 runs at width 2C
        return self.final_layer(self.output(dec1), c2)

    # Official forward_with_cfg (the first half of x duplicated, guidance on the first
    # cfg_channels output channels; the official hard-codes 3).
    forward_with_cfg = DiT.forward_with_cfg

    def param_counts(self):
        """(training form, folded inference form) parameter counts."""
        train = sum(p.numel() for p in self.parameters())
        folded = train
        for m in self.ffns():
            folded -= sum(p.numel() for p in m.parameters())
            C, hid = m.project_in[0].in_channels, m.hidden
            folded += (C * hid + hid) + (hid * 25 + hid) + (hid * C + C)
        return train, folded


PRESETS = {"U-DiT-S": (96, 4), "U-DiT-B": (192, 8), "U-DiT-L": (384, 16)}


@torch.no_grad()
def randomise_udit(model, seed):
    # dit_reference.randomise: weights std gain/sqrt(fan_in) (depthwise kxk: 1/k), adaLN gain 0.5,
    # biases 0.1, label tables 0.5. logit_scale (a (heads,1,1) tensor, not a weight) is then
    # reset to ln 10 + N(0, 0.1^2), well under the clamp at ln 100.
    randomise(model, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    for name, p in model.named_parameters():
        if name.endswith("logit_scale"):
            p.copy_(math.log(10.0) + 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float32))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="U-DiT-S", choices=sorted(PRESETS))
    ap.add_argument("--hidden-size", type=int, default=None, help="override the preset (C)")
    ap.add_argument("--num-heads", type=int, default=None, help="override the preset")
    ap.add_argument("--level-depths", default=None, help="comma list of 5 block counts (default 2,5,8,5,2)")
    add_common_args(ap)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    C, heads = PRESETS[a.preset]
    C = a.hidden_size if a.hidden_size is not None else C
    heads = a.num_heads if a.num_heads is not None else heads
    depths = [2, 5, 8, 5, 2] if a.level_depths is None else [int(v) for v in a.level_depths.split(",")]
    if len(depths) != 5 or min(depths) < 0:
        sys.exit("--level-depths needs 5 non-negative counts")
    if C % 2 or C % heads or (C // heads) % 4:
        sys.exit("hidden-size must be even and hidden-size/num-heads a multiple of 4 (RoPE-2D)")
    if a.input_size % 8:
        sys.exit("input-size must be a multiple of 8 (two 2x resamplings, then 2x2 polyphase attention)")
    if a.out_expected_cfg and a.batch % 2:
        sys.exit("--out-expected-cfg needs an even --batch")

    model = UDiT(in_channels=a.in_channels, hidden_size=C, depth=depths, num_heads=heads, mlp_ratio=2,
                 num_classes=a.num_classes, learn_sigma=a.learn_sigma).eval()  # eval() folds nothing here
    randomise_udit(model, a.seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_safetensors({k: v.float() for k, v in state.items()}, a.out_weights)

    x, t, y = make_inputs(a)
    save_safetensors({"x": x, "t": t, "y": y}, a.out_inputs)

    with torch.no_grad():
        out = model(x, t, y)  # training form of the FFN
        if not torch.isfinite(out).all():
            sys.exit("non-finite reference output")
        save_safetensors({"out": out.contiguous()}, a.out_expected)
        out_cfg = None
        if a.out_expected_cfg:
            out_cfg = model.forward_with_cfg(x, t, y, a.cfg_scale, a.cfg_channels)
            save_safetensors({"out": out_cfg.contiguous()}, a.out_expected_cfg)

        model.fold()
        out_f = model(x, t, y)
        fold_diff = (out_f - out).abs().max().item()
        if out_cfg is not None:
            fold_diff = max(fold_diff, (model.forward_with_cfg(x, t, y, a.cfg_scale, a.cfg_channels)
                                        - out_cfg).abs().max().item())
        model.unfold()
    after = model.state_dict()
    unchanged = after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)

    n_train, n_folded = model.param_counts()
    print("%s C=%d heads=%d depths=%s params=%d params_folded=%d out%s mean|out|=%.4f max|out|=%.4f "
          "max|folded-train|=%.3g state_dict_unchanged=%s" % (
              a.preset, C, heads, ",".join(map(str, depths)), n_train, n_folded, tuple(out.shape),
              out.abs().mean().item(), out.abs().max().item(), fold_diff, unchanged))
    if not unchanged:
        sys.exit("folding changed the state dict")
    if not fold_diff < 1e-4:
        sys.exit("folded and training forms differ by %g" % fold_diff)


if __name__ == "__main__":
    main()
