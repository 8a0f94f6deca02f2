#!/usr/bin/env python3
"""Writes a safetensors state dict as a torch.save file, the way the official DiT repository saves
its weights: a plain state dict (like DiT-XL-2-256x256.pt), or with --training a training
checkpoint {"model", "ema", "opt", "args"} as facebookresearch/DiT's train.py writes.

usage: /usr/bin/python3 scripts/reference/to_torch_checkpoint.py W.safetensors OUT.pt [--training]
Used by the tests of `dit convert`; runs with Debian's python3-torch.
"""
import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_reference import load_safetensors  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("out")
    parser.add_argument("--training", action="store_true",
                        help="a training checkpoint; 'model' holds the weights x 2, 'ema' the weights")
    args = parser.parse_args()
    state = load_safetensors(args.weights)
    # torch.save(model.state_dict()) writes an OrderedDict whose values are tensors.
    state_dict = collections.OrderedDict((k, v.clone()) for k, v in state.items())
    if not args.training:
        torch.save(state_dict, args.out)
        return
    model = collections.OrderedDict((k, v * 2) for k, v in state_dict.items())
    params = [torch.nn.Parameter(v.clone()) for v in list(state_dict.values())[:3]]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    opt.step()
    torch.save({"model": model, "ema": state_dict, "opt": opt.state_dict(),
                "args": argparse.Namespace(model="DiT-S/8", epochs=1400, lr=1e-4)}, args.out)


if __name__ == "__main__":
    main()
