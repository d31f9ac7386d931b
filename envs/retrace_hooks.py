"""Task hooks shared by every ``retrace`` backend.

A backend keeps ``legs``, ``start``, ``positions`` (one per frame) and ``_return_from``
(the frame the retrace subgoal began at, or None); these methods turn them into goal
text, subgoals and the waypoint metric.
"""

from __future__ import annotations

import numpy as np

from tasks import retrace as task
from tasks.base import Subgoal


class RetraceHooks:
    task_name = task.NAME

    def goal_text(self) -> str:
        return task.goal_text(self.legs)

    def subgoal_context(self) -> dict:
        return {}

    def subgoals(self) -> list[Subgoal]:
        return task.canonical_subgoals(self.legs)

    def branch_subgoals(self) -> list[list[Subgoal]]:
        """Other first legs from this start (`slowfast collect --branches`); needs ``walkable``."""
        if not hasattr(self, "walkable"):
            raise NotImplementedError(f"{type(self).__name__} cannot tell walkable tiles, so it records no branches")
        return task.branch_subgoals(self.subgoals(), self.start, self.walkable)

    def start_subgoal(self, subgoal: Subgoal) -> None:
        if subgoal.kind == "retrace" and self._return_from is None:
            self._return_from = len(self.positions) - 1

    def outbound_path(self) -> np.ndarray:
        return task.path_of(self.start, self.legs)

    def metric(self) -> dict:
        start = self._return_from if self._return_from is not None else len(self.positions) - 1
        positions = np.stack(self.positions)
        return task.metric(self.outbound_path(), positions[:start + 1], positions[start:])
