#!/usr/bin/env python3
"""Golden reference for the C++ DiT parity test.

Re-implements the official facebookresearch/DiT model (models.py) in plain PyTorch,
with the exact official state-dict key names, randomises every parameter (except the
fixed sin-cos pos_embed), and writes weights / inputs / expected outputs as
safetensors files using a tiny pure-Python safetensors writer (no safetensors/timm).

Example:
  /usr/bin/python3 scripts/reference/dit_reference.py --preset DiT-S/4 --input-size 16 \
      --in-channels 4 --num-classes 10 --learn-sigma true --batch 4 --seed 0 \
      --out-weights W.safetensors --out-inputs IN.safetensors --out-expected OUT.safetensors \
      --cfg-scale 4.0 --cfg-channels 3 --out-expected-cfg OUTCFG.safetensors
"""
import argparse, ctypes, json, math, struct, sys
import torch
import torch.nn as nn

try:  # numpy is optional; only used as the fast tensor->bytes path
    import numpy as np
except ImportError:
    np = None

# --------------------------------------------------------------------------- model
def modulate(x, shift, scale):
    # adaLN: per-sample shift/scale broadcast over the token axis.
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """Conv2d(kernel=stride=p) then flatten to row-major tokens (N, T, D) (timm layout)."""
    def __init__(self, patch, in_ch, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        # Indices 0 and 2 give the official names mlp.0.* / mlp.2.*.
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        # float32 throughout, cos first, exactly like the official code.
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.freq_dim))


