"""Open-loop replay: a recorded episode's frames through the IDM, acted out in the simulator."""

from __future__ import annotations

import numpy as np

from inverse_dynamics.model import InverseDynamicsModel, split_actions
from tasks.base import Subgoal


def replay(env, idm: InverseDynamicsModel, record: dict, seed: int) -> tuple[dict, float]:
    """Task metric of the executed episode, and the IDM's accuracy on the discrete part."""
    frames = record["frames"]
    predicted = []
    for start in range(0, len(frames) - 1, 256):
        stop = min(start + 256, len(frames) - 1)
        predicted += idm.predict(frames[start:stop], frames[start + 1:stop + 1])
    obs, _ = env.reset(seed=seed)
    subgoals = [Subgoal.from_dict(s) for s in record["subgoals"]]
    current = -1
    executed = []
    for t, prediction in enumerate(predicted):
        index = int(record["subgoal_index"][t])
        if index != current:
            env.start_subgoal(subgoals[index])
            current = index
        executed.append(idm.to_env_action(prediction, obs))
        obs, *_ = env.step(executed[-1])
    _, true_classes = split_actions(idm.config.task, record["actions"])
    _, predicted_classes = split_actions(idm.config.task, np.stack(executed))
    return env.metric(), float((true_classes == predicted_classes).mean())
