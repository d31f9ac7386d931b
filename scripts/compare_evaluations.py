"""Pair two rows of ``slowfast evaluate`` folders seed by seed, across folders.

    python scripts/compare_evaluations.py runs/eval_a:temp-lora runs/eval_b:no-memory
    python scripts/compare_evaluations.py runs/d0:no-memory,runs/d1:no-memory runs/e0:no-memory,runs/e1:no-memory
    python scripts/compare_evaluations.py runs/s0_d0:slow-fast,runs/s0_d1:slow-fast+runs/s40_d0:slow-fast,... ...

Each side is one ``FOLDER:ROW`` or several joined by commas, e.g. the same row run with
``--draw 0`` and ``--draw 1``: a seed's distance is then its mean over the draws that ran it,
which takes the planner's own chance out of the comparison (a retrace seed's distance moves by
~1.5 blocks from one draw to the next). Only seeds every comma-joined row ran are compared.
``+`` pools such groups run on other seeds (e.g. seeds 0-39 and 40-79) into one side. Prints
the paired comparison of ``slowfast evaluate`` (mean difference A - B, 95 % bootstrap interval,
A lower / higher, Wilcoxon p, ratio of means) as one JSON line.

``--per-cube`` (return_cubes) pairs each cube's own distance instead of the episode's mean, so
a return that brings one cube back and pushes the other away counts once each way. Rows record
per-cube distances since session 53; rerunning an older ``slowfast evaluate`` command with its
own arguments rewrites its results.json with them from the finished episodes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from agent.evaluate import paired_differences


def seed_means(side: str, per_cube: bool = False) -> dict:
    """Mean distance per seed (per ``(seed, cube)`` with ``per_cube``) over the ``FOLDER:ROW`` items of
    ``side``, on the seeds all of them ran."""
    per_item = []
    for item in side.split(","):
        folder, _, row = item.rpartition(":")
        results = Path(folder) / "results.json"
        if not folder or not results.is_file():
            raise SystemExit(f"error: {item!r} is not FOLDER:ROW with FOLDER/results.json (run slowfast evaluate)")
        variants = json.loads(results.read_text())["variants"]
        if row not in variants:
            raise SystemExit(f"error: {results} has no row {row!r}; it has {', '.join(variants)}")
        episodes = variants[row]["per_episode"]
        if not per_cube:
            per_item.append({e["seed"]: e["distance"] for e in episodes})
        elif all("per_cube" in e for e in episodes):
            per_item.append({(e["seed"], cube): d for e in episodes for cube, d in e["per_cube"].items()})
        else:
            raise SystemExit(f"error: row {row!r} of {results} records no per-cube distances; rerun the "
                             "`slowfast evaluate` command that wrote it (it reuses the finished episodes), or drop "
                             "--per-cube for a task without cubes")
    keys = sorted(set.intersection(*(set(d) for d in per_item)))
    return {key: float(np.mean([d[key] for d in per_item])) for key in keys}


def pooled_seed_means(side: str, per_cube: bool = False) -> dict:
    """``seed_means`` of each ``+``-joined group of ``side``, pooled; the groups must not share a seed."""
    pooled: dict = {}
    for group in side.split("+"):
        means = seed_means(group, per_cube)
        shared = sorted({key[0] if per_cube else key for key in set(pooled) & set(means)})
        if shared:
            raise SystemExit(f"error: seeds {shared[:5]} are in two '+' groups of {side!r}; join draws of the same "
                             "seeds with ',' and groups of other seeds with '+'")
        pooled |= means
    return pooled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="FOLDER:ROW[,FOLDER:ROW...][+FOLDER:ROW[,...]...]")
    parser.add_argument("b", help="FOLDER:ROW[,FOLDER:ROW...][+FOLDER:ROW[,...]...]")
    parser.add_argument("--per-cube", action="store_true", help="pair each cube's distance (return_cubes)")
    args = parser.parse_args(argv)
    a, b = pooled_seed_means(args.a, args.per_cube), pooled_seed_means(args.b, args.per_cube)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit("error: the two sides share no seed")
    da, db = [a[k] for k in shared], [b[k] for k in shared]
    counts = ({"episodes": len({seed for seed, _ in shared}), "cubes": len(shared)} if args.per_cube
              else {"episodes": len(shared)})
    summary = {"a": args.a, "b": args.b, "a_mean": float(np.mean(da)), "b_mean": float(np.mean(db)), **counts,
               **paired_differences(da, db)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
