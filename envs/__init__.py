"""Simulators behind one gymnasium interface, chosen by task and backend name.

``embedded`` backends run anywhere (CPU, no display, PyPI only) and are the default;
the others wrap real simulators that must be installed separately and are imported
only when asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

import gymnasium as gym

import tasks

# (task, backend) -> "module:factory"; imported lazily so a missing simulator only
# matters when it is asked for.
_BACKENDS: dict[tuple[str, str], str] = {
    ("return_cubes", "embedded"): "envs.cubes:CubesEnv",
    ("return_cubes", "rlbench"): "envs.rlbench_backend:RLBenchCubesEnv",
    ("retrace", "embedded"): "envs.retrace_crafter:CrafterRetraceEnv",
    ("retrace", "miniworld"): "envs.retrace_miniworld:MiniWorldRetraceEnv",
    ("retrace", "minedojo"): "envs.minedojo_backend:MineDojoRetraceEnv",
}


# Python modules a backend needs beyond this package's dependencies, with how to get them.
_REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "rlbench": (("pyrep", "rlbench"), "envs.rlbench_backend:INSTALL_HELP"),
    "minedojo": (("minedojo",), "envs.minedojo_backend:INSTALL_HELP"),
    "miniworld": (("miniworld",), "envs.retrace_miniworld:INSTALL_HELP"),
}


gym.register(id="slowfast/ReturnCubes-v0", entry_point="envs.cubes:CubesEnv")
gym.register(id="slowfast/Retrace-v0", entry_point="envs.retrace_crafter:CrafterRetraceEnv")


class UnknownBackendError(ValueError):
    pass


class BackendUnavailableError(RuntimeError):
    """A real simulator backend whose software is not installed on this machine."""


def backends(task: str) -> list[str]:
    tasks.get(task)
    return sorted(b for t, b in _BACKENDS if t == task)


def factory(task: str, backend: str = "embedded") -> Callable[..., gym.Env]:
    known = backends(task)
    if backend not in known:
        raise UnknownBackendError(
            f"unknown backend {backend!r} for task {task!r}; known backends: {', '.join(known)}")
    modules, help_ref = _REQUIREMENTS.get(backend, ((), ""))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        help_module, help_attr = help_ref.split(":")
        install_help = getattr(importlib.import_module(help_module), help_attr)
        raise BackendUnavailableError(f"{install_help} (missing: {', '.join(missing)})")
    module_name, attr = _BACKENDS[(task, backend)].split(":")
    return getattr(importlib.import_module(module_name), attr)


def make(task: str, backend: str = "embedded", **options) -> gym.Env:
    return factory(task, backend)(**options)


def expert_for(env: gym.Env):
    """The scripted privileged expert that solves ``env``'s task."""
    if env.task_name == "return_cubes" and hasattr(env, "cube_positions"):
        from envs.cubes_expert import CubesExpert

        return CubesExpert(env)
    if env.task_name == "retrace" and hasattr(env, "heading"):
        from envs.retrace_miniworld import MiniWorldRetraceExpert

        return MiniWorldRetraceExpert(env)
    if env.task_name == "retrace" and hasattr(env, "walkable"):
        from envs.retrace_expert import RetraceExpert

        return RetraceExpert(env)
    raise TypeError(f"no scripted expert for {type(env).__name__}; experts need an embedded backend")
