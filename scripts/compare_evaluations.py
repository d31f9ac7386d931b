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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from agent.evaluate import paired


def seed_means(side: str) -> dict[int, float]:
    """Mean distance per seed over the ``FOLDER:ROW`` items of ``side``, on the seeds all of them ran."""
    per_item = []
    for item in side.split(","):
        folder, _, row = item.rpartition(":")
        results = Path(folder) / "results.json"
        if not folder or not results.is_file():
            raise SystemExit(f"error: {item!r} is not FOLDER:ROW with FOLDER/results.json (run slowfast evaluate)")
        variants = json.loads(results.read_text())["variants"]
        if row not in variants:
            raise SystemExit(f"error: {results} has no row {row!r}; it has {', '.join(variants)}")
        per_item.append({e["seed"]: e["distance"] for e in variants[row]["per_episode"]})
    seeds = sorted(set.intersection(*(set(d) for d in per_item)))
    return {seed: float(np.mean([d[seed] for d in per_item])) for seed in seeds}


def pooled_seed_means(side: str) -> dict[int, float]:
    """``seed_means`` of each ``+``-joined group of ``side``, pooled; the groups must not share a seed."""
    pooled: dict[int, float] = {}
    for group in side.split("+"):
        means = seed_means(group)
        shared = sorted(set(pooled) & set(means))
        if shared:
            raise SystemExit(f"error: seeds {shared[:5]} are in two '+' groups of {side!r}; join draws of the same "
                             "seeds with ',' and groups of other seeds with '+'")
        pooled |= means
    return pooled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="FOLDER:ROW[,FOLDER:ROW...][+FOLDER:ROW[,...]...]")
    parser.add_argument("b", help="FOLDER:ROW[,FOLDER:ROW...][+FOLDER:ROW[,...]...]")
    args = parser.parse_args(argv)
    a, b = pooled_seed_means(args.a), pooled_seed_means(args.b)
    if not set(a) & set(b):
        raise SystemExit("error: the two sides share no seed")
    rows = [{"per_episode": [{"seed": s, "distance": d} for s, d in side.items()]} for side in (a, b)]
    summary = {"a": args.a, "b": args.b, "a_mean": float(np.mean([a[s] for s in a if s in b])),
               "b_mean": float(np.mean([b[s] for s in b if s in a])), **paired(*rows)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
