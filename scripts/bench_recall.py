"""Does an episode's Temp-LoRA memory help the world model predict a revisit?

On held-out go-and-return expert episodes (ground truth, no sampling): Temp-LoRA learns
the outbound half's chunks one after another, as the slow-fast loop's inner loop does;
then the conditional denoising loss of the return half's chunks (which revisit the same
places) is measured with and without the adapter, over the same fixed noise draws.
A memory the base model can read lowers it; ``relative_change`` < 0 is the goal.
``--learn-from return`` lets the memory learn the return half itself, the very chunks it is
then scored on: not a memory of the way out but an upper bound on how much of a chunk an
adapter of that form and budget holds at all. ``--timesteps`` adds the loss at fixed noise
levels (t near T is where a chunk's motion is decided). Last output line: one JSON object.

Usage: python scripts/bench_recall.py --task retrace [--seed 10000] [--episodes 2]
       [--checkpoint DIR] [--memory-steps K] [--memory-lr LR] [--memory-crop N] [--memory-variant local|original|global]
       [--memory-targets temporal|spatial+temporal|temporal-decoder] [--memory-reverse true|false]
       [--learn-from outbound|return] [--timesteps 300,700,950,999] [--noise-draws 16] [--legs 6]
Memory settings not given come from the world model (a slow-fast finetuned base carries
the ones it was trained with), else from MemoryConfig's defaults.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import envs
from envs.collect import rollout_expert
from jobconfig import add_fields, from_args
from worldmodel.generate import default_checkpoint
from worldmodel.memory import EpisodeMemory, MemoryOverrides
from worldmodel.model import VideoWorldModel


def chunks_of(model: VideoWorldModel, record: dict) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """(context, chunk, subgoal text) for each whole chunk after the first frame."""
    cfg = model.config
    latents = model.latent.encode(record["frames"][None])
    out = []
    for start in range(1, latents.shape[2] - cfg.chunk_frames + 1, cfg.chunk_frames):
        context = latents[:, :, max(0, start - cfg.context_frames):start]
        text = record["subgoals"][int(record["subgoal_index"][start - 1])]["text"]
        out.append((context, latents[:, :, start:start + cfg.chunk_frames], text))
    return out


@torch.no_grad()
def conditional_loss(model: VideoWorldModel, chunks: list, draws: int, timestep: int | None = None) -> float:
    """Mean masked denoising loss over ``chunks``, ``draws`` noise draws each (fixed per chunk),
    at random timesteps or all at ``timestep``."""
    losses = []
    for context, chunk, text in chunks:
        context, context_len = model.context_slots(context)
        rep = (draws, 1, 1, 1, 1)
        losses.append(float(model.training_loss(
            context.repeat(rep), context_len.repeat(draws), chunk.repeat(rep),
            model.embed([text]).repeat(draws, 1, 1), torch.Generator().manual_seed(len(losses)),
            timesteps=None if timestep is None else torch.full((draws,), timestep))))
    return float(np.mean(losses))


def relative_change(with_memory: list[float], without: list[float]) -> float:
    return round(float(np.mean(np.array(with_memory) / np.array(without) - 1)), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="retrace")
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="world model folder (default: the shipped base)")
    add_fields(parser, MemoryOverrides)
    parser.add_argument("--learn-from", choices=("outbound", "return"), default="outbound",
                        help="the half the memory learns; 'return' is the upper bound described above")
    parser.add_argument("--timesteps", default="", help="comma-separated fixed t to report as well, e.g. 700,999")
    parser.add_argument("--noise-draws", type=int, default=16)
    parser.add_argument("--legs", type=int, default=6,
                        help="retrace: legs of the way out (planning's episodes have 3)")
    args = parser.parse_args()
    try:
        timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--timesteps takes comma-separated integers, got {args.timesteps!r}")
    model = VideoWorldModel.from_pretrained(args.checkpoint or default_checkpoint(args.task, "worldmodel"))
    model.unet.eval()
    memory = EpisodeMemory(model, from_args(MemoryOverrides, parser, args).memory_config(model))
    bad = [t for t in timesteps if not 0 <= t < model.config.num_train_timesteps]
    if bad:
        parser.error(f"--timesteps must lie in [0, {model.config.num_train_timesteps}), got {bad}")
    if args.legs < 1:
        parser.error(f"--legs must be >= 1, got {args.legs}")
    env = envs.make(args.task, **({"num_legs": args.legs} if args.task == "retrace" else {}))
    expert = envs.expert_for(env)
    seeds = list(range(args.seed, args.seed + args.episodes))
    levels = [None, *timesteps]
    without, with_memory = {t: [] for t in levels}, {t: [] for t in levels}
    for seed in seeds:
        chunks = chunks_of(model, rollout_expert(env, expert, seed))
        outbound, returning = chunks[:len(chunks) // 2], chunks[len(chunks) // 2:]
        memory.reset()
        for t in levels:
            without[t].append(conditional_loss(model, returning, args.noise_draws, t))
        for context, chunk, _ in (outbound if args.learn_from == "outbound" else returning):
            memory.update(context, chunk)
        with memory.merged():
            for t in levels:
                with_memory[t].append(conditional_loss(model, returning, args.noise_draws, t))
    env.close()
    print(json.dumps({
        "task": args.task, "checkpoint": args.checkpoint or "shipped base", "seeds": seeds,
        "learn_from": args.learn_from, **({"legs": args.legs} if args.task == "retrace" else {}),
        "loss_without_memory": [round(x, 5) for x in without[None]],
        "loss_with_memory": [round(x, 5) for x in with_memory[None]],
        "relative_change": relative_change(with_memory[None], without[None]),
        "by_timestep": {str(t): {"loss_without_memory": round(float(np.mean(without[t])), 5),
                                 "loss_with_memory": round(float(np.mean(with_memory[t])), 5),
                                 "relative_change": relative_change(with_memory[t], without[t])}
                        for t in timesteps},
        "memory": memory.config.to_dict(),
    }))


if __name__ == "__main__":
    main()
