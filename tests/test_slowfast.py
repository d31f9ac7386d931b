import csv
import hashlib

import pytest
import torch

from envs.dataset import ChunkDataset
from worldmodel.memory import EpisodeMemory, MemoryConfig, adapter_parameters, base_parameters
from worldmodel.model import VideoWorldModel, WorldModelConfig
from worldmodel.slowfast import FinetuneConfig, episode_chunks, inner_loop, outer_loss, run_finetune, validation

from helpers import TINY as TINY_UNET

TINY = dict(TINY_UNET, task="return_cubes")


def _hash(params):
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    VideoWorldModel(WorldModelConfig(**TINY)).save_pretrained(path)
    return path


def test_snapshot_i_depends_on_chunks_up_to_i_only(tiny_base, cubes_dataset):
    root, _ = cubes_dataset
    model = VideoWorldModel.from_pretrained(tiny_base)
    memory = EpisodeMemory(model, MemoryConfig(rank=4, lr=1e-2, steps=1))
    chunks = episode_chunks(ChunkDataset(root, 4), 0, model)[:4]
    first = inner_loop(memory, chunks)
    changed = [dict(c) for c in chunks]
    changed[3] = {**changed[3], "target": changed[3]["target"] + 1.0}
    second = inner_loop(memory, changed)
    for i in range(3):
        assert all(torch.equal(first[i][k], second[i][k]) for k in first[i])
    assert not all(torch.equal(first[3][k], second[3][k]) for k in first[3])


def test_outer_update_changes_phi_and_keeps_theta_frozen(tiny_base, cubes_dataset):
    root, _ = cubes_dataset
    model = VideoWorldModel.from_pretrained(tiny_base)
    memory = EpisodeMemory(model, MemoryConfig(rank=4, lr=1e-2, steps=1))
    chunks = episode_chunks(ChunkDataset(root, 4), 0, model)[:3]
    snapshots = inner_loop(memory, chunks)
    for p in base_parameters(model.unet):
        p.requires_grad_(True)
    for p in adapter_parameters(model.unet):
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(base_parameters(model.unet), lr=1e-3)
    loss = outer_loss(model, memory, snapshots[1], chunks[2], 2, torch.Generator().manual_seed(0))
    theta, phi = _hash(adapter_parameters(model.unet)), _hash(base_parameters(model.unet))
    loss.backward()
    optimizer.step()
    assert _hash(adapter_parameters(model.unet)) == theta
    assert _hash(base_parameters(model.unet)) != phi


def test_validation_reads_each_episode_with_its_own_and_another_episodes_memory(tiny_base, cubes_dataset):
    root, _ = cubes_dataset
    model = VideoWorldModel.from_pretrained(tiny_base)
    memory = EpisodeMemory(model, MemoryConfig(rank=4, lr=3e-2, steps=2))
    dataset = ChunkDataset(root, 4)
    episodes = [episode_chunks(dataset, e, model)[:3] for e in (0, 1)]
    two = validation(model, memory, episodes, 0, None, None)
    assert len({two["val_loss_memory"], two["val_loss_other_memory"], two["val_loss_no_memory"]}) == 3
    # the same episode twice: its "other" memory is its own, and the losses match exactly
    same = validation(model, memory, [episodes[0], episodes[0]], 0, None, None)
    assert same["val_loss_other_memory"] == same["val_loss_memory"] != same["val_loss_no_memory"]
    assert validation(model, memory, episodes[:1], 0, None, None)["val_loss_other_memory"] == ""


