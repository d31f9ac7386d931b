"""`slowfast imagine` (the world model's chunks of a real dataset, with the true actions) and
`slowfast train-idm --imagined-data` (an IDM taught to read them), with a real simulator's data,
a real (tiny, untrained) UNet and the real IDM training loop."""

import csv
import json

import numpy as np
import pytest
import torch

from agent.cli import main
from envs.dataset import FramePairDataset, load_dataset
from inverse_dynamics.model import IDMConfig, InverseDynamicsModel, action_spec
from inverse_dynamics.train import TrainIDMConfig, _with_imagined_pairs, run_train_idm
from tasks import retrace
from worldmodel.imagine import ImagineConfig, run_imagine
from worldmodel.model import VideoWorldModel, WorldModelConfig

from helpers import TINY as TINY_UNET

TINY = dict(TINY_UNET, task="retrace")


@pytest.fixture(scope="module")
def imagined(retrace_dataset, tmp_path_factory):
    root, _ = retrace_dataset
    tmp = tmp_path_factory.mktemp("imagine")
    torch.manual_seed(0)
    VideoWorldModel(WorldModelConfig(**TINY)).save_pretrained(tmp / "worldmodel")
    cfg = ImagineConfig(task="retrace", data=str(root), checkpoint=str(tmp / "worldmodel"), out=str(tmp / "walk"),
                        progress=False)
    assert run_imagine(cfg) == 0
    every = ImagineConfig(**{**cfg.__dict__, "out": str(tmp / "all"), "return_chunks": True, "episodes": 1})
    assert run_imagine(every) == 0
    return root, tmp, cfg


def test_imagined_chunks_keep_the_real_start_frame_and_the_true_actions(imagined):
    root, tmp, cfg = imagined
    source, out = load_dataset(root), load_dataset(cfg.out)
    chunk = int(source.info["chunk_frames"])
    walks = sum(1 for e in source.episodes for s in range(0, e["length"], chunk)
                if e["subgoals"][int(source.load_episode(e["episode_index"])["subgoal_index"][s])]["kind"] == "walk")
    assert len(out) == walks > 0  # the return's chunks are left out by default
    assert out.info["imagined_by"] == str(tmp / "worldmodel") and out.info["task"] == "retrace"
    for line in out.episodes:
        episode, real = out.load_episode(line["episode_index"]), source.load_episode(line["source_episode"])
        start = line["source_start"]
        assert line["subgoals"][0]["kind"] == "walk" and episode["frames"].shape == (chunk + 1, 64, 64, 3)
        assert np.array_equal(episode["frames"][0], real["frames"][start])  # planning's first pair starts there
        assert not np.array_equal(episode["frames"][1:], real["frames"][start + 1:start + chunk + 1])  # imagined
        assert np.array_equal(episode["actions"], real["actions"][start:start + chunk])
        assert np.array_equal(episode["obs_pos"], real["obs_pos"][start:start + chunk + 1])
    pairs = FramePairDataset(cfg.out)
    assert len(pairs) == len(out) * chunk
    with pytest.raises(ValueError, match="already holds a dataset"):
        run_imagine(cfg)
    every = load_dataset(tmp / "all")
    assert len(every) == source.episodes[0]["length"] // chunk  # one source episode, every chunk
    kinds = [line["subgoals"][0]["kind"] for line in every.episodes]
    assert "retrace" in kinds and "walk" in kinds
    again = ImagineConfig(**{**cfg.__dict__, "out": str(tmp / "again"), "return_chunks": True, "episodes": 1})
    assert run_imagine(again) == 0  # the same seed imagines the same frames
    assert np.array_equal(load_dataset(again.out).load_episode(0)["frames"], every.load_episode(0)["frames"])


