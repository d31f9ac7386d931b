"""``retrace``: walk out along a path of straight legs, then retrace it back to the start.

Paper Sec. 4.2 "Game Navigation". Positions are integer (x, y) tiles of a top-down
world, x to the right and y downwards in the image; distances are in blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.base import CHUNK_FRAMES, Subgoal

NAME = "retrace"

# Action index -> text, shared by every backend and the world model's vocabulary.
ACTIONS = ("stay", "go left", "go right", "go up", "go down")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}

LEG_MIN, LEG_MAX = 3, CHUNK_FRAMES  # a leg fits in one chunk
WAYPOINT_EVERY = 2  # every 2nd tile of the outbound path (and its end) is a waypoint
SUCCESS_RADIUS = 1.0

LEG_TEMPLATE = "go {direction} for {steps} steps"
RETRACE_TEXT = "retrace the path back to the start"
# Subgoal kinds of the second phase, the one that needs memory of the first.
RETURN_KINDS = ("retrace",)
GOAL_TEMPLATE = "{legs}, then retrace your path back to where you started"


@dataclass(frozen=True)
class Leg:
    direction: str
    steps: int

    def text(self) -> str:
        return LEG_TEMPLATE.format(direction=self.direction, steps=self.steps)


def path_of(start: np.ndarray, legs: list[Leg]) -> np.ndarray:
    """Every tile visited by walking the legs from ``start``, start included."""
    tiles = [np.asarray(start)]
    for leg in legs:
        step = np.array(DIRECTIONS[leg.direction])
        tiles += [tiles[-1] + step * (i + 1) for i in range(leg.steps)]
    return np.stack(tiles)


class NoClearPathError(RuntimeError):
    pass


def sample_legs(rng: np.random.Generator, start: np.ndarray, walkable, num_legs: int = 3,
                tries: int = 500, max_steps: int = LEG_MAX) -> list[Leg]:
    """Straight legs over walkable tiles that never cross the path so far.

    ``walkable(x, y) -> bool`` comes from the backend's world; ``max_steps`` leaves room
    in a chunk for the turns a first-person backend needs.
    """
    for _ in range(tries):
        legs: list[Leg] = []
        visited = {tuple(start)}
        pos = np.asarray(start)
        for _ in range(num_legs):
            options = [d for d in DIRECTIONS if not legs or d not in (legs[-1].direction,
                                                                       OPPOSITE[legs[-1].direction])]
            direction = options[rng.integers(len(options))]
            steps = int(rng.integers(LEG_MIN, max_steps + 1))
            tiles = path_of(pos, [Leg(direction, steps)])[1:]
            if any(tuple(t) in visited or not walkable(*t) for t in tiles):
                break
            visited.update(map(tuple, tiles))
            legs.append(Leg(direction, steps))
            pos = tiles[-1]
        if len(legs) == num_legs:
            return legs
    raise NoClearPathError(f"no clear {num_legs}-leg path from {tuple(int(v) for v in start)} in {tries} tries")


def goal_text(legs: list[Leg]) -> str:
    parts = [leg.text() for leg in legs]
    joined = parts[0] if len(parts) == 1 else ", then ".join(parts)
    return GOAL_TEMPLATE.format(legs=joined)


def canonical_subgoals(legs: list[Leg]) -> list[Subgoal]:
    out = [Subgoal(leg.text(), "walk", {"direction": leg.direction, "steps": leg.steps}) for leg in legs]
    out.append(Subgoal(RETRACE_TEXT, "retrace", {"legs": len(legs)}))
    return out


def branch_subgoals(subgoals: list[Subgoal], start: np.ndarray, walkable) -> list[list[Subgoal]]:
    """Counterfactual first legs for `slowfast collect --branches`: from the same start, the
    first leg's length in each other direction whose straight tiles are all walkable. Only
    the text then tells these chunks from the real one; drawn often and trained at high noise
    (`slowfast train --branch-portion`), they taught the world model to read the direction
    (checkpoints/README.md, "Session 14")."""
    first = subgoals[0]
    out = []
    for direction in DIRECTIONS:
        if direction == first.params["direction"]:
            continue
        leg = Leg(direction, first.params["steps"])
        if all(walkable(*tile) for tile in path_of(start, [leg])[1:]):
            out.append([Subgoal(leg.text(), "walk", {"direction": direction, "steps": leg.steps})])
    return out


def subgoal_templates() -> list[Subgoal]:
    out = [Subgoal(Leg(d, n).text(), "walk", {"direction": d, "steps": n})
           for d in DIRECTIONS for n in range(LEG_MIN, LEG_MAX + 1)]
    return out + [Subgoal(RETRACE_TEXT, "retrace", {})]


def frames_for(subgoal: Subgoal) -> int:
    """Chunk budget: one chunk a leg out, and one chunk a leg back."""
    legs = subgoal.params.get("legs", 1) if subgoal.kind == "retrace" else 1
    return legs * CHUNK_FRAMES


def waypoints(outbound: np.ndarray) -> np.ndarray:
    picks = list(range(0, len(outbound), WAYPOINT_EVERY))
    if picks[-1] != len(outbound) - 1:
        picks.append(len(outbound) - 1)
    return np.asarray(outbound)[picks]


def leg_headings(outbound: np.ndarray) -> np.ndarray:
    """Unit step of each leg of a path of tiles (consecutive legs never share a direction)."""
    steps = np.diff(np.asarray(outbound, dtype=int).reshape(-1, 2), axis=0)
    starts = [0] + [i for i in range(1, len(steps)) if not np.array_equal(steps[i], steps[i - 1])]
    return steps[starts]


def return_chunk_moves(outbound: np.ndarray, return_trajectory: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Net move of each return chunk and the heading it should have had (the last leg undone first).

    The return gives one chunk a leg (``frames_for``), so chunk j should undo leg L-1-j; which
    way that is comes from the memory of the way out (for the first chunk, also from the last
    leg's motion if the context frames still show it), and the distance blurs it.
    """
    trajectory = np.asarray(return_trajectory, dtype=float).reshape(-1, 2)
    headings = -leg_headings(outbound)[::-1]
    begins = [j * CHUNK_FRAMES for j in range(len(headings)) if j * CHUNK_FRAMES < len(trajectory) - 1]
    moves = [trajectory[min(b + CHUNK_FRAMES, len(trajectory) - 1)] - trajectory[b] for b in begins]
    return np.reshape(moves, (-1, 2)), headings[:len(moves)]


