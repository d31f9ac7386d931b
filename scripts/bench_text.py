"""Does the world model use the subgoal text? Its loss with the true text vs with another one.

On held-out expert episodes, every chunk is noised at fixed timesteps with fixed noise and
the conditional denoising loss is measured with the chunk's own subgoal text and with each
other subgoal text of the same episode (same noise). A model that reads the text predicts
the true chunk better with its own text, most of all at high noise where x_t says little:
`relative_gain` = (loss with other texts - loss with the true text) / loss with the true
text, per timestep. ~0 means the text is ignored (session 12: the shipped models). The last
output line is one JSON object.

It also measures whether sampling follows the text, with the env's counterfactual subgoals
(`branch_subgoals`): from each episode's start the expert does the first subgoal and each of
its branches; at the first chunk where their frames part (retrace: the first; return_cubes:
where the carried cube starts to head elsewhere), given the frames before it, which all
share, one chunk is imagined for each text (same noise), and `branch_following` is the
fraction of those that are nearer (pixel MSE) to the expert's chunk for their own text
than to the expert's chunks for the other texts; `branch_chance` is what ignoring the
text scores on average (1 / number of alternatives).

Usage: python scripts/bench_text.py --task retrace [--seed 20000] [--episodes 6] [--checkpoint DIR]
       [--timesteps 300,600,900,999] [--context-frames 1] [--image-guidance G] [--text-guidance G]
       [--guidance-rescale PHI] [--guidance-t-min T] [--guidance-t-max T] [--deep-cache-interval N]
       [--static-tolerance GREY_LEVELS]
       [--snap-start T] [--snap-observe T] [--snap-keep-estimate true|false]

`--context-frames 1` gives the loss measurement one context frame, as a plan's first chunk has.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import envs
from envs.collect import branch_rollouts, rollout_expert
from jobconfig import add_fields, from_args
from worldmodel.generate import default_checkpoint
from worldmodel.model import SamplingOverrides, VideoWorldModel


def first_divergent_chunk(records: list[dict], chunk_frames: int) -> int:
    """Start of the first chunk in which the branches' expert frames differ: up to there they
    share every frame (a cube is reached and grasped the same way wherever it then goes), so
    the context is common and only the text can tell which of them comes next."""
    length = min(len(r["frames"]) for r in records)
    frames = np.stack([r["frames"][:length] for r in records])
    differs = np.flatnonzero((frames != frames[:1]).any(axis=(0, 2, 3, 4)))
    return int((differs[0] - 1) // chunk_frames * chunk_frames) if len(differs) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="retrace")
    parser.add_argument("--seed", type=int, default=20_000, help="first held-out episode seed")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--timesteps", default="300,600,900,999")
    parser.add_argument("--context-frames", type=int, default=None,
                        help="context frames given to the model (default: its full window)")
    add_fields(parser, SamplingOverrides)
    args = parser.parse_args()
    timesteps = [int(t) for t in args.timesteps.split(",")]
    model = VideoWorldModel.from_pretrained(args.checkpoint or default_checkpoint(args.task, "worldmodel"))
    model = from_args(SamplingOverrides, parser, args).apply_sampling(model)
    cfg = model.config
    context_frames = args.context_frames or cfg.context_frames
    env = envs.make(args.task)
    expert = envs.expert_for(env)
    true_loss = {t: [] for t in timesteps}
    other_loss = {t: [] for t in timesteps}
    seeds = list(range(args.seed, args.seed + args.episodes))
    records_of = {}
    for seed in seeds:
        record = records_of[seed] = rollout_expert(env, expert, seed)
        frames, subgoal_index = record["frames"], record["subgoal_index"]
        texts = sorted({s["text"] for s in record["subgoals"]})
        for start in range(0, len(subgoal_index) - cfg.chunk_frames + 1, cfg.chunk_frames):
            text = record["subgoals"][int(subgoal_index[start])]["text"]
            context, context_len = model.context_slots(
                model.latent.encode(frames[max(0, start + 1 - context_frames):start + 1][None]))
            target = model.latent.encode(frames[start + 1:start + 1 + cfg.chunk_frames][None])
            for t in timesteps:
                losses = {}
                for candidate in texts:
                    with torch.no_grad():
                        losses[candidate] = float(model.training_loss(
                            context, context_len, target, model.embed([candidate]),
                            torch.Generator().manual_seed(seed * 1000 + start), timesteps=torch.tensor([t])))
                true_loss[t].append(losses[text])
                other_loss[t].append(np.mean([v for k, v in losses.items() if k != text]))
    following, chance, starts = [], [], []
    for seed in seeds:
        records = [records_of[seed]] + branch_rollouts(env, seed)
        start = first_divergent_chunk(records, cfg.chunk_frames)
        starts.append(start)
        truths = np.stack([r["frames"][start + 1:start + 1 + cfg.chunk_frames] for r in records]).astype(np.float32)
        context = model.latent.encode(records[0]["frames"][None, max(0, start + 1 - context_frames):start + 1])
        for i, record in enumerate(records):
            latents = model.generate_chunk(context, [record["subgoals"][0]["text"]],
                                           generator=torch.Generator().manual_seed(seed))
            imagined = model.latent.decode(latents)[0].astype(np.float32)
            errors = ((truths - imagined[None]) ** 2).mean(axis=(1, 2, 3, 4))
            following.append(float(np.argmin(errors) == i))
            chance.append(1 / len(records))
    env.close()
    mean_true = [float(np.mean(true_loss[t])) for t in timesteps]
    mean_other = [float(np.mean(other_loss[t])) for t in timesteps]
    print(json.dumps({"task": args.task, "timesteps": timesteps, "loss_true_text": [round(v, 4) for v in mean_true],
                      "loss_other_texts": [round(v, 4) for v in mean_other],
                      "relative_gain": [round((o - a) / a, 4) for a, o in zip(mean_true, mean_other)],
                      "chunks": len(true_loss[timesteps[0]]), "context_frames": context_frames,
                      "branch_following": round(float(np.mean(following)), 4),
                      "branch_chance": round(float(np.mean(chance)), 4),
                      "branch_chunks": len(following), "branch_starts": starts, "seeds": seeds,
                      "sampling": SamplingOverrides.settings_of(model)}))


if __name__ == "__main__":
    main()
