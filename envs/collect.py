"""Roll out the scripted expert and write a dataset (``slowfast collect``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

import envs
import tasks
from envs.dataset import FORMAT_VERSION, write_episode
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
            env_options: dict | None = None, progress: bool = True, branches: bool = False) -> dict:
    """``episodes`` expert episodes, seeds ``seed``.., each followed by its counterfactual
    branches if ``branches`` (index lines of those carry ``branch_of``)."""
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
                index_lines.append(json.dumps(line))
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
    (out / "meta").mkdir(parents=True, exist_ok=True)
    (out / "meta" / "episodes.jsonl").write_text("".join(line + "\n" for line in index_lines))
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
