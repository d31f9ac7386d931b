"""Embedded ``return_cubes`` simulator: a Franka Panda and coloured cubes in PyBullet.

Physics runs at 240 Hz; one env step is one video frame at ``fps`` (default 10), so
each action is tracked for ``240 // fps`` physics steps. The action is an end-effector
position delta in metres (scaled from [-1, 1] by ``max_step``) plus a gripper command
(> 0 closes). The commanded end-effector target is integrated, clipped to the work
space and solved with PyBullet's IK, with the hand pointing straight down.

Rendering uses PyBullet's CPU ``ER_TINY_RENDERER``, so no GL is needed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.cubes_hooks import CubesHooks
from tasks import return_cubes as task


@contextlib.contextmanager
def _silence_c_stdout():
    """PyBullet's C code prints banners to stdout, which would corrupt JSON output."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


with _silence_c_stdout():
    import pybullet
    import pybullet_data
    from pybullet_utils.bullet_client import BulletClient

PHYSICS_HZ = 240
ARM_JOINTS = list(range(7))
FINGER_JOINTS = [9, 10]
GRASP_LINK = 11
ARM_REST = [0.0, -0.25, 0.0, -2.3, 0.0, 2.05, 0.785]
FINGER_OPEN = 0.04
HAND_DOWN = pybullet.getQuaternionFromEuler([np.pi, 0.0, 0.0])
WORKSPACE_LOW = np.array([0.25, -0.40, 0.015])
WORKSPACE_HIGH = np.array([0.78, 0.40, 0.35])
HOME = np.array([0.47, 0.0, 0.17])


@dataclass
class CubesEnvConfig:
    num_cubes: int = 2
    image_size: int = 64
    fps: int = 10
    max_step: float = 0.03
    max_episode_steps: int = 1000
    camera_eye: tuple[float, float, float] = (1.0, 0.0, 0.70)
    camera_target: tuple[float, float, float] = (0.50, 0.0, 0.08)
    camera_fov: float = 38.0

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 512:
            raise ValueError(f"image_size must be within 16..512, got {self.image_size}")
        if PHYSICS_HZ % self.fps:
            raise ValueError(f"fps must divide {PHYSICS_HZ}, got {self.fps}")
        if not 0 < self.max_step <= 0.1:
            raise ValueError(f"max_step must be in (0, 0.1] metres, got {self.max_step}")


