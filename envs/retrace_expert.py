"""Scripted expert for ``retrace``: walks each leg (BFS around anything in the way),
then walks the outbound path in exact reverse, one chunk per leg."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np

from tasks import retrace as task
from tasks.base import CHUNK_FRAMES, Subgoal

STAY = task.ACTIONS.index("stay")
ACTION_OF_STEP = {task.DIRECTIONS[d]: task.ACTIONS.index(f"go {d}") for d in task.DIRECTIONS}


def bfs_path(start: tuple[int, int], goal: tuple[int, int], walkable) -> list[tuple[int, int]]:
    """Shortest 4-connected tile path from start to goal (both included)."""
    parents = {start: None}
    queue = deque([start])
    while queue:
        tile = queue.popleft()
        if tile == goal:
            path = [tile]
            while parents[path[-1]] is not None:
                path.append(parents[path[-1]])
            return path[::-1]
        for dx, dy in ACTION_OF_STEP:
            nxt = (tile[0] + dx, tile[1] + dy)
            if nxt not in parents and (nxt == goal or walkable(*nxt)):
                parents[nxt] = tile
                queue.append(nxt)
    raise RuntimeError(f"no walkable path from {start} to {goal}")


class RetraceExpert:
    def __init__(self, env):
        self.env = env
        self._leg_ends: list[tuple[int, int]] = []

    def hold(self) -> int:
        return STAY

    def actions(self, subgoal: Subgoal) -> Iterator[int]:
        env = self.env
        if subgoal.kind == "walk":
            here = tuple(int(v) for v in env.player_pos())
            self._leg_ends.append(here)
            step = np.array(task.DIRECTIONS[subgoal.params["direction"]])
            goal = tuple(int(v) for v in np.array(here) + step * subgoal.params["steps"])
            yield from self._walk(bfs_path(here, goal, env.walkable))
        elif subgoal.kind == "retrace":
            # Legs are walked back last-first, each in its own chunk, mirroring the outbound chunks.
            for leg_start in reversed(self._leg_ends):
                here = tuple(int(v) for v in env.player_pos())
                moves = list(self._walk(bfs_path(here, leg_start, env.walkable)))
                yield from moves
                yield from [STAY] * (-len(moves) % CHUNK_FRAMES)
            self._leg_ends = []
        else:
            raise ValueError(f"the retrace expert cannot do a {subgoal.kind!r} subgoal")

    def _walk(self, path: list[tuple[int, int]]) -> Iterator[int]:
        for a, b in zip(path, path[1:]):
            yield ACTION_OF_STEP[(b[0] - a[0], b[1] - a[1])]
