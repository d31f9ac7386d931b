import json
import re

import numpy as np
import pytest
import torch

import envs
from agent.cli import main
from agent.decompose import DecompositionError, rules, validate
from agent.planner import Planner
from envs.collect import rollout_expert
from inverse_dynamics.model import IDMConfig, InverseDynamicsModel, action_spec
from tasks import retrace
from worldmodel.model import VideoWorldModel, WorldModelConfig


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    for task in ("retrace", "return_cubes"):
        VideoWorldModel(WorldModelConfig(block_out_channels=(16, 32), attention_head_dim=2, norm_num_groups=8,
                                         sample_steps=2, task=task)).save_pretrained(root / task / "worldmodel")
        continuous, classes = action_spec(task)
        InverseDynamicsModel(IDMConfig(task=task, continuous_dim=continuous, discrete_classes=classes,
                                       width=8)).save_pretrained(root / task / "idm")
    return root


@pytest.mark.parametrize("memory", ["none", "anchor-frame", "temp-lora"])
def test_plan_runs_a_whole_retrace_episode(tiny_checkpoints, tmp_path, memory, capsys):
    out = tmp_path / memory
    code = main(["plan", "--task", "retrace", "--checkpoint", str(tiny_checkpoints / "retrace"),
                 "--memory", memory, "--seed", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    episode = json.loads((out / "episode.json").read_text())
    assert {"task", "backend", "seed", "memory", "subgoals", "distance", "success", "seconds", "chunks"} <= set(episode)
    assert episode["memory"] == memory and episode["subgoals"][-1] == retrace.RETRACE_TEXT
    legs = len(episode["subgoals"]) - 1
    assert episode["chunks"] == 2 * legs
    assert episode["distance"] >= 0 and isinstance(episode["success"], bool)
    for name in ("imagined.mp4", "executed.mp4", "side_by_side.gif"):
        assert (out / name).stat().st_size > 1000
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["distance"] == episode["distance"]


@pytest.mark.parametrize("flags, steps, reverse", [([], 3, True),
                                                   (["--memory-steps", "1", "--memory-reverse", "false"], 1, False)])
def test_plan_uses_the_memory_the_world_model_was_finetuned_with(tiny_checkpoints, tmp_path, flags, steps, reverse):
    tuned = VideoWorldModel.from_pretrained(tiny_checkpoints / "retrace" / "worldmodel")
    tuned.config.temp_lora = {"steps": 3, "lr": 2e-3, "rank": 8, "alpha": 8.0, "reverse": True}
    tuned.save_pretrained(tmp_path / "tuned")
    code = main(["plan", "--task", "retrace", "--checkpoint", str(tiny_checkpoints / "retrace"),
                 "--worldmodel", str(tmp_path / "tuned"), "--seed", "3", "--out", str(tmp_path / "plan"),
                 "--no-progress", "--no-videos", *flags])
    assert code == 0
    used = json.loads((tmp_path / "plan" / "episode.json").read_text())["memory_config"]
    assert (used["steps"], used["lr"], used["rank"], used["variant"], used["reverse"]) == (steps, 2e-3, 8, "local",
                                                                                        reverse)


@pytest.mark.parametrize("source", ["imagined", "observed"])
def test_temp_lora_learns_from_the_chosen_frames(tiny_checkpoints, source):
    world_model = VideoWorldModel.from_pretrained(tiny_checkpoints / "retrace" / "worldmodel")
    idm = InverseDynamicsModel.from_pretrained(tiny_checkpoints / "retrace" / "idm")
    planner = Planner(world_model, idm, "temp-lora", closed_loop=True, memory_source=source)
    learned = []
    update = planner.memory.update
    planner.memory.update = lambda context, chunk: learned.append(chunk) or update(context, chunk)
    env = envs.make("retrace")
    subgoals = rules("retrace", "go left for 4 steps, then retrace your path", {})
    _, record = planner.run(env, subgoals, seed=3, frames_for=retrace.frames_for)
    env.close()
    chunk = world_model.config.chunk_frames
    assert len(learned) == len(record.chunk_seconds) == len(record.memory_seconds) > 1
    for i, latents in enumerate(learned):
        frames = (record.executed if source == "observed" else record.imagined)[1 + i * chunk:1 + (i + 1) * chunk]
        # imagined frames went through the uint8 decoder (clipped, rounded); observed ones are encoded exactly
        expected = world_model.latent.encode(np.stack(frames)[None])
        if source == "observed":
            assert torch.equal(latents, expected)
        else:
            assert torch.allclose(latents.clamp(-1, 1), expected, atol=0.005)
    other = record.imagined if source == "observed" else record.executed
    assert not torch.allclose(learned[0].clamp(-1, 1), world_model.latent.encode(np.stack(other[1:1 + chunk])[None]),
                              atol=0.05)


def test_a_draw_reimagines_the_same_episode_with_other_noise(tiny_checkpoints, tmp_path):
    from agent.plan import noise_seed

    world_model = VideoWorldModel.from_pretrained(tiny_checkpoints / "retrace" / "worldmodel")
    idm = InverseDynamicsModel.from_pretrained(tiny_checkpoints / "retrace" / "idm")
    subgoals = rules("retrace", "go left for 4 steps, then retrace your path", {})
    imagined = {}
    for noise in (None, 3, noise_seed(3, 1)):
        env = envs.make("retrace")
        _, record = Planner(world_model, idm, "none").run(env, subgoals, seed=3, frames_for=retrace.frames_for,
                                                          noise_seed=noise)
        env.close()
        assert np.array_equal(record.executed[0], record.imagined[0])  # the same world: same first frame
        imagined[noise] = np.stack(record.imagined[1:9])
    assert noise_seed(3, 0) == 3 and np.array_equal(imagined[None], imagined[3])
    assert not np.array_equal(imagined[3], imagined[noise_seed(3, 1)])
    assert len({noise_seed(seed, draw) for seed in range(100) for draw in range(3)}) == 300
    code = main(["plan", "--task", "retrace", "--checkpoint", str(tiny_checkpoints / "retrace"), "--memory", "none",
                 "--seed", "3", "--draw", "1", "--out", str(tmp_path / "plan"), "--no-progress", "--no-videos"])
    episode = json.loads((tmp_path / "plan" / "episode.json").read_text())
    assert code == 0 and episode["draw"] == 1 and episode["seed"] == 3
    assert main(["plan", "--task", "retrace", "--draw", "-1"]) == 2


@pytest.mark.parametrize("memory", ["none", "temp-lora"])
def test_expert_first_phase_walks_out_and_only_the_return_is_imagined(tiny_checkpoints, memory):
    world_model = VideoWorldModel.from_pretrained(tiny_checkpoints / "retrace" / "worldmodel")
    idm = InverseDynamicsModel.from_pretrained(tiny_checkpoints / "retrace" / "idm")
    env = envs.make("retrace")
    expert_episode = rollout_expert(env, envs.expert_for(env), seed=3)
    subgoals = env.subgoals()
    legs = len(subgoals) - 1
    planner = Planner(world_model, idm, memory)
    metric, record = planner.run(env, subgoals, seed=3, frames_for=retrace.frames_for, expert=envs.expert_for(env))
    env.close()
    chunk = world_model.config.chunk_frames
    outbound = 1 + legs * chunk
    assert metric["went_out"]
    assert np.array_equal(np.stack(record.executed[:outbound]), expert_episode["frames"][:outbound])
    assert len(record.executed) == outbound + legs * chunk
    assert len(record.chunk_seconds) == legs  # only the return is imagined
    assert len(record.memory_seconds) == (2 * legs if memory == "temp-lora" else 0)


def test_plan_flag_hands_the_first_phase_to_the_expert(tiny_checkpoints, tmp_path):
    code = main(["plan", "--task", "retrace", "--checkpoint", str(tiny_checkpoints / "retrace"), "--seed", "3",
                 "--out", str(tmp_path), "--expert-first-phase", "--no-progress", "--no-videos"])
    assert code == 0
    episode = json.loads((tmp_path / "episode.json").read_text())
    assert episode["expert_first_phase"] and episode["metric"]["went_out"]
    assert episode["chunks"] == len(episode["subgoals"]) - 1


def test_no_op_after_the_expert_first_phase_stays_at_the_path_end():
    from agent.evaluate import _hold_still

    env = envs.make("retrace")
    metric = _hold_still(env, seed=10000, expert_first_phase=True)
    points = retrace.waypoints(env.outbound_path())
    env.close()
    assert metric["went_out"] and not metric["success"]
    assert metric["distance"] == pytest.approx(np.linalg.norm(points - points[-1], axis=1).mean())


def test_decomposition_is_validated_against_templates():
    context = {"colours": ("red", "blue")}
    subgoals = rules("return_cubes", "move the red and blue cubes aside, then put each back where it started",
                     context)
    assert [s.kind for s in subgoals] == ["move", "move", "return", "return"]
    with pytest.raises(DecompositionError, match="not one of the task's templates"):
        validate("return_cubes", ["move the red cube to the moon"], context)
    with pytest.raises(DecompositionError, match="retrace subgoal"):
        validate("retrace", ["go left for 3 steps"], {})
    legs = rules("retrace", "walk 4 steps west, then head north for three steps, then retrace your way home", {})
    assert [s.text for s in legs] == ["go left for 4 steps", "go up for 3 steps", retrace.RETRACE_TEXT]
    assert legs[-1].params["legs"] == 2


def test_evaluate_writes_table_plot_and_resumes(tiny_checkpoints, tmp_path, capsys):
    import shutil

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints / "retrace", root)
    args = ["evaluate", "--task", "retrace", "--checkpoint", str(root), "--variants", "no-memory,temp-lora",
            "--episodes", "2", "--seed", "10000", "--out", str(tmp_path / "eval"), "--no-progress"]
    assert main(args) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["variants"]) == ["expert", "idm-replay", "no-op", "no-memory", "temp-lora"]
    assert results["variants"]["expert"]["distance_mean"] == 0.0
    assert results["variants"]["expert"]["went_out_rate"] == 1.0 == results["variants"]["expert"]["success_rate"]
    # Holding still ends back at the start but never walked the path: no success, and its distance is the
    # waypoints' mean distance from the start.
    no_op = results["variants"]["no-op"]
    assert no_op["went_out_rate"] == 0.0 and no_op["success_rate"] == 0.0
    for row in no_op["per_episode"]:
        env = envs.make("retrace")
        env.reset(seed=row["seed"])
        points = retrace.waypoints(env.outbound_path())
        env.close()
        assert row["distance"] == pytest.approx(np.linalg.norm(points - points[0], axis=1).mean())
    # The expert undoes every leg in turn; standing still undoes none.
    assert results["variants"]["expert"]["legs_retraced_rate"] == 1.0 and no_op["legs_retraced_rate"] == 0.0
    assert "| went out | legs retraced |" in (tmp_path / "eval" / "table.md").read_text()
    assert [(c["a"], c["b"], c["episodes"]) for c in results["paired"]] == [("temp-lora", "no-memory", 2),
                                                                          ("no-memory", "no-op", 2)]
    for row in results["variants"].values():
        assert [e["seed"] for e in row["per_episode"]] == [10000, 10001]
    assert (tmp_path / "eval" / "distances.png").stat().st_size > 5000
    assert "| temp-lora |" in (tmp_path / "eval" / "table.md").read_text()
    assert (tmp_path / "eval" / "episodes" / "temp-lora" / "seed_10000" / "executed.mp4").is_file()
    assert not (tmp_path / "eval" / "episodes" / "temp-lora" / "seed_10001" / "executed.mp4").exists()
    # The variant's model serves every seed, yet an episode's memory starts afresh: seed 10001 learns and plans
    # exactly as it does alone.
    assert main(["plan", "--task", "retrace", "--checkpoint", str(root), "--memory", "temp-lora", "--seed", "10001",
                 "--out", str(tmp_path / "alone"), "--no-progress", "--no-videos"]) == 0
    alone = json.loads((tmp_path / "alone" / "episode.json").read_text())
    evaluated = json.loads((tmp_path / "eval" / "episodes" / "temp-lora" / "seed_10001" / "episode.json").read_text())
    assert len(alone["memory_losses"]) > 0
    assert evaluated["memory_losses"] == alone["memory_losses"] and evaluated["distance"] == alone["distance"]
    stamp = (tmp_path / "eval" / "episodes" / "no-memory" / "seed_10001" / "episode.json").stat().st_mtime
    assert main(args) == 0  # a rerun skips finished episodes
    assert (tmp_path / "eval" / "episodes" / "no-memory" / "seed_10001" / "episode.json").stat().st_mtime == stamp
    # A folder written before an option existed lacks it in its config.yaml; the option's default stands in.
    config = tmp_path / "eval" / "config.yaml"
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(line for line in lines if not line.startswith("memory_targets:")))
    assert len(config.read_text().splitlines()) == len(lines) - 1
    assert main(args) == 0
    assert (tmp_path / "eval" / "episodes" / "no-memory" / "seed_10001" / "episode.json").stat().st_mtime == stamp
    assert main([*args[:5], "--variants", "slow-fast", *args[7:]]) == 2
    assert "slowfast finetune" in capsys.readouterr().err
    assert main([*args, "--expert-first-phase"]) == 2  # would mix in episodes of another setting
    assert "--expert-first-phase False -> True" in capsys.readouterr().err
    assert main([*args, "--draw", "1"]) == 2  # another draw of the same seeds belongs in its own folder
    assert "--draw 0 -> 1" in capsys.readouterr().err
    assert not json.loads((tmp_path / "eval" / "results.json").read_text())["config"]["expert_first_phase"]


