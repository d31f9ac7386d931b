"""``plan``: decompose a goal, imagine and execute it, and write what happened.

Outputs in ``OUT``: ``episode.json`` (task, backend, seed, memory, subgoals, distance,
success, seconds, imagined chunks, and timings), ``imagined.mp4``, ``executed.mp4``,
``side_by_side.gif`` (imagined | executed) and ``config.yaml``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import envs
import tasks
from agent.decompose import rules
from agent.planner import MEMORY_SOURCES, Planner
from inverse_dynamics.model import InverseDynamicsModel
from jobconfig import ConfigError, CpuThreads, to_yaml
from worldmodel.generate import DEFAULT_CHECKPOINTS
from worldmodel.memory import MEMORY_MODES, MemoryOverrides
from worldmodel.model import SamplingOverrides, VideoWorldModel
from worldmodel.video_io import write_video


@dataclass
class PlanConfig(MemoryOverrides, SamplingOverrides, CpuThreads):
    task: str = field(default="return_cubes", metadata={"help": "task name"})
    backend: str = field(default="embedded", metadata={"help": "simulator backend"})
    memory: str = field(default="temp-lora", metadata={"help": "none | anchor-frame | temp-lora"})
    checkpoint: str | None = field(default=None, metadata={
        "help": "folder with worldmodel/ and idm/", "default_text": "the shipped checkpoints/TASK"})
    worldmodel: str | None = field(default=None, metadata={"help": "world model folder (overrides --checkpoint)"})
    seed: int = field(default=0, metadata={"help": "episode seed"})
    draw: int = field(default=0, metadata={
        "help": "the planner's noise draw: 0 seeds the sampler and the memory with the episode seed; another draw "
                "imagines the same episode with other noise (how much of a score is the planner's own chance)"})
    out: str = field(default="runs/plan", metadata={"help": "output folder"})
    goal: str | None = field(default=None, metadata={"help": "goal text", "default_text": "the episode's own goal"})
    llm: str = field(default="rules", metadata={
        "help": "decomposer: rules | local (SmolLM2-135M, offline) | openai (OPENAI_BASE_URL, OPENAI_API_KEY)"})
    llm_model: str | None = field(default=None, metadata={"help": "model name for --llm openai",
                                                          "default_text": "$SLOWFAST_LLM_MODEL"})
    closed_loop: bool = field(default=True, metadata={"help": "condition on real observations (else imagined)"})
    memory_source: str = field(default="imagined", metadata={
        "help": "Temp-LoRA trains on each imagined chunk (Alg. 1a) or on the observed frames of that chunk"})
    expert_first_phase: bool = field(default=False, metadata={
        "help": "the scripted expert does the first phase (walk out / move the cubes aside) and the memory learns "
                "its frames; only the return is planned, so the score is the return's alone"})
    videos: bool = field(default=True, metadata={"help": "write mp4/gif videos"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory not in MEMORY_MODES:
            raise ConfigError(f"--memory must be none, anchor-frame or temp-lora, got {self.memory!r}")
        if self.memory_source not in MEMORY_SOURCES:
            raise ConfigError(f"--memory-source must be {' or '.join(MEMORY_SOURCES)}, got {self.memory_source!r}")
        if self.draw < 0:
            raise ConfigError(f"--draw must be >= 0, got {self.draw}")
        if self.llm not in ("rules", "local", "openai"):
            raise ConfigError(f"--llm must be rules, local or openai, got {self.llm!r}")


def checkpoint_paths(cfg: PlanConfig) -> tuple[Path, Path]:
    root = Path(cfg.checkpoint) if cfg.checkpoint else DEFAULT_CHECKPOINTS / cfg.task
    world = Path(cfg.worldmodel) if cfg.worldmodel else root / "worldmodel"
    idm = root / "idm"
    missing = [p for p in (world, idm) if not p.is_dir()]
    if missing:
        data = f"data/{cfg.task}"
        makers = {world: f"slowfast train --task {cfg.task} --data {data} --out {world}",
                  idm: f"slowfast train-idm --task {cfg.task} --data {data} --out {idm}"}
        raise ConfigError(f"missing checkpoint {', '.join(map(str, missing))}; collect data with "
                          f"`slowfast collect --task {cfg.task} --out {data}`, then run: "
                          + "; ".join(makers[m] for m in missing))
    return world, idm


def decompose(cfg: PlanConfig, goal: str, context: dict) -> tuple[list, dict]:
    if cfg.llm == "openai":
        from agent.llm import OpenAIDecomposer

        return OpenAIDecomposer(model=cfg.llm_model)(cfg.task, goal, context)
    if cfg.llm == "local":
        from agent.local_llm import LocalLLMDecomposer

        return LocalLLMDecomposer()(cfg.task, goal, context)
    return rules(cfg.task, goal, context), {"source": "rules"}


def noise_seed(seed: int, draw: int) -> int:
    """Draw 0 keeps the episode seed (episodes planned before draws existed stay valid); other draws
    get a seed no episode seed collides with."""
    return seed if draw == 0 else int(np.random.SeedSequence([seed, draw]).generate_state(1, np.uint64)[0] >> 1)


def plan_episode(cfg: PlanConfig, world_model: VideoWorldModel, idm: InverseDynamicsModel) -> dict:
    task = tasks.get(cfg.task)
    world_model = cfg.apply_sampling(world_model)
    env = envs.make(cfg.task, cfg.backend)
    env.reset(seed=cfg.seed)
    goal = cfg.goal or env.goal_text()
    subgoals, decomposition = decompose(cfg, goal, env.subgoal_context())
    noise = noise_seed(cfg.seed, cfg.draw)
    memory_config = cfg.memory_config(world_model, seed=noise)
    planner = Planner(world_model, idm, cfg.memory, memory_config, cfg.closed_loop, cfg.memory_source)
    bar = (lambda xs: tqdm(xs, desc=f"plan {cfg.task} [{cfg.memory}]", unit="chunk")) if cfg.progress else None
    started = time.time()
    expert = envs.expert_for(env) if cfg.expert_first_phase else None
    metric, record = planner.run(env, subgoals, cfg.seed, task.frames_for, progress=bar, expert=expert,
                                 noise_seed=noise)
    seconds = time.time() - started
    fps = env.metadata["render_fps"]
    env.close()
    episode = {
        "task": cfg.task, "backend": cfg.backend, "seed": cfg.seed, "draw": cfg.draw, "memory": cfg.memory,
        "goal": goal,
        "subgoals": [s.text for s in subgoals], "decomposition": decomposition,
        "distance": metric["distance"], "success": metric["success"],
        "metric": metric, "seconds": round(seconds, 1), "chunks": len(record.chunk_seconds),
        "seconds_per_chunk": round(float(np.mean(record.chunk_seconds)), 3),
        "memory_seconds_per_chunk": round(float(np.mean(record.memory_seconds)), 3) if record.memory_seconds else 0.0,
        "memory_losses": [round(loss, 6) for loss in record.memory_losses],
        "closed_loop": cfg.closed_loop, "memory_source": cfg.memory_source,
        "expert_first_phase": cfg.expert_first_phase,
        "memory_config": memory_config.to_dict() if cfg.memory == "temp-lora" else None,
        "sampling": SamplingOverrides.settings_of(world_model),
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "episode.json").write_text(json.dumps(episode, indent=2))
    if cfg.videos:
        imagined, executed = np.stack(record.imagined), np.stack(record.executed)
        n = min(len(imagined), len(executed))
        write_video(out / "imagined.mp4", imagined, fps)
        write_video(out / "executed.mp4", executed, fps)
        gap = np.full((n, imagined.shape[1], 2, 3), 255, np.uint8)
        write_video(out / "side_by_side.gif", np.concatenate([imagined[:n], gap, executed[:n]], axis=2), fps, scale=2)
    return episode


def run_plan(cfg: PlanConfig) -> int:
    cfg.apply_threads()
    envs.factory(cfg.task, cfg.backend)
    world_path, idm_path = checkpoint_paths(cfg)
    episode = plan_episode(cfg, VideoWorldModel.from_pretrained(world_path),
                           InverseDynamicsModel.from_pretrained(idm_path))
    print(json.dumps({k: episode[k] for k in ("task", "memory", "seed", "distance", "success", "seconds", "chunks")}))
    return 0
