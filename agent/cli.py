"""``slowfast`` command line: one subcommand per job, each with its own config dataclass."""

from __future__ import annotations

import importlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jobconfig import ConfigError, parse, to_yaml

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)


def _check_task_backend(task: str, backend: str) -> None:
    import envs

    envs.factory(task, backend)  # raises with the known names


def _check_count(name: str, value: int | float, minimum: int | float) -> None:
    if value < minimum:
        raise ConfigError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


@dataclass
class CollectConfig:
    task: str = field(default="return_cubes", metadata={"help": "task name (see `slowfast envs`)"})
    backend: str = field(default="embedded", metadata={"help": "simulator backend"})
    episodes: int = field(default=10, metadata={"help": "number of expert episodes"})
    seed: int = field(default=0, metadata={"help": "episode i uses seed SEED + i"})
    out: str = field(default="data/return_cubes", metadata={"help": "dataset folder to write"})
    image_size: int = field(default=64, metadata={"help": "frame height and width in pixels"})
    num_cubes: int | None = field(default=None, metadata={"help": "return_cubes: cubes in the scene",
                                                                 "default_text": "the env's own"})
    num_legs: int | None = field(default=None, metadata={"help": "retrace: legs of the outbound path",
                                                                "default_text": "the env's own"})
    branches: bool = field(default=False, metadata={
        "help": "also record, from each episode's start, the expert doing the other first subgoals the task "
                "allows (retrace: the first leg in each other clear direction; return_cubes: the first cube to "
                "each other place), as extra episodes"})
    workers: int = field(default=1, metadata={
        "help": "processes collecting seed ranges in parallel (the dataset is the same for any number)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        _check_count("episodes", self.episodes, 1)
        _check_count("workers", self.workers, 1)
        _check_count("image_size", self.image_size, 16)
        for option, task in (("num_cubes", "return_cubes"), ("num_legs", "retrace")):
            if getattr(self, option) is not None and self.task != task:
                raise ConfigError(f"--{option.replace('_', '-')} only applies to --task {task}")

    def env_options(self) -> dict:
        options = {"image_size": self.image_size}
        for option in ("num_cubes", "num_legs"):
            if getattr(self, option) is not None:
                options[option] = getattr(self, option)
        return options


def run_collect(cfg: CollectConfig) -> int:
    from envs.collect import collect

    _check_task_backend(cfg.task, cfg.backend)
    out = Path(cfg.out)
    if (out / "meta" / "info.json").exists():
        raise ConfigError(f"{out} already holds a dataset; choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    seed_everything(cfg.seed)
    summary = collect(cfg.task, out, cfg.episodes, cfg.seed, cfg.backend, cfg.env_options(),
                      progress=cfg.progress, branches=cfg.branches, workers=cfg.workers)
    distances = np.array([e["distance"] for e in summary["episodes"] if not e["branch"]])
    print(json.dumps({"task": cfg.task, "backend": cfg.backend, "episodes": len(distances),
                      "branch_episodes": len(summary["episodes"]) - len(distances),
                      "distance_mean": float(distances.mean()), "distance_max": float(distances.max()),
                      "out": str(out)}))
    return 0


@dataclass
class EnvsConfig:
    seed: int = field(default=0, metadata={"help": "seed for the smoke reset of each embedded env"})
    out: str | None = field(default=None, metadata={"help": "also write the listing as JSON here"})


def run_envs(cfg: EnvsConfig) -> int:
    import envs
    import tasks

    rows = []
    for task in tasks.names():
        for backend in envs.backends(task):
            try:
                envs.factory(task, backend)
                status = "available"
            except (ImportError, RuntimeError) as error:
                status = f"unavailable: {error}"
            rows.append({"task": task, "backend": backend, "status": status})
            print(f"{task:14s} {backend:10s} {status}")
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "envs.json").write_text(json.dumps(rows, indent=2))
    return 0


# name -> (module, config class, run function, description); imported only when
# called, so `slowfast collect` does not pay for loading diffusers.
COMMANDS = {
    "collect": ("agent.cli", "CollectConfig", "run_collect",
                "roll out the scripted expert and write a dataset"),
    "train": ("worldmodel.train", "TrainConfig", "run_train_command",
              "train the video world model (slow learning) on a dataset"),
    "train-idm": ("inverse_dynamics.train", "TrainIDMConfig", "run_train_idm",
                  "train the inverse-dynamics model (frame pair -> action) on a dataset"),
    "finetune": ("worldmodel.slowfast", "FinetuneConfig", "run_finetune",
                 "slow-fast learning loop: finetune the base with frozen per-episode Temp-LoRA memories"),
    "generate": ("worldmodel.generate", "GenerateConfig", "run_generate",
                 "imagine a long video for a list of action texts from a simulator's first frame"),
    "imagine": ("worldmodel.imagine", "ImagineConfig", "run_imagine",
                "imagine a dataset's chunks with the world model, labelled with the true actions "
                "(for train-idm --imagined-data)"),
    "plan": ("agent.plan", "PlanConfig", "run_plan",
             "plan and execute a long-horizon goal with the world model"),
    "evaluate": ("agent.evaluate", "EvaluateConfig", "run_evaluate",
                 "compare memory variants on held-out seeds (paper Table 2): results, table, plot, videos"),
    "envs": ("agent.cli", "EnvsConfig", "run_envs",
             "list tasks and simulator backends and whether they can run here"),
}


def _usage() -> str:
    lines = ["usage: slowfast COMMAND [options]   (slowfast COMMAND --help for options)", "", "commands:"]
    lines += [f"  {name:10s} {entry[-1]}" for name, entry in COMMANDS.items()]
    return "\n".join(lines)


def run_command(name: str, argv: list[str]) -> int:
    import envs

    module_name, config_name, run_name, description = COMMANDS[name]
    module = importlib.import_module(module_name)
    config_cls, run = getattr(module, config_name), getattr(module, run_name)
    prog = "plan" if name == "plan" and sys.argv and Path(sys.argv[0]).name == "plan" else f"slowfast {name}"
    try:
        cfg = parse(config_cls, argv, prog, description)
        return run(cfg)
    except (ValueError, FloatingPointError, envs.BackendUnavailableError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"slowfast: error: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(name, rest)


def plan_main(argv: list[str] | None = None) -> int:
    return run_command("plan", list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