def test_plan_and_evaluate_sample_with_the_given_settings(tiny_checkpoints, tmp_path, capsys):
    def plan(name, *flags):
        assert main(["plan", "--task", "retrace", "--checkpoint", str(tiny_checkpoints / "retrace"), "--memory",
                     "temp-lora", "--seed", "3", "--out", str(tmp_path / name), "--no-progress", "--no-videos",
                     *flags]) == 0
        return json.loads((tmp_path / name / "episode.json").read_text())

    # The memory learns from the imagined chunks, so its losses show whether the sampler changed.
    shipped, interval = plan("shipped"), plan("interval", "--guidance-t-min", "600")
    assert shipped["sampling"]["guidance_t_min"] == 0 and interval["sampling"]["guidance_t_min"] == 600
    assert interval["memory_losses"] != shipped["memory_losses"]

    args = ["evaluate", "--task", "retrace", "--checkpoint", str(tiny_checkpoints / "retrace"), "--variants",
            "temp-lora", "--episodes", "2", "--seed", "3", "--no-references", "--no-progress"]
    out = tmp_path / "eval"
    assert main([*args, "--out", str(out), "--guidance-t-min", "600"]) == 0
    # Each episode samples as it does alone, the second one too (after the first left its adapter on the UNet).
    for seed, alone in ((3, interval), (4, plan("interval_4", "--guidance-t-min", "600", "--seed", "4"))):
        evaluated = json.loads((out / "episodes" / "temp-lora" / f"seed_{seed}" / "episode.json").read_text())
        assert evaluated["sampling"]["guidance_t_min"] == 600
        assert evaluated["memory_losses"] == alone["memory_losses"]
    assert main([*args, "--out", str(out), "--guidance-t-min", "700"]) == 2  # other episodes: another folder
    assert "--guidance-t-min 600 -> 700" in capsys.readouterr().err
    # A setting the model refuses stops the run before any episode, naming the setting.
    assert main([*args, "--out", str(tmp_path / "bad"), "--guidance-t-min", "600", "--guidance-t-max", "400"]) == 2
    assert "guidance_t_min <= guidance_t_max" in capsys.readouterr().err
    assert not list((tmp_path / "bad" / "episodes").rglob("episode.json"))


