"""Throwaway probe (session 57): a slow-fast loop that differentiates through the memory's write.

Alg. 1b freezes each episode's Temp-LoRA and trains the base to read it; the write itself
(what a denoising step stores in the adapter) is never shaped, and measured reads stay at
1-3 % of the loss. Here the inner update is a differentiable, per-tensor RMS-normalised
SGD step (the size of Adam's first step, lr * sign-like), taken with create_graph, so the
outer loss on the return chunks reaches the base weights through what they wrote.

Usage (commands: README.md beside this file):
    python docs/results/retrace_s57_second_order_loop/meta_probe.py --train 0-179 --val 180-199 --out DIR
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from agent.evaluate import paired_differences
from envs.dataset import ChunkDataset
from worldmodel.memory import EpisodeMemory, MemoryConfig, adapter_parameters, base_parameters
from worldmodel.model import VideoWorldModel
from tasks.retrace import RETURN_KINDS
from worldmodel.slowfast import base_state_dict, episode_chunks, outer_pairs

p = argparse.ArgumentParser()
p.add_argument("--checkpoint", default="checkpoints/retrace/worldmodel")
p.add_argument("--data", default="data/retrace")
p.add_argument("--train", default="0-179")
p.add_argument("--val", default="180-199")
p.add_argument("--out", required=True)
p.add_argument("--lr", type=float, default=1e-4)
p.add_argument("--inner-lr", type=float, default=1e-3)
p.add_argument("--crop", type=int, default=8)
p.add_argument("--samples", type=int, default=2)
p.add_argument("--eval-every", type=int, default=30)
p.add_argument("--episodes", type=int, default=0, help="train episodes to run (0: all of --train)")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--eval-only", default="", help="a base.pt this probe saved: evaluate it and stop")
p.add_argument("--first-order", action="store_true", help="detach the write (Alg. 1b with this write)")
args = p.parse_args()
torch.set_num_threads(args.threads)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

span = lambda s: list(range(int(s.split("-")[0]), int(s.split("-")[1]) + 1))  # noqa: E731
model = VideoWorldModel.from_pretrained(args.checkpoint)
memory = EpisodeMemory(model, MemoryConfig.for_model(model, crop=args.crop, seed=0))
unet = model.unet
unet.eval()  # no dropout: the probe compares losses under one noise draw
lora_names = [n for n, _ in unet.named_parameters() if "lora_" in n]
lora_init = {n: t.detach().clone() for n, t in unet.named_parameters() if "lora_" in n}
dataset = ChunkDataset(args.data, model.config.context_frames)
encode = lambda eps: {e: episode_chunks(dataset, e, model) for e in eps}  # noqa: E731
val = encode(span(args.val))


class Call(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, fn):
        return fn()


call = Call(unet)


def with_lora(lora, fn):
    return torch.func.functional_call(call, {f"unet.{n}": t for n, t in lora.items()}, (fn,), strict=False)


def write(lora, previous, new, generator, create_graph):
    """One memory step on the local (Eq. 3) window: noised whole window, no text, random crop."""
    window = torch.cat([previous, new], dim=2)[:, :, -model.config.window:]
    size, crop = window.shape[-1], args.crop
    if crop and crop < size:
        top, left = (int(i) for i in torch.randint(0, size - crop + 1, (2,), generator=generator))
        window = window[..., top:top + crop, left:left + crop]
    loss = with_lora(lora, lambda: model.whole_window_loss(window, model.empty_text(1), generator))
    grads = torch.autograd.grad(loss, [lora[n] for n in lora_names], create_graph=create_graph)
    return {n: lora[n] - args.inner_lr * g / (g.square().mean() + 1e-16).sqrt()
            for n, g in zip(lora_names, grads)}


def snapshots(chunks, generator, create_graph):
    lora = {n: t.clone().requires_grad_(True) for n, t in lora_init.items()}
    shots = []
    for c in chunks:
        context = c["context"][:, :, -int(c["context_len"]):]
        lora = write(lora, context, c["target"], generator, create_graph)
        if not create_graph:
            lora = {n: t.detach().requires_grad_(True) for n, t in lora.items()}
        shots.append(lora)
    return shots


def read(lora, chunk, seed):
    g = torch.Generator().manual_seed(seed)
    rep = lambda x: x.repeat(args.samples, *([1] * (x.dim() - 1)))  # noqa: E731
    text = model.embed([chunk["text"]] * args.samples)
    return with_lora(lora, lambda: model.training_loss(rep(chunk["context"]), rep(chunk["context_len"]),
                                                       rep(chunk["target"]), text, g))


def evaluate():
    """Return-pair losses on the held-out episodes: own memory, next episode's, none (same noise)."""
    eps = sorted(val)
    shots = {e: snapshots(val[e], torch.Generator().manual_seed(e), create_graph=False) for e in eps}
    zero = {n: torch.zeros_like(t) if "lora_B" in n else t for n, t in lora_init.items()}
    rows = {"own": [], "other": [], "none": []}
    with torch.no_grad():
        for k, e in enumerate(eps):
            other = shots[eps[(k + 1) % len(eps)]]
            for i in outer_pairs(val[e], RETURN_KINDS):
                seed = 7919 * e + i
                rows["own"].append(read(shots[e][i], val[e][i + 1], seed).item())
                rows["other"].append(read(other[min(i, len(other) - 1)], val[e][i + 1], seed).item())
                rows["none"].append(read(zero, val[e][i + 1], seed).item())
    r = {k: np.array(v) for k, v in rows.items()}
    return {"own": float(r["own"].mean()), "other": float(r["other"].mean()), "none": float(r["none"].mean()),
            "own_vs_other": float((r["own"] / r["other"] - 1).mean()),
            "own_vs_none": float((r["own"] / r["none"] - 1).mean()),
            "own_below_other": int((r["own"] < r["other"]).sum()), "pairs": len(r["own"]),
            "own_minus_other": paired_differences(r["own"], r["other"]),
            "own_minus_none": paired_differences(r["own"], r["none"])}


