"""Does an episode's Temp-LoRA memory hold the way back at all? A linear probe (retrace).

On the return, after the first chunk back (which reverses the last leg, still in view),
the agent must know which way each earlier leg went; the text ("retrace the path") does
not say, so only the memory can. This benchmark asks whether that knowledge is in the
memory, independently of whether the base model has learned to read it:

1. For each expert episode (held-out seeds), the memory learns the chunks the planner's
   memory has seen when it generates the second chunk back: the way out and the first
   chunk back, one update each, with the planner's per-episode memory seed.
2. Two readouts of it: ``weights`` = every adapter layer's weight change (peft's delta weight, scale * B @ A)
   (what the memory adds to the base), and ``effect`` = how it changes the UNet's
   prediction for that second chunk back (its real context and text, a fixed noise
   draw at ``--timestep``).
3. A ridge classifier (dual form; its penalty chosen by 5-fold cross-validation on the
   training episodes) predicts, for each of the last ``--legs`` legs of the way out, its
   sign along its axis (left/up vs right/down; the axis follows from the last leg's, which
   the context shows). Accuracy on the held-out test episodes, chance 0.5.

If the probe cannot read a leg's direction from the memory, a base model would have to read
it in a way no linear readout finds. ``power`` says how small a code the probe finds: its
accuracy once a direction coding the middle leg's sign is planted in the real readouts,
at 2-20 % of their spread from one episode to the next.
Last output line: one JSON object.

Usage: python scripts/bench_memory_probe.py [--seed 10000] [--episodes 300] [--test 100]
       [--checkpoint DIR] [--memory-steps K] [--memory-lr LR] [--memory-crop N]
       [--memory-variant local|original|global] [--memory-targets temporal|...] [--memory-reverse true|false]
       [--timestep 999]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch
from scipy.stats import binomtest
from tqdm import tqdm

import envs
from envs.collect import rollout_expert
from jobconfig import add_fields, from_args
from tasks.retrace import DIRECTIONS
from worldmodel.generate import default_checkpoint
from worldmodel.memory import ADAPTER, EpisodeMemory, MemoryOverrides
from worldmodel.model import VideoWorldModel


def leg_signs(record: dict) -> list[int]:
    """+1 (right / down) or -1 (left / up) for each leg of the way out, in order."""
    return [int(np.sign(sum(DIRECTIONS[s["params"]["direction"]])))
            for s in record["subgoals"] if s["kind"] == "walk"]


@torch.no_grad()
def readouts(model: VideoWorldModel, memory: EpisodeMemory, record: dict, legs: int, timestep: int) -> dict:
    cfg = model.config
    latents = model.latent.encode(record["frames"][None])
    starts = list(range(1, latents.shape[2] - cfg.chunk_frames + 1, cfg.chunk_frames))
    chunk = lambda s: latents[:, :, s:s + cfg.chunk_frames]  # noqa: E731
    context = lambda s: latents[:, :, max(0, s - cfg.context_frames):s]  # noqa: E731
    memory.reset()
    for s in starts[:legs + 1]:  # the way out and the first chunk back
        memory.update(context(s), chunk(s))
    weights = torch.cat([layer.get_delta_weight(ADAPTER).flatten() for _, _, layer in memory.wrapped])
    second_back = starts[legs + 1]
    ctx, ctx_len = model.context_slots(context(second_back))
    text = record["subgoals"][int(record["subgoal_index"][second_back - 1])]["text"]
    noise = torch.randn(chunk(second_back).shape, generator=torch.Generator().manual_seed(0))
    args = (ctx, ctx_len, noise, torch.tensor([timestep]), model.embed([text]))
    without = model.predict(*args)
    with memory.merged():
        with_memory = model.predict(*args)
    return {"weights": weights.double().numpy(), "effect": (with_memory - without).flatten().double().numpy()}


def ridge_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   seed: int) -> dict:
    """Dual-form ridge on +-1 labels; penalty (relative to the kernel's mean diagonal) by 5-fold CV."""
    mean = x_train.mean(0)
    x_train, x_test = x_train - mean, x_test - mean
    kernel = x_train @ x_train.T
    cross = x_test @ x_train.T
    scale = np.trace(kernel) / len(kernel)
    penalties = [scale * p for p in (1e-3, 1e-2, 1e-1, 1, 10, 100)]
    folds = np.random.default_rng(seed).permutation(len(y_train)) % 5

    def fit_predict(train, rows, penalty):
        k = kernel[np.ix_(train, train)]
        coef = np.linalg.solve(k + penalty * np.eye(len(k)), y_train[train] - y_train[train].mean())
        return rows[:, train] @ coef + y_train[train].mean()

    cv = [np.mean([np.mean(np.sign(fit_predict(folds != f, kernel[folds == f], p)) == y_train[folds == f])
                   for f in range(5)]) for p in penalties]
    best = penalties[int(np.argmax(cv))]
    correct = int(np.sum(np.sign(fit_predict(np.arange(len(y_train)), cross, best)) == y_test))
    return {"accuracy": round(correct / len(y_test), 4), "correct": correct, "n": len(y_test),
            "p_above_chance": float(f"{binomtest(correct, len(y_test), 0.5, alternative='greater').pvalue:.3g}"),
            "majority_baseline": round(max(np.mean(y_test > 0), np.mean(y_test < 0)), 4),
            "penalty": round(best / scale, 6), "cv_accuracy": round(max(cv), 4)}


def planted_power(x: np.ndarray, labels: np.ndarray, train: slice, test: slice, seed: int) -> dict:
    """The probe's test accuracy once a label-coded direction is planted in the real readouts,
    for a planted size given as a fraction of their spread (RMS distance from the mean
    readout): how small a code the probe would have found with these episodes."""
    spread = np.sqrt(np.mean(np.sum((x - x.mean(0)) ** 2, axis=1)))
    direction = np.random.default_rng(seed).normal(size=x.shape[1])
    direction /= np.linalg.norm(direction)
    out = {}
    for fraction in (0.02, 0.05, 0.1, 0.2):
        planted = x + np.outer(labels * fraction * spread, direction)
        out[str(fraction)] = ridge_accuracy(planted[train], labels[train], planted[test], labels[test],
                                            seed)["accuracy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=300, help="episodes in all, the last --test of them held out")
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--checkpoint", default=None, help="world model folder (default: the shipped base)")
    add_fields(parser, MemoryOverrides)
    parser.add_argument("--timestep", type=int, default=999, help="noise level of the effect readout")
    parser.add_argument("--legs", type=int, default=3, help="legs of the way out (planning's episodes have 3)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if not 10 <= args.test <= args.episodes - 20:
        parser.error(f"--test must leave >= 20 training episodes and be >= 10, got {args.test} of {args.episodes}")
    if args.legs < 2:
        parser.error(f"--legs must be >= 2 (the probe asks about the legs before the last), got {args.legs}")
    model = VideoWorldModel.from_pretrained(args.checkpoint or default_checkpoint("retrace", "worldmodel"))
    model.unet.eval()
    if not 0 <= args.timestep < model.config.num_train_timesteps:
        parser.error(f"--timestep must lie in [0, {model.config.num_train_timesteps}), got {args.timestep}")
    memory = EpisodeMemory(model, from_args(MemoryOverrides, parser, args).memory_config(model, seed=args.seed))
    env = envs.make("retrace", num_legs=args.legs)
    expert = envs.expert_for(env)
    seeds = list(range(args.seed, args.seed + args.episodes))
    features, labels = {"weights": [], "effect": []}, []
    for seed in tqdm(seeds, desc="probe episodes", disable=not args.progress):
        record = rollout_expert(env, expert, seed)
        memory.config = replace(memory.config, seed=seed)  # the planner's memory seed (draw 0)
        for name, value in readouts(model, memory, record, args.legs, args.timestep).items():
            features[name].append(value)
        labels.append(leg_signs(record))
    env.close()
    labels = np.array(labels)
    train, test = slice(0, args.episodes - args.test), slice(args.episodes - args.test, None)
    probes, power = {}, {}
    for name, rows in features.items():
        x = np.stack(rows)
        probes[name] = {f"leg_{j + 1}_of_{args.legs}": ridge_accuracy(x[train], labels[train, j], x[test],
                                                                       labels[test, j], args.seed)
                        for j in range(args.legs)}
        power[name] = planted_power(x, labels[:, -2], train, test, args.seed)
    print(json.dumps({"task": "retrace", "checkpoint": args.checkpoint or "shipped base",
                      "seeds": [seeds[0], seeds[-1]], "train_episodes": args.episodes - args.test,
                      "test_episodes": args.test, "timestep": args.timestep,
                      "memory": memory.config.to_dict(), "probes": probes, "power": power}))


if __name__ == "__main__":
    main()