def test_return_cubes_table_reports_whether_cubes_were_moved_aside(tmp_path):
    from agent.evaluate import EvaluateConfig, _reference_episode, summarise, write_table

    env = envs.make("return_cubes")
    env.reset(seed=10000)
    for _ in range(10):  # hover: the cubes stay put, so their distance is ~0
        env.step(np.array([0.0, 0.0, 0.3, 0.0]))
    hovered = {"seed": 10000, "distance": env.metric()["distance"], "success": env.metric()["success"],
               "metric": env.metric(), "seconds": 1.0}
    env.close()
    expert = _reference_episode("expert", EvaluateConfig(task="return_cubes"), 10000, idm=None)
    results = {"task": "return_cubes", "backend": "embedded", "seed": 10000, "episodes": 1,
               "variants": {"expert": summarise([expert]), "hover": summarise([hovered])}}
    assert results["variants"]["expert"]["moved_away_rate"] == 1.0
    assert results["variants"]["expert"]["success_rate"] == 1.0
    hover = results["variants"]["hover"]
    assert hover["distance_mean"] < 0.02 and hover["moved_away_rate"] == 0.0 and hover["success_rate"] == 0.0
    assert set(hover["per_episode"][0]["max_displacement"]) == {"red", "blue"}
    per_cube = hover["per_episode"][0]["per_cube"]
    assert set(per_cube) == {"red", "blue"}
    assert np.mean(list(per_cube.values())) == pytest.approx(hover["distance_mean"])
    write_table(results, tmp_path / "table.md")
    assert "| hover | " in (tmp_path / "table.md").read_text()
    assert "| moved aside |" in (tmp_path / "table.md").read_text()


