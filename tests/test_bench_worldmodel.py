"""The retrace benchmark's motion references on real expert frames."""
import numpy as np

import envs
from envs.collect import rollout_expert
from worldmodel.video_io import psnr

from helpers import load_script

bench = load_script("bench_worldmodel")


def test_shift_oracle_scrolls_the_view_by_the_true_move_and_scores_only_what_stays_in_view():
    env = envs.make("retrace")
    record = rollout_expert(env, envs.expert_for(env), 5)
    env.close()
    position = record["observations"]["pos"]
    last, truth = record["frames"][0], record["frames"][1:9]  # the first walk: a tile a frame, then standing
    moves = position[1:9] - position[0]
    moved = np.abs(moves).sum(axis=1)
    mean_fill, sampled_fill, shown = bench.shift_oracle(last, truth, record["frames"][-1], moves)

    assert moved.all()
    assert not bench.shift_oracle(last, truth, last, np.zeros_like(moves))[2].any()  # no move, nothing scored
    unit, span = 64 // 9, 64 // 9 * 9
    for mask, tiles in zip(shown, moved):  # the view less the strip brought in and the player's old and new tile
        assert mask.sum() == span * (span - tiles * unit) - 2 * unit * unit
    # Scrolled by the true move, the old view matches the new frame exactly where it still shows.
    assert np.array_equal(mean_fill[shown], truth[shown])
    repeat = np.repeat(last[None], len(truth), axis=0)
    assert not np.array_equal(repeat[shown], truth[shown])  # the old view left in place is not
    assert psnr(mean_fill, truth) > psnr(repeat, truth)
    assert np.array_equal(sampled_fill[shown], truth[shown])


def test_covered_scores_pool_the_scored_pixels_and_skip_chunks_without_motion():
    covered = {"model": [2 * 255.0**2, 0.0, 2 * 255.0**2], "repeat": [0.02 * 255.0**2, 0.0, 2 * 255.0**2],
               "pixels": [200, 0, 200]}  # squared errors summed over each chunk's scored pixels
    assert bench.covered_scores(covered, [0, 1, 2])["covered_psnr"] == 20.0  # MSE 255**2 / 100
    assert bench.covered_scores(covered, [0]) == {"covered_psnr": 20.0, "baseline_covered_psnr": 40.0}
    assert bench.covered_scores(covered, [1]) == {}


def test_identical_frames_score_a_finite_psnr_above_any_other():
    frames = np.random.default_rng(0).integers(0, 255, size=(8, 64, 64, 3), dtype=np.uint8)
    nearly = frames.copy()
    nearly[0, 0, 0, 0] += 1
    assert psnr(frames, frames) == 100.0
    assert 90 < psnr(nearly, frames) < psnr(frames, frames)
