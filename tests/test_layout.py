"""Data flows one way: tasks -> envs -> worldmodel / inverse_dynamics -> agent; jobconfig serves every job."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {
    "jobconfig": set(),
    "tasks": set(),
    "envs": {"tasks"},
    "worldmodel": {"jobconfig", "tasks", "envs"},
    "inverse_dynamics": {"jobconfig", "tasks", "envs"},
    "agent": {"jobconfig", "tasks", "envs", "worldmodel", "inverse_dynamics"},
}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name.split(".")[0] for name in names} & set(MAY_IMPORT)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_package_imports_only_the_packages_upstream_of_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    against_the_flow = {str(path.relative_to(ROOT)): sorted(imported_packages(path) - MAY_IMPORT[package] - {package})
                        for path in files}
    assert {path: names for path, names in against_the_flow.items() if names} == {}
