"""Does a world model read its Temp-LoRA memory episodically? (The slow-fast loop's control.)

On held-out expert episodes (collected here from ``--seed``), the memory learns each
episode's ground-truth chunks exactly as the slow-fast loop's inner loop does; then every
pair X_i -> X_{i+1} that the loop's outer loss learns (``--outer-chunks``) is scored by the
masked diffusion loss with three adapters under the same noise (uniform noise levels, or biased
to the top of the schedule with ``--high-noise-portion/--high-noise-weight`` as in the loop):

- ``memory``: the episode's own snapshot after chunk i;
- ``no_memory``: the adapter zeroed (the base alone);
- ``other_memory``: the next held-out episode's snapshot after chunk i.

A model that uses what its memory holds has memory < other_memory; one that only learned a
bias any adapter of that size carries has memory ~ other_memory < no_memory. Differences are
paired pair by pair (``agent.evaluate.paired_differences``: 95 % bootstrap interval, Wilcoxon p).
Last output line: one JSON object.

Usage: python scripts/bench_memory_readout.py [--task retrace] [--checkpoint DIR] [--seed 10000]
       [--episodes 16] [--outer-chunks return|all] [--high-noise-portion P --high-noise-weight W]
       [--memory-steps K] [--memory-lr LR] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile

import numpy as np

import tasks
from agent.evaluate import paired_differences
from envs.collect import collect
from envs.dataset import ChunkDataset
from jobconfig import CpuThreads, add_fields, from_args
from worldmodel.generate import default_checkpoint
from worldmodel.memory import EpisodeMemory, MemoryOverrides
from worldmodel.model import VideoWorldModel
from worldmodel.slowfast import episode_chunks, memory_readings
from worldmodel.train import NoiseLevelBias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="retrace", choices=tasks.names())
    parser.add_argument("--checkpoint", default=None, help="world model folder (default: the shipped base)")
    parser.add_argument("--seed", type=int, default=10_000, help="first held-out episode seed (also the noise seed)")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--outer-chunks", default="return", choices=("return", "all"),
                        help="pairs scored: those whose X_{i+1} is in the return phase, or all")
    add_fields(parser, MemoryOverrides)
    add_fields(parser, NoiseLevelBias)
    add_fields(parser, CpuThreads)
    args = parser.parse_args()
    if args.episodes < 2:
        parser.error(f"--episodes must be >= 2 (other_memory reads another episode's), got {args.episodes}")
    levels = from_args(NoiseLevelBias, parser, args)
    from_args(CpuThreads, parser, args).apply_threads()
    model = VideoWorldModel.from_pretrained(args.checkpoint or default_checkpoint(args.task, "worldmodel"))
    if model.config.task != args.task:
        parser.error(f"--checkpoint is a {model.config.task!r} model, not --task {args.task!r}")
    memory = EpisodeMemory(model, from_args(MemoryOverrides, parser, args).memory_config(model, seed=args.seed))
    weights = None if levels.uniform_noise_levels else levels.timestep_weights(model.config.num_train_timesteps)
    kinds = tasks.get(args.task).RETURN_KINDS if args.outer_chunks == "return" else None
    with tempfile.TemporaryDirectory() as data:
        collect(args.task, data, args.episodes, args.seed, progress=False)
        dataset = ChunkDataset(data, model.config.context_frames)
        episodes = [episode_chunks(dataset, e, model) for e in range(args.episodes)]
    losses = memory_readings(model, memory, episodes, args.seed, kinds, weights)
    print(json.dumps({
        "task": args.task, "checkpoint": args.checkpoint or "shipped base",
        "seeds": [args.seed, args.seed + args.episodes - 1], "pairs": len(losses["memory"]),
        "outer_chunks": args.outer_chunks, "noise_levels": dataclasses.asdict(levels),
        "memory": memory.config.to_dict(),
        "loss": {name: float(np.mean(values)) for name, values in losses.items()},
        "memory_minus_no_memory": paired_differences(losses["memory"], losses["no_memory"]),
        "memory_minus_other_memory": paired_differences(losses["memory"], losses["other_memory"])}))


if __name__ == "__main__":
    main()