def test_an_interrupted_imagine_run_continues_where_it_stopped(imagined, tmp_path, monkeypatch):
    root, tmp, cfg = imagined
    job = ImagineConfig(**{**cfg.__dict__, "out": str(tmp_path / "partial"), "return_chunks": True, "episodes": 1})
    sample = VideoWorldModel.generate_chunk
    calls = []

    def stops_on_the_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(VideoWorldModel, "generate_chunk", stops_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_imagine(job)
    monkeypatch.setattr(VideoWorldModel, "generate_chunk", sample)
    assert len((tmp_path / "partial" / "meta" / "episodes.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="no meta/info.json"):
        load_dataset(job.out)  # unfinished: not a dataset yet
    with pytest.raises(ValueError, match="unfinished `slowfast imagine` run with other options"):
        run_imagine(ImagineConfig(**{**job.__dict__, "seed": 1}))
    assert run_imagine(ImagineConfig(**{**job.__dict__, "progress": True})) == 0
    finished, uninterrupted = load_dataset(job.out), load_dataset(tmp / "all")
    assert [line["source_start"] for line in finished.episodes] == [line["source_start"]
                                                                    for line in uninterrupted.episodes]
    for i in range(len(finished)):
        assert np.array_equal(finished.load_episode(i)["frames"], uninterrupted.load_episode(i)["frames"])


def test_train_idm_mixes_imagined_pairs_and_starts_from_a_trained_model(imagined, tmp_path):
    root, tmp, cfg = imagined
    continuous, classes = action_spec("retrace")
    torch.manual_seed(0)
    start = InverseDynamicsModel(IDMConfig(task="retrace", continuous_dim=continuous, discrete_classes=classes,
                                           width=8))
    start.save_pretrained(tmp_path / "start")
    job = TrainIDMConfig(task="retrace", data=str(root), out=str(tmp_path / "run"), max_steps=4, batch_size=8,
                         save_every=2, val_episodes=1, progress=False, imagined_data=cfg.out,
                         init_from=str(tmp_path / "start"))
    assert run_train_idm(job) == 0
    trained = InverseDynamicsModel.from_pretrained(tmp_path / "run")
    assert trained.config.width == 8  # the starting model's architecture, not the default width
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [r["step"] for r in rows] == ["2", "4"] and all(0 <= float(r["val_imagined_accuracy"]) <= 1 for r in rows)
    assert run_train_idm(TrainIDMConfig(**{**job.__dict__, "max_steps": 6, "resume": True})) == 0

    pairs = FramePairDataset(cfg.out)
    batch = {"frame": torch.zeros(3, 64, 64, 3, dtype=torch.uint8),
             "next_frame": torch.zeros(3, 64, 64, 3, dtype=torch.uint8), "action": torch.zeros(3, 1)}
    mixed = _with_imagined_pairs(batch, pairs, 5, torch.Generator().manual_seed(7))
    again = _with_imagined_pairs(batch, pairs, 5, torch.Generator().manual_seed(7))
    assert mixed["frame"].shape == (8, 64, 64, 3) and torch.equal(mixed["frame"], again["frame"])
    assert mixed["next_frame"][3:].float().std() > 0  # imagined frames, not the zeros
    assert set(mixed["action"][3:].reshape(-1).tolist()) <= set(range(len(retrace.ACTIONS)))


def test_imagined_training_refuses_mismatched_inputs(imagined, tmp_path, capsys):
    root, tmp, cfg = imagined
    plain = dict(task="retrace", data=str(root), max_steps=1, batch_size=4, val_episodes=1, progress=False)
    with pytest.raises(ValueError, match="made by `slowfast imagine"):
        run_train_idm(TrainIDMConfig(**plain, out=str(tmp_path / "a"), imagined_data=str(root)))
    cubes = InverseDynamicsModel(IDMConfig(task="return_cubes", continuous_dim=3, discrete_classes=2, width=8))
    cubes.save_pretrained(tmp_path / "cubes_idm")
    with pytest.raises(ValueError, match="--init-from .* is an IDM for return_cubes"):
        run_train_idm(TrainIDMConfig(**plain, out=str(tmp_path / "b"), init_from=str(tmp_path / "cubes_idm")))
    with pytest.raises(ValueError, match="leaves no room for both rendered and imagined pairs"):
        run_train_idm(TrainIDMConfig(**{**plain, "batch_size": 1}, out=str(tmp_path / "d"), imagined_data=cfg.out))
    with pytest.raises(ValueError, match="--imagined-portion must lie strictly between 0 and 1"):
        TrainIDMConfig(imagined_portion=1.0)
    assert main(["imagine", "--task", "retrace", "--data", str(root), "--checkpoint", str(tmp_path / "none"),
                 "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "slowfast train" in capsys.readouterr().err.strip().splitlines()[-1]
    info = json.loads((tmp / "walk" / "meta" / "info.json").read_text())
    assert info["imagined_from"] == str(root) and info["return_chunks"] is False
