"""Embedded ``retrace`` world: Crafter's procedurally generated Minecraft-like terrain.

What we change, and why:
- The frame is Crafter's own top-down local view, 9x9 tiles centred on the player,
  without the inventory bar (it carries nothing for navigation).
- Daylight is held at noon: the day/night cycle would darken frames over an episode
  in a way no action explains.
- No creatures: zombies, skeletons and cows are removed after world generation and
  never respawn, and the player's food, drink, energy and health are refilled every
  step, so a navigation episode of any length cannot end in death.
The world itself (terrain, trees, water, ...) is Crafter's, generated from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import crafter
import gymnasium as gym
import numpy as np
from crafter import constants, engine, objects
from gymnasium import spaces

from envs.retrace_hooks import RetraceHooks
from tasks import retrace as task

WORLD_SIZE = 64
VIEW_TILES = 9
CRAFTER_MOVES = ("noop", "move_left", "move_right", "move_up", "move_down")


class _NavigationCrafter(crafter.Env):
    def _update_time(self):
        self._world.daylight = 1.0

    def _balance_chunk(self, chunk, objs):
        pass


@dataclass
class RetraceEnvConfig:
    image_size: int = 64
    num_legs: int = 3
    max_episode_steps: int = 1000

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 512:
            raise ValueError(f"image_size must be within 16..512, got {self.image_size}")
        if not 1 <= self.num_legs <= 6:
            raise ValueError(f"num_legs must be within 1..6, got {self.num_legs}")


class CrafterRetraceEnv(RetraceHooks, gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, config: RetraceEnvConfig | None = None, render_mode: str | None = "rgb_array",
                 **overrides):
        self.config = config or RetraceEnvConfig(**overrides)
        self.render_mode = render_mode
        size = self.config.image_size
        self.action_space = spaces.Discrete(len(task.ACTIONS))
        self.observation_space = spaces.Dict({
            "rgb": spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8),
            "pos": spaces.Box(0, WORLD_SIZE - 1, shape=(2,), dtype=np.int64),
        })
        self._game: _NavigationCrafter | None = None
        self._view: engine.LocalView | None = None
        self.legs: list[task.Leg] = []
        self.start: np.ndarray | None = None
        self.positions: list[np.ndarray] = []
        self._return_from: int | None = None
        self._frame: np.ndarray | None = None
        self._steps = 0

    # --- gymnasium API ------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        world_seed = int(self.np_random.integers(2**31 - 1))
        self._game = _NavigationCrafter(area=(WORLD_SIZE, WORLD_SIZE), view=(VIEW_TILES, VIEW_TILES),
                                        size=(self.config.image_size,) * 2, reward=False, length=None,
                                        seed=world_seed)
        self._game.reset()
        for obj in list(self._game._world.objects):
            if not isinstance(obj, objects.Player):
                self._game._world.remove(obj)
        self._view = engine.LocalView(self._game._world, self._game._textures, [VIEW_TILES, VIEW_TILES])
        self.start = self.player_pos()
        self.legs = task.sample_legs(self.np_random, self.start, self.walkable, self.config.num_legs)
        self.positions = [self.start]
        self._return_from = None
        self._steps = 0
        return self._observe(), self._info()

    def step(self, action):
        action = int(action)
        if not 0 <= action < len(task.ACTIONS):
            raise ValueError(f"action must be an index into {task.ACTIONS}, got {action}")
        self._refill_vitals()
        self._game.step(constants.actions.index(CRAFTER_MOVES[action]))
        self._steps += 1
        self.positions.append(self.player_pos())
        truncated = self._steps >= self.config.max_episode_steps
        return self._observe(), 0.0, False, truncated, self._info()

    def render(self):
        return self._frame

    def render_frame(self) -> np.ndarray:
        """Renders the current state anew (what the speed benchmark times)."""
        return self._observe()["rgb"]

    def close(self):
        self._game = None

    # --- world ------------------------------------------------------------------------
    def player_pos(self) -> np.ndarray:
        return np.array(self._game._player.pos, dtype=np.int64)

    def walkable(self, x: int, y: int) -> bool:
        if not (0 <= x < WORLD_SIZE and 0 <= y < WORLD_SIZE):
            return False
        material, obj = self._game._world[(x, y)]
        return obj is None and material in constants.walkable

    def _refill_vitals(self) -> None:
        player = self._game._player
        for name in ("health", "food", "drink", "energy"):
            player.inventory[name] = constants.items[name]["max"]
        player._hunger = player._thirst = player._fatigue = 0

    def _observe(self) -> dict:
        size = self.config.image_size
        unit = size // VIEW_TILES
        view = self._view(self._game._player, np.array([unit, unit]))
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        border = (size - unit * VIEW_TILES) // 2
        span = unit * VIEW_TILES
        frame[border:border + span, border:border + span] = view.transpose(1, 0, 2).astype(np.uint8)
        self._frame = frame
        return {"rgb": frame, "pos": self.player_pos()}

    def _info(self) -> dict:
        return {"start": self.start.copy(), "legs": [(leg.direction, leg.steps) for leg in self.legs]}