class LabelEmbedder(nn.Module):
    """Always num_classes+1 rows: the last row is the CFG null class. No dropout (eval only)."""
    def __init__(self, num_classes, dim):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y):
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        # qkv channels are laid out [q | k | v], each heads x head_dim.
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(self, x, c):
        sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh_msa, sc_msa))
        x = x + g_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh_mlp, sc_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim, patch, out_ch):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_ch, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def sincos_1d(embed_dim, pos):
    # MAE 1-D encoding in float64: [sin(pos*omega), cos(pos*omega)], sin first.
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(embed_dim, grid_size):
    # meshgrid(w, h) in 'xy' order: grid[0][i,j] = j (column), grid[1][i,j] = i (row).
    # First half of the channels encodes grid[0], second half grid[1] (as in MAE/DiT).
    coords = torch.arange(grid_size, dtype=torch.float32)
    g0, g1 = torch.meshgrid(coords, coords, indexing="xy")
    return torch.cat([sincos_1d(embed_dim // 2, g0), sincos_1d(embed_dim // 2, g1)], dim=1)


class DiT(nn.Module):
    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, num_classes=1000, learn_sigma=True):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.grid = input_size // patch_size
        # Fixed (non-trainable) parameter, same as the official model, so it lands in state_dict.
        pe = sincos_2d(hidden_size, self.grid).float().unsqueeze(0)
        self.pos_embed = nn.Parameter(pe, requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def unpatchify(self, x):
        # (N, T, p*p*C) -> (N, h, w, p, p, C) -> (N, C, h*p, w*p)
        c, p, h = self.out_channels, self.patch_size, self.grid
        x = x.reshape(x.shape[0], h, h, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, h * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for blk in self.blocks:
            x = blk(x, c)
        return self.unpatchify(self.final_layer(x, c))

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_channels=3):
        # Official behaviour: only the first half of x is used (duplicated); y carries the
        # conditional labels in the first half and null labels in the second half.
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        eps, rest = out[:, :cfg_channels], out[:, cfg_channels:]
        cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


PRESETS = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def parse_preset(name):
    size, patch = name.split("-", 1)[1].split("/")  # "DiT-S/4" -> ("S", "4")
    depth, dim, heads = PRESETS[size]
    return dict(depth=depth, hidden_size=dim, num_heads=heads, patch_size=int(patch))

# --------------------------------------------------------------------------- safetensors
_DT = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
       torch.uint8: "U8", torch.bool: "BOOL"}
_DT_INV = {v: k for k, v in _DT.items()}


def tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    if np is not None and t.dtype != torch.bfloat16:
        return t.numpy().tobytes()  # C-order, native (little-endian) bytes
    # Dependency-free fast path: copy the raw buffer straight out of memory.
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


def save_safetensors(tensors, path):
    assert sys.byteorder == "little", "safetensors data is little-endian"
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = tensor_bytes(t)
        header[name] = {"dtype": _DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - (8 + len(hjson)) % 8) % 8)  # pad so the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dtype = _DT_INV[info["dtype"]]
        buf = bytearray(data[b:e])  # writable copy so frombuffer does not warn
        flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(info["shape"]).clone()
    return out

# --------------------------------------------------------------------------- randomisation
@torch.no_grad()
def randomise(model, seed):
    """Overwrite every parameter except pos_embed with seeded random values.

    Official init zeroes adaLN and final-layer weights, which would make the test blind to
    them, so everything gets nonzero values. Weights use std = gain/sqrt(fan_in) to keep
    activations O(1); adaLN gets a smaller gain so the (1+scale) and gates stay moderate
    over many blocks.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name == "pos_embed":
            continue  # keep the true sin-cos table so C++ can check its own construction
        if name.endswith("embedding_table.weight"):
            std = 0.5
        elif p.dim() >= 2:
            gain = 0.5 if "adaLN_modulation" in name else 1.0
            std = gain / math.sqrt(p[0].numel())
        else:  # biases
            std = 0.1
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)


def str2bool(s):
    if s.lower() in ("1", "true", "yes", "y"):
        return True
    if s.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError("expected true/false, got %r" % s)


def add_common_args(ap):
    """The options every reference script shares (model-size options are added by each script)."""
    ap.add_argument("--input-size", type=int, default=16)
    ap.add_argument("--in-channels", type=int, default=4)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--learn-sigma", type=str2bool, default=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 keeps results bitwise reproducible")
    ap.add_argument("--out-weights", required=True)
    ap.add_argument("--out-inputs", required=True)
    ap.add_argument("--out-expected", required=True)
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--cfg-channels", type=int, default=3)
    ap.add_argument("--out-expected-cfg", default=None)


def make_inputs(a):
    """x, t, y from the parsed common args; y[-1] is the null (CFG) class."""
    # Inputs use their own generator so they do not depend on the model size.
    g = torch.Generator().manual_seed(a.seed + 1)
    N, C, H = a.batch, a.in_channels, a.input_size
    x = torch.randn(N, C, H, H, generator=g, dtype=torch.float32)
    t = torch.randint(0, 1000, (N,), generator=g, dtype=torch.int64)
    y = torch.randint(0, a.num_classes + 1, (N,), generator=g, dtype=torch.int64)
    y[-1] = a.num_classes  # make sure the null (CFG) class row is exercised
    return x, t, y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="DiT-S/4")
    for k in ("depth", "hidden-size", "num-heads", "patch-size"):
        ap.add_argument("--" + k, type=int, default=None, help="override the preset")
    add_common_args(ap)
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    cfg = parse_preset(a.preset)
    for k in ("depth", "hidden_size", "num_heads", "patch_size"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    if a.input_size % cfg["patch_size"]:
        sys.exit("input-size must be divisible by patch-size")
    if a.out_expected_cfg and a.batch % 2:
        sys.exit("--out-expected-cfg needs an even --batch")

    model = DiT(input_size=a.input_size, in_channels=a.in_channels, num_classes=a.num_classes,
                learn_sigma=a.learn_sigma, mlp_ratio=4.0, **cfg).eval()
    randomise(model, a.seed)
    save_safetensors({k: v.float() for k, v in model.state_dict().items()}, a.out_weights)

    x, t, y = make_inputs(a)
    save_safetensors({"x": x, "t": t, "y": y}, a.out_inputs)

    with torch.no_grad():
        out = model(x, t, y)
        save_safetensors({"out": out.contiguous()}, a.out_expected)
        if a.out_expected_cfg:
            out_cfg = model.forward_with_cfg(x, t, y, a.cfg_scale, a.cfg_channels)
            save_safetensors({"out": out_cfg.contiguous()}, a.out_expected_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print("%s D=%d depth=%d heads=%d p=%d params=%d out%s mean|out|=%.4f max|out|=%.4f" % (
        a.preset, cfg["hidden_size"], cfg["depth"], cfg["num_heads"], cfg["patch_size"], n_params,
        tuple(out.shape), out.abs().mean().item(), out.abs().max().item()))


if __name__ == "__main__":
    main()
