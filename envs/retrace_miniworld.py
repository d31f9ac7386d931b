"""First-person ``retrace`` world (``--backend miniworld``): Farama MiniWorld, rendered headless.

Four rooms in a 2x2 layout with different wall and floor textures, joined by
doorways, and coloured landmarks (boxes, balls, keys) placed from the seed. The
agent turns by exactly 90 degrees and moves exactly one unit, with no drift, so the
outbound legs of the task (``go left for 3 steps`` = face west, then walk 3) live on
a lattice and the expert can retrace them exactly. Actions are MineDojo-like:
``stay``, ``move forward``, ``turn left``, ``turn right``.

MiniWorld renders with OpenGL; with ``PYGLET_HEADLESS=true`` (set here before import)
it uses EGL, which needs Debian's Mesa packages ``libegl1 libegl-mesa0
libgl1-mesa-dri libgl1 libglx-mesa0``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.retrace_hooks import RetraceHooks
from tasks import retrace as task
from tasks.base import CHUNK_FRAMES, Subgoal

ACTIONS = ("stay", "move forward", "turn left", "turn right")
# MiniWorld's direction angle (radians) of each heading; +x is "right" (east), -z is "up" (north).
HEADINGS = {"right": 0.0, "up": math.pi / 2, "left": math.pi, "down": -math.pi / 2}
ROOM_SIZE = 8
WORLD_PLACEMENTS = 20
INSTALL_HELP = ("the miniworld backend needs `pip install miniworld==2.1.0` and Debian's Mesa EGL libraries "
                "(`apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libglx-mesa0`)")


def _import_miniworld():
    os.environ.setdefault("PYGLET_HEADLESS", "true")
    try:
        from miniworld import entity, miniworld, params
    except Exception as error:  # ImportError, or pyglet failing to find EGL
        from envs import BackendUnavailableError

        raise BackendUnavailableError(f"{INSTALL_HELP} ({error})") from None
    return entity, miniworld, params


@dataclass
class MiniWorldRetraceConfig:
    image_size: int = 64
    num_legs: int = 3
    max_episode_steps: int = 1000


def heading_of(direction_angle: float) -> str:
    return min(HEADINGS, key=lambda h: abs(math.remainder(direction_angle - HEADINGS[h], 2 * math.pi)))


def turns_between(current: str, target: str) -> list[int]:
    """Actions turning from one heading to another, fewest first (left = counter-clockwise)."""
    delta = round(math.remainder(HEADINGS[target] - HEADINGS[current], 2 * math.pi) / (math.pi / 2))
    if delta == 0:
        return []
    if abs(delta) == 2:
        return [ACTIONS.index("turn left")] * 2
    return [ACTIONS.index("turn left")] if delta == 1 else [ACTIONS.index("turn right")]


def _make_world_class(entity, miniworld):
    class _RetraceRooms(miniworld.MiniWorldEnv):
        def __init__(self, landmark_seed: int, **kwargs):
            self._landmark_rng = np.random.default_rng(landmark_seed)
            super().__init__(**kwargs)

        def _gen_world(self):
            s = ROOM_SIZE
            textures = [("brick_wall", "asphalt"), ("wood", "floor_tiles_bw"), ("marble", "grass"),
                        ("concrete", "cardboard")]
            rooms = []
            for i, (x0, z0) in enumerate([(-s, -s), (0, -s), (-s, 0), (0, 0)]):
                wall, floor = textures[i]
                rooms.append(self.add_rect_room(min_x=x0, max_x=x0 + s - 0.5 * (x0 < 0),
                                                min_z=z0, max_z=z0 + s - 0.5 * (z0 < 0),
                                                wall_tex=wall, floor_tex=floor))
            self.connect_rooms(rooms[0], rooms[1], min_z=-s / 2 - 1, max_z=-s / 2 + 1, max_y=2.2)
            self.connect_rooms(rooms[2], rooms[3], min_z=s / 2 - 1, max_z=s / 2 + 1, max_y=2.2)
            self.connect_rooms(rooms[0], rooms[2], min_x=-s / 2 - 1, max_x=-s / 2 + 1, max_y=2.2)
            self.connect_rooms(rooms[1], rooms[3], min_x=s / 2 - 1, max_x=s / 2 + 1, max_y=2.2)
            colours = ["red", "green", "blue", "purple", "yellow", "grey"]
            for room in rooms:
                for _ in range(2):
                    kind = [entity.Box, entity.Ball, entity.Key][self._landmark_rng.integers(3)]
                    colour = colours[self._landmark_rng.integers(len(colours))]
                    self.place_entity(kind(color=colour), room=room)
            self.place_agent(room=rooms[3], dir=HEADINGS["up"], pos=np.array([2.5, 0.0, 2.5]))

    return _RetraceRooms


class MiniWorldRetraceEnv(RetraceHooks, gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 5}

    def __init__(self, config: MiniWorldRetraceConfig | None = None, render_mode: str | None = "rgb_array",
                 **overrides):
        entity, miniworld, params = _import_miniworld()
        self.config = config or MiniWorldRetraceConfig(**overrides)
        self.render_mode = render_mode
        self._world_class = _make_world_class(entity, miniworld)
        self._params = params.DEFAULT_PARAMS.no_random()
        self._params.set("forward_step", 1.0)
        self._params.set("forward_drift", 0.0)
        self._params.set("turn_step", 90)
        size = self.config.image_size
        self.action_space = spaces.Discrete(len(ACTIONS))
        self.observation_space = spaces.Dict({
            "rgb": spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8),
            "pos": spaces.Box(-ROOM_SIZE * 2.0, ROOM_SIZE * 2.0, shape=(2,), dtype=np.float32),
        })
        self._world = None
        self.legs: list[task.Leg] = []
        self.positions: list[np.ndarray] = []
        self._return_from: int | None = None
        self._frame = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        size = self.config.image_size
        # ~5 % of placements (next to a wall or corner) leave no room for the legs: place again.
        for placement in range(WORLD_PLACEMENTS):
            if self._world is not None:
                self._world.close()
            self._world = self._world_class(int(self.np_random.integers(2**31 - 1)), obs_width=size,
                                            obs_height=size, params=self._params, domain_rand=False,
                                            max_episode_steps=self.config.max_episode_steps)
            obs, _ = self._world.reset(seed=int(self.np_random.integers(2**31 - 1)))
            self.start = self.player_pos()
            try:
                self.legs = task.sample_legs(self.np_random, np.round(self.start).astype(int), self.walkable,
                                             self.config.num_legs, max_steps=task.LEG_MAX - 2)
                break
            except task.NoClearPathError:
                if placement == WORLD_PLACEMENTS - 1:
                    raise
        self.positions = [self.start]
        self._return_from = None
        self._frame = obs
        return self._observe(obs), {"start": self.start.copy()}

    def step(self, action):
        action = int(action)
        if not 0 <= action < len(ACTIONS):
            raise ValueError(f"action must be an index into {ACTIONS}, got {action}")
        world = self._world
        if ACTIONS[action] == "move forward":
            world.move_agent(self._params.get_max("forward_step"), 0.0)
        elif ACTIONS[action] == "turn left":
            world.turn_agent(90)
        elif ACTIONS[action] == "turn right":
            world.turn_agent(-90)
        obs = world.render_obs()
        self.positions.append(self.player_pos())
        truncated = len(self.positions) - 1 >= self.config.max_episode_steps
        return self._observe(obs), 0.0, False, truncated, {}

    def render(self):
        return self._frame

    def render_frame(self) -> np.ndarray:
        """Renders the current state anew (what the speed benchmark times)."""
        return self._observe(self._world.render_obs())["rgb"]

    def close(self):
        if self._world is not None:
            self._world.close()
            self._world = None

    def outbound_path(self) -> np.ndarray:
        """Legs were sampled on the integer lattice; the agent stands at a half-unit offset."""
        return task.path_of(np.round(self.start).astype(int), self.legs) + (self.start - np.round(self.start))

    # --- world ----------------------------------------------------------------------
    def player_pos(self) -> np.ndarray:
        x, _, z = self._world.agent.pos
        return np.array([x, z], dtype=np.float32)

    def heading(self) -> str:
        return heading_of(self._world.agent.dir)

    def walkable(self, x: float, y: float) -> bool:
        """Inside a room and clear of walls and landmarks. Rooms are half a unit apart and
        tiles sit at half-unit offsets, so a step can only cross a wall line through a
        tile on it, which ``intersect`` rejects unless it is in a doorway."""
        offset = self.start - np.round(self.start)
        pos = np.array([x + offset[0], 0.0, y + offset[1]])
        inside = any(room.point_inside(pos) for room in self._world.rooms)
        return inside and not self._world.intersect(self._world.agent, pos, self._world.agent.radius)

    def _observe(self, frame) -> dict:
        self._frame = np.asarray(frame, dtype=np.uint8)
        return {"rgb": self._frame, "pos": self.player_pos()}


class MiniWorldRetraceExpert:
    """Turns to each leg's heading and walks it; retraces by walking the legs back last-first."""

    def __init__(self, env: MiniWorldRetraceEnv):
        self.env = env

    def hold(self) -> int:
        return ACTIONS.index("stay")

    def _leg(self, direction: str, steps: int):
        yield from turns_between(self.env.heading(), direction)
        yield from [ACTIONS.index("move forward")] * steps

    def actions(self, subgoal: Subgoal):
        if subgoal.kind == "walk":
            yield from self._leg(subgoal.params["direction"], subgoal.params["steps"])
        elif subgoal.kind == "retrace":
            for leg in reversed(self.env.legs):
                moves = list(self._leg(task.OPPOSITE[leg.direction], leg.steps))
                yield from moves
                yield from [self.hold()] * (-len(moves) % CHUNK_FRAMES)
        else:
            raise ValueError(f"the miniworld retrace expert cannot do a {subgoal.kind!r} subgoal")
