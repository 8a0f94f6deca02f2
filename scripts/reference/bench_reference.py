#!/usr/bin/env python3
"""The PyTorch side of the race: times DiT training steps as a researcher would run them in
Python (the official DiT train.py recipe), printing one JSON line with the fields of `dit bench`.

One step = forward on q_sample(x0, t, noise) with 10% of the labels replaced by the null class
(the official LabelEmbedder.token_drop, class_dropout_prob 0.1), the DiT loss (MSE on the noise +
the VLB term for the learned variance with clip_denoised=False, as the official
GaussianDiffusion.training_losses), backward, AdamW (lr 1e-4, no weight decay), and the EMA update
of every parameter (decay 0.9999). Attention uses F.scaled_dot_product_attention where PyTorch has
it, as timm's Attention does.

  /usr/bin/python3 scripts/reference/bench_reference.py --model DiT-S/2 --batch 8 --threads 2
  python3 scripts/reference/bench_reference.py --model DiT-XL/2 --batch 256 --device cuda \
      --precision bf16 --compile
"""
import argparse, json, math, os, statistics, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dit_reference as ref  # noqa: E402


def fused_attention(self, x):
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    return self.proj(out.transpose(1, 2).reshape(B, N, C))


if hasattr(F, "scaled_dot_product_attention"):
    ref.Attention.forward = fused_attention

CLASS_DROPOUT_PROB = 0.1  # the official DiT's class_dropout_prob (train.py keeps the default)


def label_embedder_with_dropout(self, y):
    """The official LabelEmbedder in training: token_drop replaces each label by the null class
    (index num_classes, the table's last row) with probability 0.1, drawn on the labels' device.
    The parity reference's embedder has no dropout: it is only ever evaluated."""
    if self.training:
        null_class = self.embedding_table.num_embeddings - 1  # [num_classes + 1, D]
        drop = torch.rand(y.shape[0], device=y.device) < CLASS_DROPOUT_PROB
        y = torch.where(drop, null_class, y)
    return self.embedding_table(y)


ref.LabelEmbedder.forward = label_embedder_with_dropout


