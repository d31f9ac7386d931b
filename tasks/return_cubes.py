"""``return_cubes``: move cubes aside, then put each back where it started (paper Sec. 4.2).

Coordinates are the robot base frame in metres: x points away from the robot towards
the front camera, y points to the camera image's right. Place names are what a person
sees in the front camera image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.base import Subgoal

NAME = "return_cubes"

CUBE_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "blue": (0.1, 0.25, 0.9),
    "green": (0.1, 0.75, 0.15),
}
CUBE_HALF_SIZE = 0.03

# Where cubes are moved "aside" to; far enough from the start region that a returned
# cube is unambiguous.
PLACES: dict[str, tuple[float, float]] = {
    "left side": (0.50, -0.23),
    "right side": (0.50, 0.23),
    "front": (0.68, 0.0),
}
START_REGION_X = (0.40, 0.56)
START_REGION_Y = (-0.10, 0.10)
MIN_CUBE_SEPARATION = 0.09

SUCCESS_RADIUS = 0.02
# A cube counts as moved aside once it has been this far from its start: every place
# is >= 0.12 m from the start region, so a cube that never left it cannot pass as
# "returned".
MOVED_AWAY_RADIUS = 0.10
# Every subgoal is padded to this many frames by holding still, so chunks never mix
# two subgoals and the planner knows how many chunks a subgoal gets.
FRAMES_PER_SUBGOAL = 64

MOVE_TEMPLATE = "move the {colour} cube to the {place}"
RETURN_TEMPLATE = "put the {colour} cube back where it was"
# Subgoal kinds of the second phase, the one that needs memory of the first.
RETURN_KINDS = ("return",)
GOAL_TEMPLATE = "move {cubes} aside, then put each back where it started"


@dataclass(frozen=True)
class EpisodeLayout:
    """The seed's draw: which cubes, where they start, where each is moved to."""

    colours: tuple[str, ...]
    start_xy: np.ndarray  # (n, 2)
    places: tuple[str, ...]


def sample_layout(rng: np.random.Generator, num_cubes: int = 2) -> EpisodeLayout:
    if not 1 <= num_cubes <= len(CUBE_COLOURS):
        raise ValueError(f"num_cubes must be between 1 and {len(CUBE_COLOURS)}, got {num_cubes}")
    colours = tuple(list(CUBE_COLOURS)[:num_cubes])
    starts: list[np.ndarray] = []
    while len(starts) < num_cubes:
        xy = np.array([rng.uniform(*START_REGION_X), rng.uniform(*START_REGION_Y)])
        if all(np.linalg.norm(xy - other) >= MIN_CUBE_SEPARATION for other in starts):
            starts.append(xy)
    place_order = rng.permutation(len(PLACES))[:num_cubes]
    places = tuple(list(PLACES)[i] for i in place_order)
    return EpisodeLayout(colours=colours, start_xy=np.stack(starts), places=places)


def goal_text(colours: tuple[str, ...]) -> str:
    if len(colours) == 1:
        cubes = f"{colours[0]} cube"
    else:
        cubes = ", ".join(colours[:-1]) + f" and {colours[-1]} cubes"
    return GOAL_TEMPLATE.format(cubes=f"the {cubes}")


def canonical_subgoals(layout: EpisodeLayout) -> list[Subgoal]:
    moves = [
        Subgoal(MOVE_TEMPLATE.format(colour=c, place=p), "move", {"cube": c, "place": p})
        for c, p in zip(layout.colours, layout.places)
    ]
    returns = [
        Subgoal(RETURN_TEMPLATE.format(colour=c), "return", {"cube": c}) for c in layout.colours
    ]
    return moves + returns


def subgoal_templates(colours: tuple[str, ...]) -> list[Subgoal]:
    """Every subgoal allowed for these cubes, for constrained decomposition."""
    out = [
        Subgoal(MOVE_TEMPLATE.format(colour=c, place=p), "move", {"cube": c, "place": p})
        for c in colours
        for p in PLACES
    ]
    out += [Subgoal(RETURN_TEMPLATE.format(colour=c), "return", {"cube": c}) for c in colours]
    return out


def branch_subgoals(subgoals: list[Subgoal]) -> list[list[Subgoal]]:
    """Counterfactual first moves for `slowfast collect --branches`: the same cube to each
    other place. The arm's path to the cube is the same; where it carries it is told only by
    the text (the retrace counterpart: `tasks.retrace.branch_subgoals`)."""
    first = subgoals[0]
    cube = first.params["cube"]
    return [[Subgoal(MOVE_TEMPLATE.format(colour=cube, place=place), "move", {"cube": cube, "place": place})]
            for place in PLACES if place != first.params["place"]]


def frames_for(subgoal: Subgoal) -> int:
    return FRAMES_PER_SUBGOAL


def metric(initial_pos: np.ndarray, final_pos: np.ndarray, colours: tuple[str, ...],
           max_displacement: np.ndarray | None = None) -> dict:
    """Paper Table 2 "Dist": mean Euclidean distance of each cube to where it started.

    With ``max_displacement`` (farthest each cube got from its start during the episode),
    success also needs every cube to have been moved aside, and ``moved_away`` says
    whether they were.
    """
    per_cube = np.linalg.norm(np.asarray(final_pos) - np.asarray(initial_pos), axis=-1)
    returned = bool((per_cube < SUCCESS_RADIUS).all())
    out = {"distance": float(per_cube.mean()), "per_cube": {c: float(d) for c, d in zip(colours, per_cube)}}
    if max_displacement is None:
        return {**out, "success": returned}
    moved = np.asarray(max_displacement) >= MOVED_AWAY_RADIUS
    return {**out, "max_displacement": {c: float(d) for c, d in zip(colours, max_displacement)},
            "moved_away": bool(moved.all()), "success": returned and bool(moved.all())}
