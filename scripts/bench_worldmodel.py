"""World-model quality and speed on held-out expert episodes.

For sampled chunks of held-out episodes (seeds not used for training), the model gets
the true context frames and the true subgoal text and generates one chunk; PSNR and
SSIM are measured against the true frames, next to the "repeat the last context
frame" baseline. The last output line is one JSON object.

`psnr` is the mean of per-chunk PSNRs, so a chunk in which nothing moves (the expert
pausing: repeat-last scores 50-86 dB there) outweighs every moving chunk;
`pooled_psnr` is the PSNR of the mean squared error over all chunks, where each
chunk weighs by its error. `static_pixel_rmse` is the model's RMS error (grey levels)
on pixels the true chunk leaves unchanged (repeat-last is ~0 there).

Planning reads actions, not pixels, off an imagined chunk, so the task's inverse-dynamics
model also labels every frame transition of the generated, the true and the repeated
chunk: `idm_agreement` is the fraction of transitions whose action (retrace: the move;
return_cubes: open / close the gripper) matches the one read off the true frames,
`moving_idm_agreement` the same over transitions whose true action is not "stay"
(retrace), and `idm_position_error` (return_cubes) the mean distance in metres between
the arm targets read off generated and true frames; `baseline_*` are repeat-last's.
`by_kind` splits the scores by subgoal kind (retrace: "walk" names the move, "retrace"
leaves it to memory).

Retrace's view scrolls by whole tiles and brings in terrain no context frame shows, so it
also reports two references that know the motion: `shift_oracle_psnr` scrolls the last
context frame by the player's true move and fills the uncovered strip with the view's mean
colour (the best a predictor of the motion can do without knowing the new terrain, roughly);
`shift_oracle_sampled_psnr` fills the strip with terrain from another episode instead, as a
sampler that imagines plausible terrain would.
`covered_psnr` scores only what the motion keeps in view: the terrain pixels of each moved frame
that the scrolled last context frame still shows, where there is nothing new to imagine and the
scrolled frame is exact (pooled over chunks: repeat-last is exact on some); `baseline_covered_psnr`
is repeat-last's there. A model that scrolls the view scores high, one that fades it out in place
scores near repeat-last.

Usage: python scripts/bench_worldmodel.py --task retrace [--seed 10000] [--episodes 4]
       [--chunks-per-episode 4] [--checkpoint DIR] [--idm DIR] [--image-guidance G] [--text-guidance G]
       [--guidance-rescale PHI] [--guidance-t-min T] [--guidance-t-max T] [--deep-cache-interval N]
       [--static-tolerance GREY_LEVELS]
       [--snap-start T] [--snap-observe T] [--snap-keep-estimate true|false]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import envs
from envs.collect import rollout_expert
from envs.retrace_crafter import VIEW_TILES
from inverse_dynamics.model import InverseDynamicsModel
from jobconfig import add_fields, from_args
from tasks import retrace
from worldmodel.generate import default_checkpoint
from worldmodel.model import SamplingOverrides, VideoWorldModel
from worldmodel.video_io import psnr, ssim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="retrace")
    parser.add_argument("--seed", type=int, default=10_000, help="first held-out episode seed")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--chunks-per-episode", type=int, default=4)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--idm", default=None, help="inverse-dynamics checkpoint (default: the task's shipped one)")
    add_fields(parser, SamplingOverrides)
    args = parser.parse_args()

    model = VideoWorldModel.from_pretrained(args.checkpoint or default_checkpoint(args.task, "worldmodel"))
    model = from_args(SamplingOverrides, parser, args).apply_sampling(model)
    cfg = model.config
    idm = InverseDynamicsModel.from_pretrained(args.idm or default_checkpoint(args.task, "idm"))
    env = envs.make(args.task)
    expert = envs.expert_for(env)
    rng = np.random.default_rng(args.seed)
    scores = {"psnr": [], "ssim": [], "baseline_psnr": [], "baseline_ssim": []}
    kinds = []
    mse = {"model": [], "repeat": [], "model_on_unchanged_pixels": []}
    actions = {"model": [], "repeat": [], "truth": []}
    seconds = []
    seeds = list(range(args.seed, args.seed + args.episodes))
    oracle = {"shift_oracle_psnr": [], "shift_oracle_sampled_psnr": []}
    covered = {"model": [], "repeat": [], "pixels": []}  # per chunk: squared error summed over `shown`
    # Terrain for the sampled fill: the episode after the measured ones, so no chunk fills from its own world.
    other_terrain = rollout_expert(env, expert, seeds[-1] + 1)["frames"] if args.task == "retrace" else None
    fill_rng = np.random.default_rng(args.seed + 1)  # its own stream: the chunks drawn stay those of `rng`
    for seed in seeds:
        record = rollout_expert(env, expert, seed)
        frames, subgoal_index = record["frames"], record["subgoal_index"]
        starts = np.arange(0, len(subgoal_index) - cfg.chunk_frames + 1, cfg.chunk_frames)
        for start in rng.choice(starts, size=min(args.chunks_per_episode, len(starts)), replace=False):
            context_frames = frames[max(0, start + 1 - cfg.context_frames):start + 1]
            truth = frames[start + 1:start + 1 + cfg.chunk_frames]
            subgoal = record["subgoals"][int(subgoal_index[start])]
            text = subgoal["text"]
            kinds.append(subgoal["kind"])
            context = model.latent.encode(context_frames[None])
            began = time.perf_counter()
            chunk = model.generate_chunk(context, [text], generator=torch.Generator().manual_seed(int(start)))
            seconds.append(time.perf_counter() - began)
            generated = model.latent.decode(chunk)[0]
            repeat = np.repeat(context_frames[-1:], len(truth), axis=0)
            scores["psnr"].append(psnr(generated, truth))
            scores["ssim"].append(ssim(generated, truth))
            scores["baseline_psnr"].append(psnr(repeat, truth))
            scores["baseline_ssim"].append(ssim(repeat, truth))
            if other_terrain is not None:
                fill = other_terrain[fill_rng.integers(len(other_terrain))]
                position = record["observations"]["pos"]
                moves = position[start + 1:start + 1 + cfg.chunk_frames] - position[start]
                mean_fill, sampled_fill, shown = shift_oracle(context_frames[-1], truth, fill, moves)
                oracle["shift_oracle_psnr"].append(psnr(mean_fill, truth))
                oracle["shift_oracle_sampled_psnr"].append(psnr(sampled_fill, truth))
                covered["pixels"].append(shown.sum() * truth.shape[-1])
                for name, prediction in (("model", generated), ("repeat", repeat)):
                    covered[name].append(np.sum((prediction[shown].astype(np.float64) - truth[shown]) ** 2))
            error = generated.astype(np.float64) - truth
            unchanged = (truth == context_frames[-1]).all(axis=(0, 3))
            mse["model"].append(np.mean(error**2))
            mse["repeat"].append(np.mean((repeat.astype(np.float64) - truth) ** 2))
            mse["model_on_unchanged_pixels"].append(np.mean(error[:, unchanged] ** 2) if unchanged.any() else np.nan)
            for name, chunk_frames in (("model", generated), ("repeat", repeat), ("truth", truth)):
                before = np.concatenate([context_frames[-1:], chunk_frames[:-1]])
                actions[name] += idm.predict(before, chunk_frames)
    env.close()
    pooled = {"pooled_psnr": round(float(10 * np.log10(255**2 / np.mean(mse["model"]))), 3),
              "baseline_pooled_psnr": round(float(10 * np.log10(255**2 / np.mean(mse["repeat"]))), 3),
              "static_pixel_rmse": round(float(np.sqrt(np.nanmean(mse["model_on_unchanged_pixels"]))), 3)}
    result = {"task": args.task, **{k: round(float(np.mean(v)), 3) for k, v in scores.items()}, **pooled,
              **{k: round(float(np.mean(v)), 3) for k, v in oracle.items() if v},
              **covered_scores(covered, range(len(kinds))),
              **idm_scores(args.task, actions),
              "by_kind": by_kind(kinds, scores | oracle, covered, actions, args.task, cfg.chunk_frames),
              "seconds_per_chunk": round(float(np.median(seconds)), 3), "chunks": len(seconds),
              "sample_steps": cfg.sample_steps, "seeds": seeds,
              "sampling": SamplingOverrides.settings_of(model)}
    print(json.dumps(result))


def shift_oracle(last: np.ndarray, truth: np.ndarray, fill: np.ndarray,
                 moves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each true frame predicted as ``last`` with the view scrolled by the player's true move since ``last``
    (``moves``: (F, 2) tiles, x right, y down); the player's own tile stays in the centre and the frame's black
    margin stays put. What the scroll uncovers (and the ground the player stood on) is the view's mean colour
    (first result) or ``fill``'s pixels there (second). The third result marks, per frame, the scrolled
    pixels the old view still shows (none in frames the player has not moved in)."""
    size, unit = last.shape[0], last.shape[0] // VIEW_TILES
    span = unit * VIEW_TILES
    margin = (size - span) // 2
    inside = slice(margin, margin + span)
    centre = slice(margin + unit * (VIEW_TILES // 2), margin + unit * (VIEW_TILES // 2 + 1))
    view = last[inside, inside].astype(np.float64)
    mean_colour = view.reshape(-1, 3).mean(axis=0)
    terrain = np.ones((span, span), bool)  # the old view's pixels that show terrain, not the player
    terrain[centre.start - margin:centre.stop - margin, centre.start - margin:centre.stop - margin] = False
    flat, sampled, shown = [], [], []
    for dx, dy in np.asarray(moves) * unit:
        scrolled = np.empty_like(view)
        kept = np.zeros((span, span), bool)
        if max(abs(dx), abs(dy)) < span:
            target = slice(max(0, -dy), span - max(0, dy)), slice(max(0, -dx), span - max(0, dx))
            source = slice(max(0, dy), span - max(0, -dy)), slice(max(0, dx), span - max(0, -dx))
            scrolled[target], kept[target] = view[source], terrain[source]
        scrolled[~kept] = mean_colour
        moved = last.astype(np.float64)
        moved[inside, inside] = scrolled
        moved[centre, centre] = last[centre, centre]
        uncovered = np.zeros((size, size), bool)
        uncovered[inside, inside] = ~kept
        uncovered[centre, centre] = False
        old_view = np.zeros((size, size), bool)
        old_view[inside, inside] = kept & bool(dx or dy)
        old_view[centre, centre] = False
        flat.append(moved)
        sampled.append(np.where(uncovered[..., None], fill, moved))
        shown.append(old_view)
    return np.stack(flat).round().astype(np.uint8), np.stack(sampled).round().astype(np.uint8), np.stack(shown)


def covered_scores(covered: dict[str, list], chunks) -> dict:
    """Pooled PSNR of the model and of repeat-last over the scored pixels of ``chunks`` (none if none moved)."""
    pixels = sum(covered["pixels"][i] for i in chunks) if covered["pixels"] else 0
    if not pixels:
        return {}
    return {key: round(float(10 * np.log10(255**2 * pixels / max(sum(covered[name][i] for i in chunks), 1e-10))), 3)
            for key, name in (("covered_psnr", "model"), ("baseline_covered_psnr", "repeat"))}


def by_kind(kinds: list[str], scores: dict[str, list], covered: dict[str, list], actions: dict[str, list],
            task: str, chunk_frames: int) -> dict:
    """The chunk scores split by subgoal kind: a text that names the move (retrace "walk") against one that
    leaves it to memory ("retrace"), where true context and text alone cannot tell which way the chunk goes."""
    out = {}
    for kind in sorted(set(kinds)):
        picked = [i for i, k in enumerate(kinds) if k == kind]
        transitions = [i * chunk_frames + f for i in picked for f in range(chunk_frames)]
        out[kind] = {"chunks": len(picked), **{k: round(float(np.mean([v[i] for i in picked])), 3)
                                               for k, v in scores.items() if v},
                     **covered_scores(covered, picked),
                     **idm_scores(task, {name: [got[t] for t in transitions] for name, got in actions.items()})}
    return out


def idm_scores(task: str, actions: dict[str, list]) -> dict:
    """How well the actions read off generated (and repeated) chunks match those read off the truth."""
    truth = np.asarray(actions["truth"])
    out = {}
    for name, prefix in (("model", ""), ("repeat", "baseline_")):
        got = np.asarray(actions[name])
        if task == "return_cubes":
            out[f"{prefix}idm_agreement"] = round(float(np.mean(got[:, 3] == truth[:, 3])), 4)
            gap = np.linalg.norm(got[:, :3] - truth[:, :3], axis=1)
            out[f"{prefix}idm_position_error"] = round(float(gap.mean()), 4)
        else:
            moving = truth != retrace.ACTIONS.index("stay")
            out[f"{prefix}idm_agreement"] = round(float(np.mean(got == truth)), 4)
            out[f"{prefix}moving_idm_agreement"] = round(float(np.mean(got[moving] == truth[moving])), 4)
    return out


if __name__ == "__main__":
    main()