class Diffusion:
    """Linear betas 1e-4..0.02 over 1000 steps; the DiT training loss (mse + vb)."""

    def __init__(self, device, steps=1000):
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        post_var = betas * (1 - prev) / (1 - alphas_cumprod)
        f = lambda v: v.float().to(device)
        self.steps = steps
        self.sqrt_ac, self.sqrt_1mac = f(alphas_cumprod.sqrt()), f((1 - alphas_cumprod).sqrt())
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = f((1 / alphas_cumprod).sqrt()), f((1 / alphas_cumprod - 1).sqrt())
        self.post_logvar = f(torch.log(torch.cat([post_var[1:2], post_var[1:]])))
        self.log_betas = f(torch.log(betas))
        self.coef1 = f(betas * prev.sqrt() / (1 - alphas_cumprod))
        self.coef2 = f((1 - prev) * (1 - betas).sqrt() / (1 - alphas_cumprod))

    @staticmethod
    def _at(a, t):
        return a[t].view(-1, 1, 1, 1)

    def loss(self, model, x0, t, y, noise):
        at = self._at
        x_t = at(self.sqrt_ac, t) * x0 + at(self.sqrt_1mac, t) * noise
        out = model(x_t, t, y).float()
        C = x0.shape[1]
        eps, var_values = out[:, :C], out[:, C:]
        mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
        # VLB on the variance only (stop-gradient on the mean), as improved DDPM. pred_x0 is not
        # clamped: training_losses calls _vb_terms_bpd(..., clip_denoised=False).
        frac = (var_values + 1) / 2
        logvar = frac * at(self.log_betas, t) + (1 - frac) * at(self.post_logvar, t)
        pred_x0 = at(self.sqrt_recip_ac, t) * x_t - at(self.sqrt_recipm1_ac, t) * eps.detach()
        mean = at(self.coef1, t) * pred_x0 + at(self.coef2, t) * x_t
        true_mean = at(self.coef1, t) * x0 + at(self.coef2, t) * x_t
        true_logvar = at(self.post_logvar, t)
        kl = 0.5 * (-1 + logvar - true_logvar + torch.exp(true_logvar - logvar)
                    + (true_mean - mean) ** 2 * torch.exp(-logvar))
        kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
        # t == 0: the decoder NLL (discretised Gaussian), as in the official code.
        centered = x0 - mean
        inv_std = torch.exp(-0.5 * logvar)
        cdf = lambda v: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
        cdf_plus, cdf_min = cdf(inv_std * (centered + 1 / 255)), cdf(inv_std * (centered - 1 / 255))
        log_probs = torch.where(x0 < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                                torch.where(x0 > 0.999, torch.log((1 - cdf_min).clamp(min=1e-12)),
                                            torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
        nll = -log_probs.mean(dim=(1, 2, 3)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return (mse + vb).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="DiT-S/2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--in-channels", type=int, default=4)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count-ops", metavar="FILE",
                    help="also count the operators of one more step into FILE (JSON, per name), "
                         "as dit bench --count-ops does")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    precision = a.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(a.seed)
    model = ref.DiT(input_size=a.input_size, in_channels=a.in_channels, num_classes=a.num_classes,
                    learn_sigma=True, **ref.parse_preset(a.model)).to(device)
    ema = ref.DiT(input_size=a.input_size, in_channels=a.in_channels, num_classes=a.num_classes,
                  learn_sigma=True, **ref.parse_preset(a.model)).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    diffusion = Diffusion(device)
    net = torch.compile(model) if a.compile else model
    x0 = torch.randn(a.batch, a.in_channels, a.input_size, a.input_size, device=device)
    y = torch.randint(0, a.num_classes, (a.batch,), device=device)

    @torch.no_grad()
    def update_ema(decay=0.9999):
        ema_params = dict(ema.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].mul_(decay).add_(p.data, alpha=1 - decay)

    def step():
        t = torch.randint(0, diffusion.steps, (a.batch,), device=device)
        noise = torch.randn_like(x0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = diffusion.loss(net, x0, t, y, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema()
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        start = time.perf_counter()
        step().item()  # the loss read back every step, as train.py's logging does
        sync()
        if i >= a.warmup:
            times.append(1e3 * (time.perf_counter() - start))
    ops_per_step = None
    if a.count_ops:  # after the timed steps: the profiler slows every call down
        # One intra-op thread: calls an operator makes on worker threads have no parent there and
        # would count as outermost (ditlab's counter skips parallel regions).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        with torch.autograd.profiler.profile() as prof:
            step().item()
            sync()
        torch.set_num_threads(threads)
        counts = {}
        for e in prof.function_events:  # outermost operator calls, as ditlab's OpCounter
            if not e.name.startswith("aten::"):
                continue
            parent = e.cpu_parent
            while parent is not None and not parent.name.startswith("aten::"):
                parent = parent.cpu_parent
            if parent is None:
                counts[e.name] = counts.get(e.name, 0) + 1
        with open(a.count_ops, "w") as f:
            json.dump(dict(sorted(counts.items())), f)
        ops_per_step = sum(counts.values())
    med = statistics.median(times)
    rec = dict(mode="train", impl="pytorch" + ("-compile" if a.compile else "-eager"), model=a.model,
               device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               precision=precision, batch=a.batch, input_size=a.input_size, in_channels=a.in_channels,
               threads=torch.get_num_threads(), steps=a.steps, parameters=params,
               images_per_s=a.batch / (med / 1e3), step_ms_median=med, step_ms_min=min(times),
               step_ms_max=max(times),
               peak_memory_mb=(torch.cuda.max_memory_allocated(device) / 1e6 if device.type == "cuda" else None),
               peak_reserved_mb=(torch.cuda.max_memory_reserved(device) / 1e6 if device.type == "cuda" else None),
               aten_ops_per_step=ops_per_step, torch=torch.__version__)
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
