"""RLBench backend for ``return_cubes`` (CoppeliaSim 4.1 + PyRep + RLBench).

Our action (end-effector delta in metres, scaled from [-1, 1], plus gripper > 0 =
close) maps onto RLBench's ``MoveArmThenGripper(EndEffectorPoseViaIK(absolute_mode=True),
Discrete())``: the delta is added to the current ``gripper_pose`` position, the
orientation is kept pointing down, and the gripper becomes 0.0 (close) or 1.0 (open).

RLBench has no ``return_cubes`` task; a custom task needs a ``.ttm`` scene made with
RLBench's task builder (``python tools/task_builder.py``): two or three cubes named
``cube_red``, ``cube_blue``, ``cube_green`` on the table, with a task file whose
``init_episode`` samples their positions. Until that scene exists, ``rlbench_task``
takes any stock task class name; ``StackBlocks`` and ``PickAndLift`` are the closest
(coloured blocks picked and placed with the same gripper).
"""

from __future__ import annotations

import numpy as np

from envs import BackendUnavailableError
from envs.cubes_hooks import CubesHooks
from tasks import return_cubes as task

INSTALL_HELP = (
    "the rlbench backend needs CoppeliaSim 4.1, PyRep and RLBench: install CoppeliaSim 4.1 "
    "(set COPPELIASIM_ROOT, LD_LIBRARY_PATH and QT_QPA_PLATFORM_PLUGIN_PATH), then "
    "`pip install git+https://github.com/stepjam/PyRep.git git+https://github.com/stepjam/RLBench.git`; "
    "or use --backend embedded")
CUBE_NAMES = ("cube_red", "cube_blue", "cube_green")


def to_rlbench_action(action: np.ndarray, gripper_pose: np.ndarray, max_step: float,
                      hand_down_quaternion: np.ndarray) -> np.ndarray:
    """Our (dx, dy, dz, grip) in [-1, 1] -> RLBench's absolute (x, y, z, qx, qy, qz, qw, open)."""
    action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    position = np.asarray(gripper_pose[:3], dtype=np.float64) + action[:3] * max_step
    gripper_open = 0.0 if action[3] > 0 else 1.0
    return np.concatenate([position, hand_down_quaternion, [gripper_open]])


def from_rlbench_observation(front_rgb: np.ndarray, gripper_pose: np.ndarray,
                             gripper_open: float, cube_positions: np.ndarray) -> dict:
    """RLBench ``Observation`` fields -> our observation dict (same keys as the embedded env)."""
    rgb = np.asarray(front_rgb)
    if rgb.dtype != np.uint8:
        # RLBench gives float images in [0, 1] unless its camera is set to uint8.
        rgb = (np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8)
    return {
        "rgb": rgb,
        "ee_pos": np.asarray(gripper_pose[:3], dtype=np.float32),
        "gripper": np.array([0.08 if gripper_open > 0.5 else 0.0], dtype=np.float32),
        "cube_pos": np.asarray(cube_positions, dtype=np.float32).reshape(-1, 3),
    }


class RLBenchCubesEnv(CubesHooks):
    """gymnasium-style wrapper; constructed only when RLBench is importable."""

    metadata = {"render_fps": 10}

    def __init__(self, image_size: int = 64, max_step: float = 0.03, num_cubes: int = 2,
                 rlbench_task: str = "ReturnCubes", headless: bool = True, **_ignored):
        try:
            from pyrep.objects.shape import Shape
            from rlbench import tasks as rlbench_tasks
            from rlbench.action_modes.action_mode import MoveArmThenGripper
            from rlbench.action_modes.arm_action_modes import EndEffectorPoseViaIK
            from rlbench.action_modes.gripper_action_modes import Discrete
            from rlbench.environment import Environment
            from rlbench.observation_config import ObservationConfig
        except ImportError as error:
            raise BackendUnavailableError(f"{INSTALL_HELP} ({error})") from None
        if not hasattr(rlbench_tasks, rlbench_task):
            raise BackendUnavailableError(
                f"RLBench has no task {rlbench_task!r}; build the return_cubes scene with RLBench's "
                "task builder (see envs/rlbench_backend.py) or pass rlbench_task=StackBlocks")
        obs_config = ObservationConfig()
        obs_config.set_all(False)
        obs_config.front_camera.rgb = True
        obs_config.front_camera.image_size = (image_size, image_size)
        obs_config.gripper_pose = True
        obs_config.gripper_open = True
        self._env = Environment(
            action_mode=MoveArmThenGripper(EndEffectorPoseViaIK(absolute_mode=True), Discrete()),
            obs_config=obs_config, headless=headless)
        self._env.launch()
        self._task = self._env.get_task(getattr(rlbench_tasks, rlbench_task))
        self._shape = Shape
        self._cube_names = CUBE_NAMES[:num_cubes]
        self.colours = tuple(list(task.CUBE_COLOURS)[:num_cubes])
        self.max_step = max_step
        self._hand_down = None
        self._last = None

    def _cube_positions(self) -> np.ndarray:
        return np.array([self._shape(name).get_position() for name in self._cube_names])

    def _convert(self, obs) -> dict:
        return from_rlbench_observation(obs.front_rgb, obs.gripper_pose, obs.gripper_open,
                                        self._cube_positions())

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            np.random.seed(seed)  # RLBench samples task variations with numpy's global RNG
        descriptions, obs = self._task.reset()
        self._last = obs
        self._hand_down = np.asarray(obs.gripper_pose[3:], dtype=np.float64)
        self._track_cubes(self._cube_positions(), reset=True)
        return self._convert(obs), {"descriptions": descriptions,
                                    "initial_cube_pos": self.initial_cube_pos}

    def step(self, action):
        rl_action = to_rlbench_action(action, self._last.gripper_pose, self.max_step, self._hand_down)
        obs, reward, terminate = self._task.step(rl_action)
        self._last = obs
        self._track_cubes(self._cube_positions())
        return self._convert(obs), float(reward), bool(terminate), False, {}

    def render(self):
        return self._convert(self._last)["rgb"]

    def close(self):
        self._env.shutdown()
