"""The memory readout benchmark: a whole run on real episodes with a tiny model."""
import json
import sys

import pytest
import torch

from worldmodel.model import VideoWorldModel, WorldModelConfig

from helpers import TINY, load_script

readout = load_script("bench_memory_readout")


def test_a_run_scores_every_return_pair_with_three_memories(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    VideoWorldModel(WorldModelConfig(**{**TINY, "task": "retrace"})).save_pretrained(tmp_path / "base")
    monkeypatch.setattr(sys, "argv", ["bench_memory_readout", "--checkpoint", str(tmp_path / "base"),
                                      "--episodes", "2", "--memory-steps", "1", "--memory-lr", "1e-2",
                                      "--high-noise-portion", "0.3", "--high-noise-weight", "1000"])
    readout.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["pairs"] >= 2 and result["memory"]["steps"] == 1
    assert result["noise_levels"] == {"high_noise_portion": 0.3, "high_noise_weight": 1000.0}
    loss = result["loss"]
    assert set(loss) == {"memory", "no_memory", "other_memory"}
    assert len({round(v, 9) for v in loss.values()}) == 3  # three different adapters, three different losses
    assert result["memory_minus_no_memory"]["mean_difference"] == pytest.approx(loss["memory"] - loss["no_memory"])


@pytest.mark.parametrize("bad", [["--episodes", "1"], ["--high-noise-portion", "1.5"]])
def test_bad_options_are_refused(monkeypatch, capsys, bad):
    monkeypatch.setattr(sys, "argv", ["bench_memory_readout", *bad])
    with pytest.raises(SystemExit):
        readout.main()
    assert bad[0] in capsys.readouterr().err
