"""Goal text -> subgoals the world model understands.

Every decomposer's output is checked against the task's subgoal templates
(``validate``): a subgoal whose text is not one of them is rejected, so whatever an
LLM says, the world model only ever sees texts from its training vocabulary.

``rules`` is deterministic and needs nothing; ``openai`` (agent/llm.py) asks any
OpenAI-compatible endpoint and falls back to ``rules`` on failure.
"""

from __future__ import annotations

import re

import tasks
from tasks import retrace, return_cubes
from tasks.base import Subgoal

NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10}
DIRECTION_WORDS = {"left": "left", "west": "left", "right": "right", "east": "right", "up": "up",
                   "north": "up", "forward": "up", "down": "down", "south": "down", "backward": "down"}


class DecompositionError(ValueError):
    pass


def allowed_subgoals(task: str, context: dict) -> list[Subgoal]:
    """The templates a decomposition may use for this episode."""
    if task == "return_cubes":
        return return_cubes.subgoal_templates(tuple(context["colours"]))
    if task == "retrace":
        return retrace.subgoal_templates()
    raise DecompositionError(f"no subgoal templates for task {task!r}")


def validate(task: str, texts: list[str], context: dict) -> list[Subgoal]:
    """Texts -> template subgoals, in order; raises on anything outside the vocabulary."""
    by_text = {s.text: s for s in allowed_subgoals(task, context)}
    subgoals = []
    for text in texts:
        key = " ".join(str(text).lower().split()).rstrip(".")
        if key not in by_text:
            raise DecompositionError(f"subgoal {text!r} is not one of the task's templates")
        subgoals.append(by_text[key])
    if not subgoals:
        raise DecompositionError("the decomposition has no subgoals")
    if task == "retrace":
        params = [dict(s.params) for s in subgoals]
        if subgoals[-1].kind != "retrace" or any(s.kind == "retrace" for s in subgoals[:-1]):
            raise DecompositionError("a retrace plan is walking legs followed by one retrace subgoal")
        legs = len(subgoals) - 1
        subgoals[-1] = Subgoal(subgoals[-1].text, "retrace", {**params[-1], "legs": legs})
    return subgoals


def _number(word: str) -> int:
    return int(word) if word.isdigit() else NUMBER_WORDS[word]


def rules(task: str, goal: str, context: dict) -> list[Subgoal]:
    """Deterministic decomposition from keywords and numbers in the goal text."""
    text = goal.lower()
    if task == "return_cubes":
        colours = [c for c in sorted(return_cubes.CUBE_COLOURS, key=text.find) if c in text]
        colours = [c for c in colours if c in context["colours"]] or list(context["colours"])
        places = list(return_cubes.PLACES)
        moves = [return_cubes.MOVE_TEMPLATE.format(colour=c, place=places[i % len(places)])
                 for i, c in enumerate(colours)]
        returns = [return_cubes.RETURN_TEMPLATE.format(colour=c) for c in colours]
        return validate(task, moves + returns, context)
    if task == "retrace":
        numbers = "|".join(["\\d+", *NUMBER_WORDS])
        directions = "|".join(DIRECTION_WORDS)
        legs = []
        pattern = rf"(?:({directions})\D{{0,20}}?\b({numbers})\b|\b({numbers})\b\D{{0,20}}?({directions}))"
        head = re.split(r"\b(?:retrace|back to|return)\b", text)[0]
        for m in re.finditer(pattern, head):
            direction = DIRECTION_WORDS[m.group(1) or m.group(4)]
            steps = _number(m.group(2) or m.group(3))
            legs.append(retrace.LEG_TEMPLATE.format(direction=direction, steps=steps))
        return validate(task, legs + [retrace.RETRACE_TEXT], context)
    tasks.get(task)
    raise DecompositionError(f"the rules decomposer does not know task {task!r}")
