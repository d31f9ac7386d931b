"""Inverse dynamics in the loop: replay expert frames through the IDM, act in the simulator.

For held-out seeds the expert's episode is recorded; the simulator is then reset to
the same seed and, for every consecutive pair of recorded frames, the IDM's action is
executed (open loop: the IDM never sees the frames its own actions produce). Reports
the task metric of the executed episode, the fraction of seeds within the issue's
distance target, and the IDM's accuracy on the classification part. The last output
line is one JSON object.

Usage: python scripts/bench_idm.py --task retrace [--seed 10000] [--episodes 10] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import envs
from envs.collect import rollout_expert
from inverse_dynamics.model import InverseDynamicsModel
from inverse_dynamics.replay import replay
from worldmodel.generate import default_checkpoint


# Issue targets: a robot episode counts when its cubes end within 3 cm on average; a
# retrace episode when the return passes within half a block of the waypoints.
TARGET = {"return_cubes": 0.03, "retrace": 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="retrace")
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    idm = InverseDynamicsModel.from_pretrained(args.checkpoint or default_checkpoint(args.task, "idm"))
    env = envs.make(args.task)
    expert = envs.expert_for(env)
    seeds = list(range(args.seed, args.seed + args.episodes))
    distances, successes, accuracies = [], [], []
    for seed in seeds:
        record = rollout_expert(env, expert, seed)
        metric, accuracy = replay(env, idm, record, seed)
        distances.append(metric["distance"])
        successes.append(metric["success"])
        accuracies.append(accuracy)
    env.close()
    print(json.dumps({"task": args.task, "accuracy": round(float(np.mean(accuracies)), 4),
                      "distance_mean": round(float(np.mean(distances)), 4),
                      "distance_max": round(float(np.max(distances)), 4),
                      "success_rate": round(float(np.mean(successes)), 3),
                      "within_target_rate": round(float(np.mean(np.array(distances) <= TARGET[args.task])), 3),
                      "target_distance": TARGET[args.task],
                      "distances": [round(float(d), 4) for d in distances], "seeds": seeds}))


if __name__ == "__main__":
    main()
