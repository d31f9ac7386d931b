"""How often each decomposer turns a paraphrased goal into the right subgoal sequence.

The goals are written by hand with varied wording (number words, compass directions,
different verbs and orders of phrases). ``--llm local`` scores the offline SmolLM2
decomposer, ``--llm openai`` an OpenAI-compatible endpoint (OPENAI_BASE_URL,
SLOWFAST_LLM_MODEL). Last line: JSON.

Usage: python scripts/bench_decompose.py [--llm rules,local,openai]
"""

from __future__ import annotations

import argparse
import json
import time

from agent.decompose import DecompositionError, rules

RED_BLUE = {"colours": ("red", "blue")}
THREE = {"colours": ("red", "blue", "green")}
CUBES = [  # (goal, context, cubes in the order they should be handled)
    ("move the red and blue cubes aside, then put each back where it started", RED_BLUE, ["red", "blue"]),
    ("push the red cube and the blue cube out of the way and later return both to their spots", RED_BLUE, ["red", "blue"]),
    ("clear the blue and red blocks away, then restore them to their original places", RED_BLUE, ["blue", "red"]),
    ("take the red cube aside, do the same with the blue one, then put them back", RED_BLUE, ["red", "blue"]),
    ("relocate the blue cube and the red cube, afterwards bring each back where it was", RED_BLUE, ["blue", "red"]),
    ("tidy the table: shift red and blue to the sides, then undo it", RED_BLUE, ["red", "blue"]),
    ("move every cube away and then return all of them to where they started", RED_BLUE, ["red", "blue"]),
    ("first move the red, then the blue cube aside; finally put both back", RED_BLUE, ["red", "blue"]),
    ("get the blue cube out of the middle, then the red one, and put them back afterwards", RED_BLUE, ["blue", "red"]),
    ("set the red and the blue box aside and later place each back at its start", RED_BLUE, ["red", "blue"]),
    ("move the red, blue and green cubes aside, then put each back where it started", THREE, ["red", "blue", "green"]),
    ("shove green, red and blue out of the way, then return them", THREE, ["green", "red", "blue"]),
    ("clear all three cubes from the centre and then restore the layout", THREE, ["red", "blue", "green"]),
    ("move the blue cube away, then the green and the red, then put everything back", THREE, ["blue", "green", "red"]),
    ("rearrange the red and green and blue cubes to the sides and then back again", THREE, ["red", "green", "blue"]),
    ("put the red cube somewhere else, then the blue cube; return both to the original spots", RED_BLUE, ["red", "blue"]),
    ("make room by moving the blue and red cubes, then put them back where they were", RED_BLUE, ["blue", "red"]),
    ("carry the red block aside and the blue block aside, then return each to its place", RED_BLUE, ["red", "blue"]),
    ("displace both cubes, red first, then return them", RED_BLUE, ["red", "blue"]),
    ("move the cubes aside, then put each back where it started", RED_BLUE, ["red", "blue"]),
]
RETRACE = [  # (goal, legs)
    ("go left for 3 steps, then go up for 4 steps, then go right for 6 steps, then retrace your path back to where you started",
     [("left", 3), ("up", 4), ("right", 6)]),
    ("walk five steps east, then three north, and return along the same way", [("right", 5), ("up", 3)]),
    ("head west 4 blocks, then south 6 blocks, then come back the way you came", [("left", 4), ("down", 6)]),
    ("move up 3, right 7, down 4 and then retrace the path to the start", [("up", 3), ("right", 7), ("down", 4)]),
    ("take 6 steps to the right followed by 5 steps down, then return to the start", [("right", 6), ("down", 5)]),
    ("go north for eight steps, east for three, then walk back along your path", [("up", 8), ("right", 3)]),
    ("walk left 5 then up 5 then left 3, and finally retrace everything back home", [("left", 5), ("up", 5), ("left", 3)]),
    ("travel 4 blocks south, 4 blocks west, then go back to where you began", [("down", 4), ("left", 4)]),
    ("go right three steps, go down seven steps, go right four steps, then retrace your route", [("right", 3), ("down", 7), ("right", 4)]),
    ("first 6 steps up, then 3 steps left; afterwards return to the starting point", [("up", 6), ("left", 3)]),
    ("march east 8, north 4, west 5, then retrace the path back to the start", [("right", 8), ("up", 4), ("left", 5)]),
    ("step down 3 times, then right 6 times, then come back along the same path", [("down", 3), ("right", 6)]),
    ("explore: 7 left, 3 down; then retrace your steps to the origin", [("left", 7), ("down", 3)]),
    ("go up for 5 steps and right for 5 steps, then return the way you came", [("up", 5), ("right", 5)]),
    ("walk four steps west, six steps north and three steps east, then go back to the start", [("left", 4), ("up", 6), ("right", 3)]),
    ("move 3 to the right, 3 up, 3 to the right again, then retrace", [("right", 3), ("up", 3), ("right", 3)]),
    ("head south five, then east two... no, east four, then return home", [("down", 5), ("right", 4)]),
    ("go down 8 steps then retrace your path back", [("down", 8)]),
    ("left 6, down 4, left 3, then back to the beginning along the same route", [("left", 6), ("down", 4), ("left", 3)]),
    ("travel north 7 blocks and west 3 blocks, then retrace your way back to the start", [("up", 7), ("left", 3)]),
]


def expected_cubes(order: list[str]) -> list[str]:
    from tasks import return_cubes

    places = list(return_cubes.PLACES)
    return ([return_cubes.MOVE_TEMPLATE.format(colour=c, place=places[i % len(places)]) for i, c in enumerate(order)]
            + [return_cubes.RETURN_TEMPLATE.format(colour=c) for c in order])


def moves_only(texts: list[str]) -> list[str]:
    """Which places cubes go to is free; the order of cubes and the returns are not."""
    return [t.rsplit(" to the ", 1)[0] if t.startswith("move ") else t for t in texts]


def score(decompose) -> dict:
    from tasks import retrace

    results = {}
    right = 0
    for goal, context, order in CUBES:
        try:
            got = [s.text for s in decompose("return_cubes", goal, context)]
        except DecompositionError:
            got = []
        right += moves_only(got) == moves_only(expected_cubes(order))
    results["return_cubes"] = right / len(CUBES)
    right = 0
    for goal, legs in RETRACE:
        want = [retrace.LEG_TEMPLATE.format(direction=d, steps=n) for d, n in legs] + [retrace.RETRACE_TEXT]
        try:
            got = [s.text for s in decompose("retrace", goal, {})]
        except DecompositionError:
            got = []
        right += got == want
    results["retrace"] = right / len(RETRACE)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="rules")
    args = parser.parse_args()
    out = {"goals": {"return_cubes": len(CUBES), "retrace": len(RETRACE)}}
    for name in args.llm.split(","):
        if name == "rules":
            out["rules"] = score(rules)
        elif name == "openai":
            from agent.llm import OpenAIDecomposer

            llm = OpenAIDecomposer(attempts=1)
            out["openai"] = score(lambda task, goal, context: llm(task, goal, context)[0])
        elif name == "local":
            from agent.local_llm import LocalLLMDecomposer

            local = LocalLLMDecomposer()
            started = time.time()
            out["local"] = score(lambda task, goal, context: local(task, goal, context)[0])
            out["local"]["seconds_per_goal"] = round((time.time() - started) / (len(CUBES) + len(RETRACE)), 2)
        else:
            raise SystemExit(f"unknown decomposer {name!r}; use rules, local or openai")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
