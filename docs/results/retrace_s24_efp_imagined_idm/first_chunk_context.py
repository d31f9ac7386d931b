"""Throwaway probe: does the first return chunk head back when its context shows the last leg moving?
Context 'last' = the last 4 executed frames (the planner's); 'moving' = the last 4 frames up to the last move
(trailing stays dropped). The imagined chunk's moves are read by the IDM and summed."""
import json, sys
import numpy as np, torch
import envs, tasks
from envs.collect import padded_expert_actions
from inverse_dynamics.model import InverseDynamicsModel
from worldmodel.model import VideoWorldModel
from tasks import retrace

wm = VideoWorldModel.from_pretrained("checkpoints/retrace/worldmodel")
idm = InverseDynamicsModel.from_pretrained(sys.argv[1])
fc = wm.config.context_frames
vec = {0: (0, 0), 1: (-1, 0), 2: (1, 0), 3: (0, -1), 4: (0, 1)}
for seed in range(10000, 10000 + int(sys.argv[2])):
    env = envs.make("retrace"); obs, _ = env.reset(seed=seed)
    expert = envs.expert_for(env); subgoals = env.subgoals()
    frames, positions = [obs["rgb"]], [tuple(env.positions[-1])]
    for sg in subgoals[:-1]:
        env.start_subgoal(sg)
        for a in padded_expert_actions(expert, retrace, sg):
            obs, *_ = env.step(a); frames.append(obs["rgb"]); positions.append(tuple(env.positions[-1]))
    last_move = max(i for i in range(1, len(positions)) if positions[i] != positions[i - 1])
    heading = -np.array(retrace.DIRECTIONS[subgoals[-2].params["direction"]])
    row = {"seed": seed, "last_leg": subgoals[-2].text}
    for name, end in (("last", len(frames)), ("moving", last_move + 1)):
        ctx = np.stack(frames[end - fc:end])
        g = torch.Generator().manual_seed(seed)
        new = wm.generate_chunk(wm.latent.encode(ctx[None]), [retrace.RETRACE_TEXT], generator=g)
        imag = wm.latent.decode(new)[0]
        before = np.concatenate([ctx[-1][None], imag[:-1]])
        moves = np.sum([vec[int(p)] for p in idm.predict(before, imag)], axis=0)
        row[name] = {"move": moves.tolist(), "back": bool(moves @ heading > abs(moves @ heading[::-1]))}
    env.close()
    print(json.dumps(row), flush=True)
