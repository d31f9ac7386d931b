"""Task hooks shared by every ``return_cubes`` backend.

A backend sets ``colours`` and calls ``_track_cubes(positions)`` once at reset and
after every step; these methods turn that into goal text, the decomposer's context and
the metric. The farthest each cube got from its start is kept so the metric can tell
"returned" from "never moved".
"""

from __future__ import annotations

import numpy as np

from tasks import return_cubes as task


class CubesHooks:
    task_name = task.NAME
    colours: tuple[str, ...] = ()
    initial_cube_pos: np.ndarray | None = None

    def _track_cubes(self, positions: np.ndarray, reset: bool = False) -> None:
        positions = np.asarray(positions, dtype=np.float64)
        if reset or self.initial_cube_pos is None:
            self.initial_cube_pos = positions.copy()
            self._max_displacement = np.zeros(len(positions))
        self._last_cube_pos = positions.copy()
        self._max_displacement = np.maximum(self._max_displacement,
                                            np.linalg.norm(positions - self.initial_cube_pos, axis=-1))

    def goal_text(self) -> str:
        return task.goal_text(self.colours)

    def subgoal_context(self) -> dict:
        """What a decomposer may know of the episode: which cubes exist."""
        return {"colours": self.colours}

    def branch_subgoals(self) -> list:
        """Other places for the first cube from this start (`slowfast collect --branches`)."""
        if not hasattr(self, "subgoals"):
            raise NotImplementedError(f"{type(self).__name__} has no scripted subgoals, so it records no branches")
        return task.branch_subgoals(self.subgoals())

    def start_subgoal(self, subgoal) -> None:
        """The cube metric does not depend on phases."""

    def metric(self) -> dict:
        return task.metric(self.initial_cube_pos, self._last_cube_pos, self.colours, self._max_displacement)