def test_paired_claims_match_seeds_and_separate_real_gaps_from_ties(tmp_path):
    from agent.evaluate import paired_claims, write_table

    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 5.0, 30)

    def row(distances, seeds):
        return {"per_episode": [{"seed": s, "distance": float(d)} for s, d in zip(seeds, distances)]}

    variants = {"no-memory": row(base, range(30)),
                "anchor-frame": row(base[:10] + 1.0, range(10)),  # ran fewer seeds
                "temp-lora": row(base - 0.5 + rng.normal(0.0, 0.1, 30), range(30)),
                "slow-fast": row(base[::-1], range(29, -1, -1))}  # no-memory's distances, listed backwards
    claims = {(c["a"], c["b"]): c for c in paired_claims(variants)}
    assert list(claims) == [("slow-fast", "temp-lora"), ("temp-lora", "no-memory"), ("slow-fast", "no-memory"),
                            ("slow-fast", "anchor-frame"), ("anchor-frame", "no-memory")]  # no no-op row, no pair
    tie = claims[("slow-fast", "no-memory")]  # paired by seed, not by position: every difference is 0
    assert tie["mean_difference"] == 0.0 and tie["ci95"] == [0.0, 0.0] and tie["p_value"] == 1.0
    assert tie["ratio"] == pytest.approx(1.0) and tie["a_lower"] == tie["a_higher"] == 0
    better = claims[("temp-lora", "no-memory")]
    assert better["mean_difference"] == pytest.approx(-0.5, abs=0.05)
    assert better["ci95"][0] < better["mean_difference"] < better["ci95"][1] < 0
    assert better["p_value"] < 1e-4 and better["a_lower"] >= 28
    assert better["ratio"] == pytest.approx(1 - 0.5 / base.mean(), abs=0.02)
    assert claims[("slow-fast", "temp-lora")]["mean_difference"] == pytest.approx(0.5, abs=0.05)
    fewer = claims[("anchor-frame", "no-memory")]
    assert fewer["episodes"] == 10 and fewer["mean_difference"] == pytest.approx(1.0)
    assert paired_claims(variants) == paired_claims(variants)  # the bootstrap is seeded
    results = {"task": "retrace", "backend": "embedded", "seed": 0, "episodes": 30,
               "variants": {name: {"distance_mean": 1.0, "distance_std": 0.0, "success_rate": 0.0,
                                   "seconds_per_episode": 0.0} for name in variants},
               "paired": paired_claims(variants)}
    write_table(results, tmp_path / "table.md")
    table = (tmp_path / "table.md").read_text()
    assert re.search(r"\| temp-lora \| no-memory \| -0\.[45]\d+ \| \[-", table)
    assert "| 0 / 0 of 30 | 1.000 | 1.00 |" in table


def test_generate_writes_a_long_video(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "gen"
    actions = ",".join(["go left for 3 steps"] * 3)
    threads = torch.get_num_threads()
    try:
        assert main(["generate", "--task", "retrace", "--checkpoint", str(tiny_checkpoints / "retrace" / "worldmodel"),
                     "--actions", actions, "--seed", "1", "--out", str(out), "--no-progress",
                     "--guidance-t-min", "600", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((out / "generate.json").read_text())["sampling"]["guidance_t_min"] == 600
    assert summary["frames"] == 1 + 3 * 8 and summary["chunks"] == 3
    assert (out / "video.mp4").stat().st_size > 1000 and (out / "video.gif").stat().st_size > 1000
    import imageio.v2 as imageio

    assert len(imageio.mimread(out / "video.gif")) == 25
    assert main(["generate", "--task", "retrace", "--out", str(out), "--actions", ""]) == 2
    assert "--actions" in capsys.readouterr().err
