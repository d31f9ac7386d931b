import json
import subprocess
import sys

import pytest

from agent.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["collect", "--task", "stack_cubes"], "unknown task 'stack_cubes'; known tasks: retrace, return_cubes"),
    (["collect", "--backend", "unity"], "unknown backend 'unity'"),
    (["collect", "--episodes", "0"], "--episodes must be >= 1"),
    (["collect", "--episodes", "two"], "invalid int value"),
    (["collect", "--backend", "rlbench"], "CoppeliaSim"),
    (["plan", "--task", "return_cubes", "--checkpoint", "/nonexistent"], "slowfast train --task return_cubes"),
    (["plan", "--memory", "lstm"], "--memory must be"),
    (["plan", "--memory-source", "dreamed"], "--memory-source must be imagined or observed"),
    (["evaluate", "--memory-source", "dreamed"], "--memory-source must be imagined or observed"),
    (["plan", "--memory-variant", "lstm"], "--memory-variant must be one of local, original, global"),
    (["evaluate", "--memory-steps", "-1"], "--memory-steps must be >= 0"),
    (["evaluate", "--threads", "-1"], "--threads must be >= 0"),
    (["train-idm", "--threads", "-2"], "--threads must be >= 0"),
    (["finetune", "--memory-variant", "lstm"], "--memory-variant must be one of local, original, global"),
    (["fly"], "unknown command 'fly'"),
    (["train", "--data", "/nonexistent"], "slowfast collect"),
    (["train-idm", "--data", "/nonexistent"], "slowfast collect"),
    (["train-idm", "--imagined-portion", "0"], "--imagined-portion must lie strictly between 0 and 1"),
    (["imagine", "--task", "stack_cubes"], "unknown task 'stack_cubes'"),
    (["imagine", "--data", "/nonexistent"], "slowfast collect"),
    (["finetune", "--from", "/nonexistent", "--data", "/nonexistent"], "slowfast collect"),
    (["evaluate", "--variants", "no-memory,lstm"], "unknown variant(s) lstm"),
    (["generate", "--checkpoint", "/nonexistent", "--actions", "stay"], "slowfast train"),
    (["collect", "--task", "retrace", "--num-cubes", "3"], "--num-cubes only applies to --task return_cubes"),
    (["collect", "--task", "retrace", "--backend", "minedojo"], "JDK 8"),
])
def test_bad_input_exits_nonzero_with_one_clear_line(args, message):
    result = run(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert message in lines[-1]


def test_every_command_has_help():
    for command in ("collect", "envs", "plan", "train", "train-idm", "finetune", "generate", "imagine", "evaluate"):
        result = run(command, "--help")
        assert result.returncode == 0 and "--seed" in result.stdout and "--out" in result.stdout
        assert "(default: None)" not in result.stdout  # unset options print no default; later-resolved ones name theirs
    for command in ("plan", "evaluate", "finetune"):  # one shared set of memory options, grouped
        memory_help = run(command, "--help").stdout.split("Temp-LoRA memory options:")[1]
        for option in ("--memory-steps", "--memory-lr", "--memory-crop", "--memory-variant", "--memory-reverse"):
            assert option in memory_help
    for command in ("plan", "train", "train-idm", "finetune", "generate", "imagine", "evaluate"):  # jobs running torch
        assert "--threads" in run(command, "--help").stdout.split("CPU options:")[1]


def test_collect_from_yaml_config_with_cli_override(tmp_path, capsys):
    config = tmp_path / "collect.yaml"
    config.write_text(f"task: return_cubes\nepisodes: 5\nout: {tmp_path / 'unused'}\nprogress: false\n")
    out = tmp_path / "data"
    assert main(["collect", "--config", str(config), "--episodes", "1", "--seed", "3", "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["episodes"] == 1 and line["distance_max"] < 0.02
    assert (out / "config.yaml").read_text().count("episodes: 1") == 1
    assert main(["collect", "--config", str(config), "--out", str(out)]) == 2  # refuses to overwrite


def test_unknown_yaml_key_is_rejected(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("episdoes: 3\n")
    assert main(["collect", "--config", str(config)]) == 2
    assert "unknown options episdoes" in capsys.readouterr().err
