"""Scripted pick-and-place expert for ``return_cubes``, using privileged simulator state.

Open-loop IK pick-and-place lands a cube ~1-2 cm off because the cube slips in the
grasp. The expert therefore measures the cube's offset from the gripper after lifting,
places the gripper so that the *cube* lands on the target, and re-grasps to correct
while the cube is still further than ``tolerance`` from its target.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from envs.cubes import CubesEnv
from tasks import return_cubes as task
from tasks.base import Subgoal

CARRY_HEIGHT = 0.13
GRASP_HEIGHT = task.CUBE_HALF_SIZE - 0.005
RELEASE_HEIGHT = task.CUBE_HALF_SIZE + 0.006
GRIPPER_FRAMES = 4


class CubesExpert:
    def __init__(self, env: CubesEnv, tolerance: float = 0.004, max_corrections: int = 2):
        self.env = env
        self.tolerance = tolerance
        self.max_corrections = max_corrections

    def target_of(self, subgoal: Subgoal) -> np.ndarray:
        index = self.env.layout.colours.index(subgoal.params["cube"])
        if subgoal.kind == "move":
            x, y = task.PLACES[subgoal.params["place"]]
            return np.array([x, y])
        if subgoal.kind == "return":
            return self.env.initial_cube_pos[index, :2].copy()
        raise ValueError(f"the cubes expert cannot do a {subgoal.kind!r} subgoal")

    def actions(self, subgoal: Subgoal) -> Iterator[np.ndarray]:
        """Yields one action per frame; reads the env's state between yields."""
        index = self.env.layout.colours.index(subgoal.params["cube"])
        target = self.target_of(subgoal)
        for _ in range(1 + self.max_corrections):
            yield from self._pick_and_place(index, target)
            error = np.linalg.norm(self.env.cube_positions()[index, :2] - target)
            if error < self.tolerance:
                break

    def hold(self) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, 1.0 if self.env._gripper_closed else -1.0], dtype=np.float32)

    def _pick_and_place(self, index: int, target_xy: np.ndarray) -> Iterator[np.ndarray]:
        env = self.env
        cube = env.cube_positions()[index]
        yield from self._move_to(np.array([*cube[:2], CARRY_HEIGHT]), closed=False)
        cube = env.cube_positions()[index]
        yield from self._move_to(np.array([*cube[:2], GRASP_HEIGHT]), closed=False)
        yield from self._grip(closed=True)
        yield from self._move_to(np.array([*env.ee_target[:2], CARRY_HEIGHT]), closed=True)
        hand_xy = target_xy.copy()
        # The cube slides between the fingers when the hand stops, so the offset is
        # measured again after each move until the cube hangs over its target.
        for _ in range(3):
            offset = env.cube_positions()[index, :2] - env.ee_position()[:2]
            hand_xy = target_xy - offset
            if np.linalg.norm(hand_xy - env.ee_target[:2]) < 1e-3:
                break
            yield from self._move_to(np.array([*hand_xy, CARRY_HEIGHT]), closed=True)
        yield from self._move_to(np.array([*hand_xy, RELEASE_HEIGHT]), closed=True)
        yield from self._grip(closed=False)
        yield from self._move_to(np.array([*hand_xy, CARRY_HEIGHT]), closed=False)

    def _move_to(self, goal: np.ndarray, closed: bool) -> Iterator[np.ndarray]:
        grip = 1.0 if closed else -1.0
        for _ in range(100):
            delta = goal - self.env.ee_target
            if np.abs(delta).max() < 1e-4:
                return
            step = np.clip(delta / self.env.config.max_step, -1.0, 1.0)
            yield np.array([*step, grip], dtype=np.float32)

    def _grip(self, closed: bool) -> Iterator[np.ndarray]:
        for _ in range(GRIPPER_FRAMES):
            yield np.array([0.0, 0.0, 0.0, 1.0 if closed else -1.0], dtype=np.float32)