def heads_back(moves: np.ndarray, headings: np.ndarray) -> list[bool]:
    """Whether each net move points mostly (strictly) along its heading."""
    return [float(m @ h) > abs(float(m @ h[::-1])) for m, h in zip(moves, headings)]


def metric(outbound: np.ndarray, outbound_trajectory: np.ndarray, return_trajectory: np.ndarray) -> dict:
    """Mean over waypoints of the closest approach of the return trajectory (blocks).

    ``distance`` is the paper's retrace measure; it only means something if the agent first
    walked the path: one that never leaves the start scores the waypoints' mean distance from
    the start and ends "back" where it started. So success needs both: the outbound
    trajectory reached the path's end (``went_out``) and the return ended at the start.
    """
    points = waypoints(outbound).astype(float)

    def closest_approach(trajectory: np.ndarray) -> np.ndarray:
        trajectory = np.asarray(trajectory, dtype=float).reshape(-1, 2)
        return np.linalg.norm(points[:, None, :] - trajectory[None, :, :], axis=-1).min(axis=1)

    gaps, outbound_gaps = closest_approach(return_trajectory), closest_approach(outbound_trajectory)
    final = float(np.linalg.norm(np.asarray(return_trajectory, dtype=float).reshape(-1, 2)[-1] - points[0]))
    went_out = bool(outbound_gaps[-1] <= SUCCESS_RADIUS)
    moves, headings = return_chunk_moves(outbound, return_trajectory)
    retraced = heads_back(moves, headings)
    return {
        "distance": float(gaps.mean()),
        "per_waypoint": [float(g) for g in gaps],
        "outbound_distance": float(outbound_gaps.mean()),
        "went_out": went_out,
        "final_distance": final,
        "success": went_out and final <= SUCCESS_RADIUS,
        "return_chunk_moves": moves.astype(int).tolist(),
        "retraced_per_leg": retraced,
        "legs_retraced": float(np.mean(retraced)) if retraced else 0.0,
    }