def test_finetune_job_resumes_and_saves_a_plain_world_model(tiny_base, cubes_dataset, tmp_path):
    root, _ = cubes_dataset
    common = dict(task="return_cubes", from_checkpoint=str(tiny_base), data=str(root), out=str(tmp_path / "ft"),
                  val_episodes=1, noise_samples=1, memory_rank=4, save_every=1, progress=False, epochs=2,
                  max_chunks=3, memory_steps=2, memory_lr=3e-3, memory_variant="original", memory_reverse=True)
    assert run_finetune(FinetuneConfig(**common, max_episodes=1)) == 0  # 2 episodes (1 x 2 epochs)
    with open(tmp_path / "ft" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["episodes_done"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["val_loss_memory"]) > 0 and float(rows[-1]["val_loss_no_memory"]) > 0
    assert rows[-1]["val_loss_other_memory"] == ""  # one held-out episode has no other to compare with
    tuned = VideoWorldModel.from_pretrained(tmp_path / "ft")
    assert not any("lora" in k for k in tuned.unet.state_dict())
    # the base carries the memory it learned to read: rank 4 (alpha = rank), 2 steps at lr 3e-3, ...
    assert MemoryConfig.for_model(tuned) == MemoryConfig(rank=4, alpha=4.0, steps=2, lr=3e-3, variant="original",
                                                         reverse=True)
    with pytest.raises(ValueError, match="--resume"):
        run_finetune(FinetuneConfig(**common, max_episodes=1))
    import json

    (tmp_path / "ft" / "state" / "progress.json").write_text(json.dumps({"episodes_done": 1}))
    assert run_finetune(FinetuneConfig(**common, max_episodes=1, resume=True)) == 0
    with open(tmp_path / "ft" / "log.csv") as f:
        assert [r["episodes_done"] for r in csv.DictReader(f)] == ["1", "2"]  # episode 2's row is the rerun's
    assert json.loads((tmp_path / "ft" / "state" / "progress.json").read_text()) == {"episodes_done": 2}
    # a longer schedule on resume continues the run, and the run's config copy says so
    assert run_finetune(FinetuneConfig(**{**common, "epochs": 3}, max_episodes=1, resume=True)) == 0
    assert json.loads((tmp_path / "ft" / "state" / "progress.json").read_text()) == {"episodes_done": 3}
    saved = (tmp_path / "ft" / "config.yaml").read_text()
    assert "epochs: 3" in saved and "resume: false" in saved


def test_finetune_saves_the_ema_of_the_base_weights(tiny_base, cubes_dataset, tmp_path):
    from safetensors.torch import load_file

    root, _ = cubes_dataset
    common = dict(task="return_cubes", from_checkpoint=str(tiny_base), data=str(root), val_episodes=0,
                  noise_samples=1, memory_rank=4, save_every=2, progress=False, max_episodes=2, max_chunks=3,
                  lr=1e-2)
    start = VideoWorldModel.from_pretrained(tiny_base).unet.state_dict()
    lag = {}  # how far the saved weights sit behind the raw ones, as a fraction of the whole move
    for decay in (0.0, 0.9):
        out = tmp_path / f"ema_{decay}"
        assert run_finetune(FinetuneConfig(**common, out=str(out), ema_decay=decay)) == 0
        raw = {k.replace(".base_layer", ""): v for k, v in load_file(out / "state" / "model.safetensors").items()
               if "lora_" not in k}
        saved = VideoWorldModel.from_pretrained(out).unet.state_dict()
        lag[decay] = (sum(float((saved[k] - raw[k]).abs().sum()) for k in saved)
                      / sum(float((start[k] - raw[k]).abs().sum()) for k in saved))
    assert lag[0.0] < 0.02  # the raw weights, rounded to fp16
    assert lag[0.9] > 0.05
    with pytest.raises(ValueError, match="--ema-decay"):
        FinetuneConfig(ema_decay=1.0)


def test_outer_chunks_return_learns_only_the_return_phase(retrace_dataset, tmp_path, monkeypatch):
    import worldmodel.slowfast as slowfast

    root, _ = retrace_dataset
    base = tmp_path / "base"
    torch.manual_seed(0)
    VideoWorldModel(WorldModelConfig(**{**TINY, "task": "retrace"})).save_pretrained(base)
    original, learned = slowfast.outer_loss, {}
    for outer_chunks in ("all", "return"):
        kinds = learned[outer_chunks] = []

        def counting(model, memory, snapshot, next_chunk, samples, generator, weights, kinds=kinds):
            kinds.append(next_chunk["kind"])
            return original(model, memory, snapshot, next_chunk, samples, generator, weights)

        monkeypatch.setattr(slowfast, "outer_loss", counting)
        assert run_finetune(FinetuneConfig(task="retrace", from_checkpoint=str(base), data=str(root),
                                           out=str(tmp_path / outer_chunks), val_episodes=0, noise_samples=1,
                                           memory_rank=4, max_episodes=1, outer_chunks=outer_chunks,
                                           progress=False)) == 0
    assert {"walk", "retrace"} <= set(learned["all"])
    assert learned["return"] == [k for k in learned["all"] if k == "retrace"]
    with pytest.raises(ValueError, match="--outer-chunks"):
        FinetuneConfig(outer_chunks="late")


def test_high_noise_loop_trains_and_validates_the_return_at_the_top_of_the_schedule(retrace_dataset, tmp_path,
                                                                                    monkeypatch):
    import worldmodel.slowfast as slowfast

    root, _ = retrace_dataset
    base = tmp_path / "base"
    torch.manual_seed(0)
    VideoWorldModel(WorldModelConfig(**{**TINY, "task": "retrace"})).save_pretrained(base)
    original_outer, original_loss = slowfast.outer_loss, VideoWorldModel.training_loss
    seen = {}
    for name, bias in (("uniform", {}), ("high", dict(high_noise_portion=0.3, high_noise_weight=1e6))):
        calls = seen[name] = []

        def outer(model, memory, snapshot, next_chunk, samples, generator, weights, calls=calls):
            calls.append({"kind": next_chunk["kind"]})
            return original_outer(model, memory, snapshot, next_chunk, samples, generator, weights)

        def loss(self, context, context_len, target, text, generator=None, timesteps=None, calls=calls):
            calls[-1]["timesteps"] = timesteps
            return original_loss(self, context, context_len, target, text, generator, timesteps)

        monkeypatch.setattr(slowfast, "outer_loss", outer)
        monkeypatch.setattr(VideoWorldModel, "training_loss", loss)
        assert run_finetune(FinetuneConfig(task="retrace", from_checkpoint=str(base), data=str(root),
                                           out=str(tmp_path / name), val_episodes=1, save_every=1, noise_samples=4,
                                           memory_rank=4, max_episodes=1, outer_chunks="return", progress=False,
                                           **bias)) == 0
    # uniform levels are drawn inside training_loss, as before the option existed
    assert all(c["timesteps"] is None for c in seen["uniform"])
    # training (episode 0) and validation (episode 1, with and without memory): return pairs only, t >= 700
    assert len(seen["high"]) == len(seen["uniform"]) and {c["kind"] for c in seen["high"]} == {"retrace"}
    assert all(bool((c["timesteps"] >= 700).all()) for c in seen["high"])
    with pytest.raises(ValueError, match="--high-noise"):
        FinetuneConfig(high_noise_portion=0.3, high_noise_weight=0.0)


def test_contrast_pushes_own_memory_below_the_previous_episodes_under_the_same_noise_and_resumes(
        tiny_base, cubes_dataset, tmp_path, monkeypatch):
    import worldmodel.slowfast as slowfast

    root, _ = cubes_dataset
    original = slowfast.outer_loss
    calls = []

    def recording(model, memory, snapshot, next_chunk, samples, generator, weights):
        calls.append((snapshot, generator.get_state().clone()))
        return original(model, memory, snapshot, next_chunk, samples, generator, weights)

    monkeypatch.setattr(slowfast, "outer_loss", recording)
    common = dict(task="return_cubes", from_checkpoint=str(tiny_base), data=str(root), val_episodes=0,
                  noise_samples=1, memory_rank=4, memory_lr=3e-2, memory_steps=2, save_every=1, progress=False,
                  max_episodes=2, epochs=2, max_chunks=3, lr=1e-3, ema_decay=0.0)
    contrast = dict(contrast_weight=1.0, contrast_margin=10.0)  # a margin no loss gap reaches: always active
    assert run_finetune(FinetuneConfig(**common, **contrast, out=str(tmp_path / "c"))) == 0
    # episode 0 has no previous memory: one call a pair; later ones: the other memory without
    # gradient, the own memory, the other memory again for its gradient, same noise for both
    pairs = 2
    assert len(calls) == pairs + 3 * 3 * pairs  # 4 episodes
    for other_value, own, other in zip(*[iter(calls[pairs:])] * 3):
        assert torch.equal(other_value[1], own[1]) and torch.equal(own[1], other[1])
        assert other_value[0] is other[0] and own[0] is not other[0]
    with open(tmp_path / "c" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["loss_other_memory"] == "" and float(rows[1]["loss_other_memory"]) > 0

    assert run_finetune(FinetuneConfig(**common, out=str(tmp_path / "plain"))) == 0
    with_contrast = VideoWorldModel.from_pretrained(tmp_path / "c").unet.state_dict()
    plain = VideoWorldModel.from_pretrained(tmp_path / "plain").unet.state_dict()
    assert any(not torch.equal(with_contrast[k], plain[k]) for k in plain)

    # killed after 2 of the 4 episodes: the resumed run reads the saved previous memory and ends where the whole run did
    first = FinetuneConfig(**{**common, "epochs": 1}, **contrast, out=str(tmp_path / "r"))
    assert run_finetune(first) == 0
    assert run_finetune(FinetuneConfig(**common, **contrast, out=str(tmp_path / "r"), resume=True)) == 0
    resumed = VideoWorldModel.from_pretrained(tmp_path / "r").unet.state_dict()
    assert all(torch.equal(resumed[k], with_contrast[k]) for k in with_contrast)
    with pytest.raises(ValueError, match="--contrast-weight"):
        FinetuneConfig(contrast_weight=-1.0)
