import json
from pathlib import Path

import pytest

from helpers import load_script

compare = load_script("compare_evaluations")


def _evaluation(folder: Path, row: str, distances: dict[int, float]) -> str:
    folder.mkdir()
    per_episode = [{"seed": seed, "distance": d, "success": False} for seed, d in distances.items()]
    (folder / "results.json").write_text(json.dumps({"variants": {row: {"per_episode": per_episode}}}))
    return f"{folder}:{row}"


def test_draws_are_averaged_per_seed_and_only_shared_seeds_compared(tmp_path, capsys):
    draw0 = _evaluation(tmp_path / "d0", "temp-lora", {0: 1.0, 1: 3.0, 2: 5.0, 3: 2.0})
    draw1 = _evaluation(tmp_path / "d1", "temp-lora", {0: 3.0, 1: 1.0, 2: 1.0})  # seed 3 not run in this draw
    other = _evaluation(tmp_path / "b", "no-memory", {0: 4.0, 1: 4.0, 2: 5.0, 7: 0.0})
    assert compare.seed_means(f"{draw0},{draw1}") == {0: 2.0, 1: 2.0, 2: 3.0}
    assert compare.main([f"{draw0},{draw1}", other]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 3 and result["a_mean"] == pytest.approx(7 / 3) and result["b_mean"] == 13 / 3
    assert result["mean_difference"] == pytest.approx(-2.0) and (result["a_lower"], result["a_higher"]) == (3, 0)


def test_groups_of_other_seeds_are_pooled_and_may_not_overlap(tmp_path, capsys):
    first = [_evaluation(tmp_path / f"first{k}", "slow-fast", {0: 1.0 + k, 1: 2.0}) for k in range(2)]
    later = _evaluation(tmp_path / "later", "slow-fast", {2: 4.0, 3: 0.0})
    pooled = f"{first[0]},{first[1]}+{later}"
    assert compare.pooled_seed_means(pooled) == {0: 1.5, 1: 2.0, 2: 4.0, 3: 0.0}
    other = _evaluation(tmp_path / "b", "no-memory", {0: 2.5, 1: 2.0, 2: 5.0, 3: 1.0})
    assert compare.main([pooled, other]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 4 and result["mean_difference"] == pytest.approx(-0.75)
    with pytest.raises(SystemExit, match=r"seeds \[0, 1\] are in two '\+' groups"):
        compare.pooled_seed_means(f"{first[0]}+{first[1]}")


def test_bad_sides_name_the_problem(tmp_path):
    row = _evaluation(tmp_path / "a", "no-memory", {0: 1.0})
    for side, message in [(f"{tmp_path / 'a'}:slow-fast", "has no row 'slow-fast'; it has no-memory"),
                          (f"{tmp_path / 'missing'}:no-memory", "results.json"), ("no-memory", "FOLDER:ROW")]:
        with pytest.raises(SystemExit, match=message):
            compare.main([side, row])
    far = _evaluation(tmp_path / "far", "no-memory", {9: 1.0})
    with pytest.raises(SystemExit, match="share no seed"):
        compare.main([row, far])


def test_per_cube_pairs_each_cube_and_needs_rows_that_record_them(tmp_path, capsys):
    def with_cubes(folder: Path, row: str, cubes: dict[int, dict[str, float]]) -> str:
        folder.mkdir()
        per_episode = [{"seed": seed, "distance": sum(d.values()) / len(d), "success": False, "per_cube": d}
                       for seed, d in cubes.items()]
        (folder / "results.json").write_text(json.dumps({"variants": {row: {"per_episode": per_episode}}}))
        return f"{folder}:{row}"

    # Each planned return brings one cube 10 cm nearer and pushes the other 10 cm away: level per episode.
    planned = with_cubes(tmp_path / "a", "no-memory", {0: {"red": 0.1, "blue": 0.3}, 1: {"red": 0.3, "blue": 0.1}})
    still = with_cubes(tmp_path / "b", "no-op", {0: {"red": 0.2, "blue": 0.2}, 1: {"red": 0.2, "blue": 0.2}})
    assert compare.main([planned, still]) == 0
    by_episode = json.loads(capsys.readouterr().out)
    assert by_episode["mean_difference"] == pytest.approx(0.0) and by_episode["a_lower"] == 0
    assert compare.main([planned, still, "--per-cube"]) == 0
    by_cube = json.loads(capsys.readouterr().out)
    assert (by_cube["episodes"], by_cube["cubes"], by_cube["a_lower"], by_cube["a_higher"]) == (2, 4, 2, 2)
    old = _evaluation(tmp_path / "old", "no-op", {0: 0.2, 1: 0.2})
    with pytest.raises(SystemExit, match="records no per-cube distances; rerun"):
        compare.main([planned, old, "--per-cube"])
    with pytest.raises(SystemExit, match=r"seeds \[0, 1\] are in two '\+' groups"):
        compare.main([f"{planned}+{planned}", still, "--per-cube"])
