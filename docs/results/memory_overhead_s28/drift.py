"""Session 28: is the temp-lora rollout's extra time the memory's work or drift?

Two back-to-back pairs of 10-chunk rollouts (none, then temp-lora) of return_cubes seed
10000's expert script, with every generate_chunk, update and merge timed apart.
Run from the repository root: python docs/results/memory_overhead_s28/drift.py
"""
import contextlib
import time

import numpy as np
import torch

import envs
from envs.collect import rollout_expert
from worldmodel.memory import EpisodeMemory, MemoryConfig
from worldmodel.model import VideoWorldModel

PATH = "checkpoints/return_cubes/worldmodel"
torch.set_num_threads(2)
env = envs.make("return_cubes")
record = rollout_expert(env, envs.expert_for(env), 10000)
texts = [record["subgoals"][int(i)]["text"] for i in record["subgoal_index"][::8]][:10]
seconds: dict[str, list[float]] = {}


def timed(obj, name, key):
    method = getattr(obj, name)

    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        result = method(*args, **kwargs)
        seconds.setdefault(key, []).append(time.perf_counter() - began)
        return result
    setattr(obj, name, wrapper)


for pair in range(2):
    for mode in ("none", "temp-lora"):
        model = VideoWorldModel.from_pretrained(PATH)
        memory = None
        if mode == "temp-lora":
            memory = EpisodeMemory(model, MemoryConfig.for_model(model, seed=10000))
            timed(memory, "update", "update")
            plain_merged = memory.merged

            @contextlib.contextmanager
            def merged():
                began = time.perf_counter()
                with plain_merged():
                    seconds.setdefault("merge", []).append(time.perf_counter() - began)
                    yield
                    began = time.perf_counter()
                seconds["merge"].append(time.perf_counter() - began)
            memory.merged = merged
        seconds.clear()
        timed(model, "generate_chunk", "generate")
        began = time.perf_counter()
        model.rollout(record["frames"][0], texts, seed=10000, memory=memory)
        total = time.perf_counter() - began
        print(pair, mode, f"total per chunk {total / len(texts):.3f} s",
              {k: round(float(np.sum(v)) / len(texts), 3) for k, v in seconds.items()},
              "per chunk", [round(x, 2) for x in seconds["generate"]], flush=True)
