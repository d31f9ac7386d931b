"""Roll out the scripted expert and write a dataset (``slowfast collect``)."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

import envs
import tasks
from envs.dataset import FORMAT_VERSION, episode_path, write_episode
from tasks.base import CHUNK_FRAMES


def padded_length(task_module, subgoal, frames: int) -> int:
    """Subgoals are padded by holding still, so chunks align and budgets are fixed."""
    return max(task_module.frames_for(subgoal), math.ceil(frames / CHUNK_FRAMES) * CHUNK_FRAMES)


def padded_expert_actions(expert, task_module, subgoal):
    """The expert's actions for ``subgoal``, then holding still up to ``padded_length``; the
    caller steps the env between them (the expert reads its state)."""
    steps = 0
    for action in expert.actions(subgoal):
        yield action
        steps += 1
    for _ in range(padded_length(task_module, subgoal, steps) - steps):
        yield expert.hold()


def rollout_expert(env, expert, seed: int, subgoals=None) -> dict:
    """The expert's episode from ``env.reset(seed)``: the seed's own subgoals, or ``subgoals``."""
    obs, _ = env.reset(seed=seed)
    task_module = tasks.get(env.task_name)
    state_keys = [k for k in obs if k != "rgb"]
    frames, actions, subgoal_index = [obs["rgb"]], [], []
    states = {k: [obs[k]] for k in state_keys}
    goal = env.goal_text() if subgoals is None else ", then ".join(s.text for s in subgoals)
    subgoals = env.subgoals() if subgoals is None else subgoals
    for i, subgoal in enumerate(subgoals):
        env.start_subgoal(subgoal)
        for action in padded_expert_actions(expert, task_module, subgoal):
            obs, *_ = env.step(action)
            frames.append(obs["rgb"]); actions.append(action); subgoal_index.append(i)
            for k in state_keys:
                states[k].append(obs[k])
    return {
        "frames": np.stack(frames),
        "actions": np.stack(actions).astype(np.float32),
        "subgoal_index": np.asarray(subgoal_index, dtype=np.int16),
        "observations": {k: np.stack(v) for k, v in states.items()},
        "subgoals": [s.to_dict() for s in subgoals],
        "goal": goal,
        "metric": env.metric(),
    }


def branch_rollouts(env, seed: int) -> list[dict]:
    """The expert's counterfactual episodes from ``env.reset(seed)`` (the task's
    ``branch_subgoals``): same start, another first subgoal."""
    env.reset(seed=seed)
    alternatives = env.branch_subgoals()
    return [rollout_expert(env, envs.expert_for(env), seed, subgoals) for subgoals in alternatives]


def collect(task: str, out: str | Path, episodes: int, seed: int, backend: str = "embedded",
            env_options: dict | None = None, progress: bool = True, branches: bool = False,
            workers: int = 1) -> dict:
    """``episodes`` expert episodes, seeds ``seed``.., each followed by its counterfactual
    branches if ``branches`` (index lines of those carry ``branch_of``).

    With ``workers`` > 1, processes collect contiguous seed ranges into shards that are then
    merged in seed order: an episode depends only on its seed, so the dataset is the same."""
    if workers > 1 and episodes > 1:
        return _collect_in_shards(task, Path(out), episodes, seed, backend, env_options, progress, branches,
                                  workers)
    out = Path(out)
    env = envs.make(task, backend, **(env_options or {}))
    expert = envs.expert_for(env)
    summary = {"task": task, "backend": backend, "episodes": []}
    index_lines = []
    total_frames = 0
    try:
        for e in tqdm(range(episodes), desc=f"collect {task}", unit="episode", disable=not progress):
            episode_seed = seed + e
            main_index = len(index_lines)
            records = [rollout_expert(env, expert, episode_seed)]
            records += branch_rollouts(env, episode_seed) if branches else []
            for record in records:
                index = len(index_lines)
                write_episode(out, index, record["frames"], record["actions"], record["subgoal_index"],
                              record["observations"])
                length = len(record["actions"])
                total_frames += length + 1
                metric = record["metric"]
                line = {"episode_index": index, "seed": episode_seed, "length": length, "goal": record["goal"],
                        "subgoals": record["subgoals"], "metric": metric}
                if index != main_index:
                    line["branch_of"] = main_index
                index_lines.append(line)
                summary["episodes"].append({"seed": episode_seed, "frames": length + 1,
                                            "distance": metric["distance"], "branch": index != main_index})
    finally:
        env.close()
    info = {
        "format": FORMAT_VERSION,
        "task": task,
        "backend": backend,
        "fps": env.metadata["render_fps"],
        "image_size": int(record["frames"].shape[1]) if episodes else None,
        "chunk_frames": CHUNK_FRAMES,
        "action_shape": list(env.action_space.shape) if env.action_space.shape else [],
        "action_space": repr(env.action_space),
        "action_classes": int(getattr(env.action_space, "n", 0)),
        "observation_keys": sorted(k for k in env.observation_space.spaces),
        "env_config": dataclasses.asdict(env.config),
        "seed": seed,
        "total_episodes": len(index_lines),
        "branches": branches,
        "total_frames": total_frames,
    }
    _write_meta(out, info, index_lines, summary)
    return summary


def _write_meta(out: Path, info: dict, index_lines: list[dict], summary: dict) -> None:
    (out / "meta").mkdir(parents=True, exist_ok=True)
    (out / "meta" / "episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in index_lines))
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def _collect_in_shards(task: str, out: Path, episodes: int, seed: int, backend: str, env_options: dict | None,
                       progress: bool, branches: bool, workers: int) -> dict:
    # Several shards a worker, so the progress bar moves and a slow shard does not idle the others.
    shard_size = max(1, math.ceil(episodes / (workers * 8)))
    starts = list(range(0, episodes, shard_size))
    shard_root = out / ".shards"
    shards = [shard_root / f"{i:04d}" for i in range(len(starts))]
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's or the simulator's threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool, \
            tqdm(total=episodes, desc=f"collect {task} ({workers} workers)", unit="episode",
                 disable=not progress) as bar:
        futures = {pool.submit(collect, task, shard, min(shard_size, episodes - start), seed + start, backend,
                               env_options, False, branches): min(shard_size, episodes - start)
                   for shard, start in zip(shards, starts)}
        for future in as_completed(futures):
            future.result()
            bar.update(futures[future])
    summary = merge_shards(shards, out)
    shutil.rmtree(shard_root)
    return summary


def merge_shards(shards: list[Path], out: Path) -> dict:
    """Join datasets collected from consecutive seed ranges into ``out``, renumbering episodes
    (files, ``episode_index``, ``branch_of``) as one sequential collection would have."""
    index_lines, summary, info = [], None, None
    for shard in shards:
        shard_info = json.loads((shard / "meta" / "info.json").read_text())
        shard_summary = json.loads((shard / "summary.json").read_text())
        offset = len(index_lines)
        for line in map(json.loads, (shard / "meta" / "episodes.jsonl").read_text().splitlines()):
            new_index = line["episode_index"] + offset
            episode_path(out, new_index).parent.mkdir(parents=True, exist_ok=True)
            episode_path(shard, line["episode_index"]).replace(episode_path(out, new_index))
            line["episode_index"] = new_index
            if "branch_of" in line:
                line["branch_of"] += offset
            index_lines.append(line)
        if info is None:
            info, summary = shard_info, shard_summary
        else:
            info["total_episodes"] += shard_info["total_episodes"]
            info["total_frames"] += shard_info["total_frames"]
            summary["episodes"] += shard_summary["episodes"]
    _write_meta(out, info, index_lines, summary)
    return summary
