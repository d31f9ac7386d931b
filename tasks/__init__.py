"""Task specs: goal text, subgoals, waypoints and metrics, independent of any simulator."""

from __future__ import annotations

from types import ModuleType

from tasks import retrace, return_cubes
from tasks.base import Subgoal, UnknownTaskError

_TASKS: dict[str, ModuleType] = {return_cubes.NAME: return_cubes, retrace.NAME: retrace}


def names() -> list[str]:
    return sorted(_TASKS)


def get(name: str) -> ModuleType:
    try:
        return _TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None


__all__ = ["Subgoal", "UnknownTaskError", "get", "names"]
