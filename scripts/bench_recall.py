"""Does an episode's Temp-LoRA memory help the world model predict a revisit?

On held-out go-and-return expert episodes (ground truth, no sampling): Temp-LoRA learns
the outbound half's chunks one after another, as the slow-fast loop's inner loop does;
then the conditional denoising loss of the return half's chunks (which revisit the same
places) is measured with and without the adapter, over the same fixed noise draws.
A memory the base model can read lowers it; ``relative_change`` < 0 is the goal.
Last output line: one JSON object.

Usage: python scripts/bench_recall.py --task retrace [--seed 10000] [--episodes 2]
       [--checkpoint DIR] [--memory-steps K] [--memory-lr LR] [--memory-crop N] [--variant local|original|global]
       [--targets temporal|spatial+temporal|temporal-decoder] [--noise-draws 16]
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
from worldmodel.generate import default_checkpoint
from worldmodel.memory import TARGETS, VARIANTS, EpisodeMemory, MemoryConfig
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
def conditional_loss(model: VideoWorldModel, chunks: list, draws: int) -> float:
    losses = []
    for context, chunk, text in chunks:
        context, context_len = model.context_slots(context)
        rep = (draws, 1, 1, 1, 1)
        losses.append(float(model.training_loss(
            context.repeat(rep), context_len.repeat(draws), chunk.repeat(rep),
            model.embed([text]).repeat(draws, 1, 1), torch.Generator().manual_seed(len(losses)))))
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="retrace")
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="world model folder (default: the shipped base)")
    own = "(default: the world model's own Temp-LoRA settings, else MemoryConfig's)"
    parser.add_argument("--memory-steps", type=int, default=None, help=own)
    parser.add_argument("--memory-lr", type=float, default=None, help=own)
    parser.add_argument("--memory-crop", type=int, default=None, help=own)
    parser.add_argument("--variant", default=None, choices=VARIANTS, help=own)
    parser.add_argument("--targets", default=None, choices=sorted(TARGETS), help=own)
    parser.add_argument("--noise-draws", type=int, default=16)
    args = parser.parse_args()
    model = VideoWorldModel.from_pretrained(args.checkpoint or default_checkpoint(args.task, "worldmodel"))
    model.unet.eval()
    memory = EpisodeMemory(model, MemoryConfig.for_model(model, steps=args.memory_steps, lr=args.memory_lr,
                                                         crop=args.memory_crop,
                                                         variant=args.variant, targets=args.targets))
    env = envs.make(args.task, **({"num_legs": 6} if args.task == "retrace" else {}))
    expert = envs.expert_for(env)
    seeds = list(range(args.seed, args.seed + args.episodes))
    without, with_memory = [], []
    for seed in seeds:
        chunks = chunks_of(model, rollout_expert(env, expert, seed))
        outbound, returning = chunks[:len(chunks) // 2], chunks[len(chunks) // 2:]
        memory.reset()
        without.append(conditional_loss(model, returning, args.noise_draws))
        for context, chunk, _ in outbound:
            memory.update(context, chunk)
        with memory.merged():
            with_memory.append(conditional_loss(model, returning, args.noise_draws))
    env.close()
    print(json.dumps({
        "task": args.task, "checkpoint": args.checkpoint or "shipped base", "seeds": seeds,
        "loss_without_memory": [round(x, 5) for x in without], "loss_with_memory": [round(x, 5) for x in with_memory],
        "relative_change": round(float(np.mean(np.array(with_memory) / np.array(without) - 1)), 5),
        "memory": memory.config.to_dict(),
    }))


if __name__ == "__main__":
    main()