class CubesEnv(CubesHooks, gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, config: CubesEnvConfig | None = None, render_mode: str | None = "rgb_array",
                 **overrides):
        self.config = config or CubesEnvConfig(**overrides)
        cfg = self.config
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": cfg.fps}
        self.substeps = PHYSICS_HZ // cfg.fps
        n = cfg.num_cubes
        self.colours = tuple(list(task.CUBE_COLOURS)[:n])
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.observation_space = spaces.Dict({
            "rgb": spaces.Box(0, 255, shape=(cfg.image_size, cfg.image_size, 3), dtype=np.uint8),
            "ee_pos": spaces.Box(-2.0, 2.0, shape=(3,), dtype=np.float32),
            "gripper": spaces.Box(0.0, 2 * FINGER_OPEN, shape=(1,), dtype=np.float32),
            "cube_pos": spaces.Box(-2.0, 2.0, shape=(n, 3), dtype=np.float32),
        })
        with _silence_c_stdout():
            self._client = BulletClient(connection_mode=pybullet.DIRECT)
        self._client.setAdditionalSearchPath(pybullet_data.getDataPath())
        self._view = self._client.computeViewMatrix(cfg.camera_eye, cfg.camera_target, [0, 0, 1])
        self._proj = self._client.computeProjectionMatrixFOV(cfg.camera_fov, 1.0, 0.05, 5.0)
        self.layout: task.EpisodeLayout | None = None
        self._frame: np.ndarray | None = None
        self._steps = 0

    # --- scene -----------------------------------------------------------------------
    def _build_scene(self) -> None:
        c = self._client
        c.resetSimulation()
        c.setGravity(0, 0, -9.81)
        c.setTimeStep(1.0 / PHYSICS_HZ)
        plane = c.loadURDF("plane.urdf")
        c.changeVisualShape(plane, -1, textureUniqueId=-1, rgbaColor=[0.55, 0.5, 0.45, 1])
        c.changeDynamics(plane, -1, lateralFriction=1.0)
        self._panda = c.loadURDF("franka_panda/panda.urdf", [0, 0, 0], useFixedBase=True)
        for joint, q in zip(ARM_JOINTS, ARM_REST):
            c.resetJointState(self._panda, joint, q)
        for joint in FINGER_JOINTS:
            c.resetJointState(self._panda, joint, FINGER_OPEN)
            c.changeDynamics(self._panda, joint, lateralFriction=2.0, spinningFriction=0.01)
        # Without coupling, two force-limited fingers let a held cube slide freely
        # along the closing axis; a gear keeps them symmetric so the cube is centred.
        gear = c.createConstraint(self._panda, FINGER_JOINTS[0], self._panda, FINGER_JOINTS[1],
                                  pybullet.JOINT_GEAR, [1, 0, 0], [0, 0, 0], [0, 0, 0])
        c.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=50)
        h = task.CUBE_HALF_SIZE
        self._cubes = []
        collision = c.createCollisionShape(pybullet.GEOM_BOX, halfExtents=[h] * 3)
        for colour, xy in zip(self.layout.colours, self.layout.start_xy):
            visual = c.createVisualShape(pybullet.GEOM_BOX, halfExtents=[h] * 3,
                                         rgbaColor=[*task.CUBE_COLOURS[colour], 1.0])
            cube = c.createMultiBody(0.08, collision, visual, [xy[0], xy[1], h])
            c.changeDynamics(cube, -1, lateralFriction=1.5, spinningFriction=0.01)
            self._cubes.append(cube)

    # --- gymnasium API ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.layout = task.sample_layout(self.np_random, self.config.num_cubes)
        self._build_scene()
        self._ee_target = HOME.copy()
        self._gripper_closed = False
        self._drive()
        # Let the arm reach home and the cubes settle before the first frame.
        for _ in range(3):
            self._simulate()
        self._steps = 0
        obs = self._observe()
        self._track_cubes(self.cube_positions(), reset=True)
        return obs, self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 4 finite numbers, got {action!r}")
        self._ee_target = np.clip(self._ee_target + action[:3] * self.config.max_step,
                                  WORKSPACE_LOW, WORKSPACE_HIGH)
        self._gripper_closed = bool(action[3] > 0)
        self._drive()
        self._simulate()
        self._steps += 1
        obs = self._observe()
        self._track_cubes(self.cube_positions())
        truncated = self._steps >= self.config.max_episode_steps
        return obs, 0.0, False, truncated, self._info()

    def render(self):
        return self._frame

    def render_frame(self) -> np.ndarray:
        """Renders the current state anew (what the speed benchmark times)."""
        return self._observe()["rgb"]

    def close(self):
        if self._client is not None:
            self._client.disconnect()
            self._client = None

    # --- state, control, sensing -----------------------------------------------------------
    def cube_positions(self) -> np.ndarray:
        return np.array([self._client.getBasePositionAndOrientation(b)[0] for b in self._cubes])

    def ee_position(self) -> np.ndarray:
        return np.array(self._client.getLinkState(self._panda, GRASP_LINK)[4])

    @property
    def ee_target(self) -> np.ndarray:
        return self._ee_target.copy()

    def subgoals(self) -> list:
        return task.canonical_subgoals(self.layout)

    def _drive(self) -> None:
        c = self._client
        q = c.calculateInverseKinematics(self._panda, GRASP_LINK, self._ee_target.tolist(), HAND_DOWN,
                                         restPoses=ARM_REST + [0.0] * 5, maxNumIterations=60,
                                         residualThreshold=1e-4)
        c.setJointMotorControlArray(self._panda, ARM_JOINTS, pybullet.POSITION_CONTROL,
                                    targetPositions=q[:7], forces=[200.0] * 7)
        finger = 0.0 if self._gripper_closed else FINGER_OPEN
        c.setJointMotorControlArray(self._panda, FINGER_JOINTS, pybullet.POSITION_CONTROL,
                                    targetPositions=[finger, finger], forces=[60.0, 60.0])

    def _simulate(self) -> None:
        for _ in range(self.substeps):
            self._client.stepSimulation()

    def _observe(self) -> dict:
        size = self.config.image_size
        _, _, rgba, _, _ = self._client.getCameraImage(size, size, self._view, self._proj,
                                                       renderer=pybullet.ER_TINY_RENDERER)
        self._frame = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[:, :, :3].copy()
        fingers = sum(self._client.getJointState(self._panda, j)[0] for j in FINGER_JOINTS)
        return {
            "rgb": self._frame,
            "ee_pos": self.ee_position().astype(np.float32),
            "gripper": np.array([np.clip(fingers, 0.0, 2 * FINGER_OPEN)], dtype=np.float32),
            "cube_pos": self.cube_positions().astype(np.float32),
        }

    def _info(self) -> dict:
        return {
            "colours": self.layout.colours,
            "places": self.layout.places,
            "initial_cube_pos": self.initial_cube_pos.copy(),
        }