log = open(out / "log.jsonl", "a")
optimizer = torch.optim.AdamW(base_parameters(unet), lr=args.lr, weight_decay=0.0)
for q in adapter_parameters(unet):
    q.requires_grad_(False)
train = span(args.train)[:args.episodes or None]
if args.eval_only:
    saved = torch.load(args.eval_only)
    names = {k.replace(".base_layer", ""): k for k in unet.state_dict() if "lora_" not in k}
    assert set(saved) == set(names), "base.pt does not match this UNet"
    unet.load_state_dict({names[k]: v for k, v in saved.items()}, strict=False)
with sdpa_kernel(SDPBackend.MATH):  # the CPU flash kernel has no double backward
    began = time.perf_counter()
    entry = {"episodes_done": 0, "eval": evaluate(), "seconds": round(time.perf_counter() - began, 1)}
    print(json.dumps(entry), flush=True)
    log.write(json.dumps(entry) + "\n")
    if args.eval_only:
        raise SystemExit
    for done, e in enumerate(train, 1):
        began = time.perf_counter()
        chunks = episode_chunks(dataset, e, model)
        shots = snapshots(chunks, torch.Generator().manual_seed(e), create_graph=not args.first_order)
        pairs = outer_pairs(chunks, RETURN_KINDS)
        loss = sum(read(shots[i], chunks[i + 1], 1_000_003 * e + i) for i in pairs) / len(pairs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(base_parameters(unet), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        entry = {"episodes_done": done, "episode": e, "loss": loss.item(),
                 "seconds": round(time.perf_counter() - began, 1)}
        if done % args.eval_every == 0 or done == len(train):
            entry["eval"] = evaluate()
            torch.save(base_state_dict(unet), out / "base.pt")
        print(json.dumps(entry), flush=True)
        log.write(json.dumps(entry) + "\n")
        log.flush()
