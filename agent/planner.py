"""Video planning (paper Sec. 3.4): imagine each subgoal's chunks, act them out with the IDM.

For every chunk of a subgoal the world model imagines ``chunk_frames`` frames from the
current context; the inverse-dynamics model turns each consecutive pair of frames
into an action, which the simulator executes. Temp-LoRA (if on) is updated after
every chunk, across the whole episode.

Context: closed loop (default) encodes the latest *real* observations, so imagination
is re-anchored to what actually happened after every chunk; open loop keeps
conditioning on the imagined video, as pure video planning does. ``anchor-frame``
memory puts the episode's first frame in the oldest context slot (Streaming-T2V-like).

Temp-LoRA's source: ``imagined`` (Alg. 1a, the default) trains it on each generated
chunk right after sampling; ``observed`` trains it on the frames the simulator returned
for that chunk, i.e. on ground-truth chunks, which is what the slow-fast loop's inner
loop (Alg. 1b) trained the finetuned base to use.

Given the env's scripted ``expert``, the expert acts out the task's first phase (every
subgoal before the first of the task's ``RETURN_KINDS``: walking the path out, moving the
cubes aside) and the memory learns its observed chunks; the world model plans only the
return. The score then measures what each memory kept of the first phase, whether or not
the planner could have done that phase itself.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import tasks
from envs.collect import padded_expert_actions
from inverse_dynamics.model import InverseDynamicsModel
from tasks.base import Subgoal
from worldmodel.memory import MEMORY_MODES, EpisodeMemory, MemoryConfig
from worldmodel.model import VideoWorldModel

MEMORY_SOURCES = ("imagined", "observed")


@dataclass
class EpisodeRecord:
    imagined: list[np.ndarray] = field(default_factory=list)
    executed: list[np.ndarray] = field(default_factory=list)
    actions: list = field(default_factory=list)
    chunk_seconds: list[float] = field(default_factory=list)
    memory_seconds: list[float] = field(default_factory=list)
    memory_losses: list[float] = field(default_factory=list)


class Planner:
    def __init__(self, world_model: VideoWorldModel, idm: InverseDynamicsModel, memory: str = "temp-lora",
                 memory_config: MemoryConfig | None = None, closed_loop: bool = True,
                 memory_source: str = "imagined"):
        if memory not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        if memory_source not in MEMORY_SOURCES:
            raise ValueError(f"unknown memory source {memory_source!r}; choose one of {', '.join(MEMORY_SOURCES)}")
        self.model = world_model
        self.idm = idm
        self.memory_mode = memory
        self.closed_loop = closed_loop
        self.memory_source = memory_source
        self.memory = EpisodeMemory(world_model, memory_config) if memory == "temp-lora" else None

    def _context(self, real: list[np.ndarray], imagined: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        fc = self.model.config.context_frames
        if self.closed_loop:
            recent = self.model.latent.encode(np.stack(real[-fc:])[None])
        else:
            recent = imagined[:, :, -fc:]
        if self.memory_mode == "anchor-frame" and recent.shape[2] >= fc:
            return torch.cat([anchor, recent[:, :, -(fc - 1):]], dim=2)
        return recent

    def run(self, env, subgoals: list[Subgoal], seed: int, frames_for, progress=None,
            expert=None, noise_seed: int | None = None) -> tuple[dict, EpisodeRecord]:
        """One episode; ``frames_for(subgoal)`` is the task's frame budget for a subgoal; with
        ``expert``, the expert does the first phase (module docstring); the sampler's noise
        follows ``noise_seed`` (default: the episode ``seed``)."""
        chunk = self.model.config.chunk_frames
        return_kinds = tasks.get(env.task_name).RETURN_KINDS
        scripted = 0 if expert is None else next(
            (i for i, s in enumerate(subgoals) if s.kind in return_kinds), len(subgoals))
        obs, _ = env.reset(seed=seed)
        if self.memory is not None:
            self.memory.reset()
        generator = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
        record = EpisodeRecord(imagined=[obs["rgb"]], executed=[obs["rgb"]])
        anchor = self.model.latent.encode(obs["rgb"][None, None])
        imagined_latents = anchor
        plan = [(k, s, i) for k, s in enumerate(subgoals) for i in range(max(1, frames_for(s) // chunk))]
        steps = progress(plan) if progress else plan
        for position, subgoal, index in steps:
            if index == 0:
                env.start_subgoal(subgoal)
            if position < scripted:
                if index == 0:
                    obs, imagined_latents = self._act_out(env, expert, subgoal, record, imagined_latents, anchor)
                continue
            context = self._context(record.executed, imagined_latents, anchor)
            began = time.perf_counter()
            with self.memory.merged() if self.memory is not None else contextlib.nullcontext():
                new = self.model.generate_chunk(context, [subgoal.text], generator=generator)
            record.chunk_seconds.append(time.perf_counter() - began)
            if self.memory is not None and self.memory_source == "imagined":
                self._remember(record, context, new)
            imagined_latents = torch.cat([imagined_latents, new], dim=2)
            frames = self.model.latent.decode(new)[0]
            before = np.concatenate([record.executed[-1][None], frames[:-1]])
            for prediction in self.idm.predict(before, frames):
                obs = self._execute(env, self.idm.to_env_action(prediction, obs), record)
            record.imagined += list(frames)
            if self.memory is not None and self.memory_source == "observed":
                observed = self.model.latent.encode(np.stack(record.executed[-len(frames):])[None])
                self._remember(record, context, observed)
        return env.metric(), record

    def _act_out(self, env, expert, subgoal: Subgoal, record: EpisodeRecord, imagined_latents: torch.Tensor,
                 anchor: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """The expert's whole subgoal, held still up to whole chunks (as collected); each
        observed chunk stands in for an imagined one, memory included."""
        chunk = self.model.config.chunk_frames
        start = len(record.executed)
        obs = None
        for action in padded_expert_actions(expert, tasks.get(env.task_name), subgoal):
            obs = self._execute(env, action, record)
        for begin in range(start, len(record.executed), chunk):
            context = self._context(record.executed[:begin], imagined_latents, anchor)
            observed = self.model.latent.encode(np.stack(record.executed[begin:begin + chunk])[None])
            if self.memory is not None:
                self._remember(record, context, observed)
            imagined_latents = torch.cat([imagined_latents, observed], dim=2)
        record.imagined += record.executed[start:]
        return obs, imagined_latents

    @staticmethod
    def _execute(env, action, record: EpisodeRecord) -> dict:
        obs, *_ = env.step(action)
        record.executed.append(obs["rgb"])
        record.actions.append(action)
        return obs

    def _remember(self, record: EpisodeRecord, context: torch.Tensor, chunk: torch.Tensor) -> None:
        began = time.perf_counter()
        record.memory_losses += self.memory.update(context, chunk)
        record.memory_seconds.append(time.perf_counter() - began)
