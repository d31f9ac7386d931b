"""MineDojo backend for ``retrace`` (Minecraft through MineDojo's Malmo-based simulator).

Our top-down actions keep their meaning in Minecraft with the camera held facing
north: "go up" = forward (north, -z), "go down" = back, "go left" / "go right" =
strafe west / east. One of our steps holds that movement for ``ticks_per_block``
game ticks (walking covers ~0.22 blocks a tick, so 5 ticks ~ 1 block). A position
(x, y, z) maps to our tile (floor(x), floor(z)).

MineDojo's action is an 8-part MultiDiscrete: 0 forward/back, 1 left/right,
2 jump/sneak/sprint, 3 camera pitch and 4 camera yaw (25 bins of 15 degrees, 12 =
no-op), 5 functional, 6 craft argument, 7 inventory argument.
"""

from __future__ import annotations

import numpy as np

from envs import BackendUnavailableError
from envs.retrace_hooks import RetraceHooks
from tasks import retrace as task

INSTALL_HELP = (
    "the minedojo backend needs MineDojo and its Minecraft build: install JDK 8 "
    "(e.g. `apt-get install openjdk-8-jdk`, JAVA_HOME set), then `pip install minedojo` and run "
    "`python -m minedojo.scripts.validate_install` once to build Minecraft; or use --backend embedded")
CAMERA_NOOP = 12
# Our action index -> (forward/back, left/right) entries of MineDojo's action.
_MOVES = {"stay": (0, 0), "go up": (1, 0), "go down": (2, 0), "go left": (0, 1), "go right": (0, 2)}


def to_minedojo_action(action: int) -> np.ndarray:
    forward_back, left_right = _MOVES[task.ACTIONS[int(action)]]
    out = np.zeros(8, dtype=np.int64)
    out[0], out[1] = forward_back, left_right
    out[3] = out[4] = CAMERA_NOOP
    return out


def to_tile(position) -> np.ndarray:
    x, _, z = np.asarray(position, dtype=float)
    return np.array([np.floor(x), np.floor(z)], dtype=np.int64)


def from_minedojo_observation(obs: dict) -> dict:
    rgb = np.asarray(obs["rgb"])
    if rgb.ndim == 3 and rgb.shape[0] == 3:
        rgb = rgb.transpose(1, 2, 0)  # MineDojo is channel-first
    return {"rgb": np.ascontiguousarray(rgb, dtype=np.uint8),
            "pos": to_tile(obs["location_stats"]["pos"])}


class MineDojoRetraceEnv(RetraceHooks):
    """gymnasium-style wrapper around ``minedojo.make(task_id="open-ended", ...)``.

    A flat world by default, so legs sampled without terrain knowledge stay walkable.
    """

    metadata = {"render_fps": 4}

    def __init__(self, image_size: int = 64, num_legs: int = 3, ticks_per_block: int = 5,
                 world_type: str = "flat", **_ignored):
        try:
            import minedojo
        except ImportError as error:
            raise BackendUnavailableError(f"{INSTALL_HELP} ({error})") from None
        self._minedojo = minedojo
        self.image_size = image_size
        self.num_legs = num_legs
        self.ticks_per_block = ticks_per_block
        self.world_type = world_type
        self._env = None
        self.legs: list[task.Leg] = []
        self.positions: list[np.ndarray] = []
        self._return_from: int | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        rng = np.random.default_rng(seed)
        if self._env is not None:
            self._env.close()
        self._env = self._minedojo.make(
            task_id="open-ended", image_size=(self.image_size, self.image_size),
            world_seed=int(rng.integers(2**31 - 1)), seed=int(rng.integers(2**31 - 1)),
            generate_world_type=self.world_type,
            start_position=dict(x=0.5, y=4.0, z=0.5, yaw=180.0, pitch=0.0))
        obs = from_minedojo_observation(self._env.reset())
        self.start = obs["pos"]
        self.legs = task.sample_legs(rng, self.start, lambda x, y: True, self.num_legs)
        self.positions = [self.start]
        self._return_from = None
        self._last = obs
        return obs, {"start": self.start.copy()}

    def step(self, action):
        command = to_minedojo_action(action)
        done = False
        for _ in range(self.ticks_per_block):
            raw, _, done, _ = self._env.step(command)
            if done:
                break
        self._last = from_minedojo_observation(raw)
        self.positions.append(self._last["pos"])
        return self._last, 0.0, bool(done), False, {}

    def render(self):
        return self._last["rgb"]

    def close(self):
        if self._env is not None:
            self._env.close()
