import pytest

from envs.collect import collect


@pytest.fixture(scope="session")
def cubes_dataset(tmp_path_factory):
    """Two real expert episodes of the embedded robot task."""
    out = tmp_path_factory.mktemp("cubes_data")
    summary = collect("return_cubes", out, episodes=2, seed=7, progress=False)
    return out, summary


@pytest.fixture(scope="session")
def retrace_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("retrace_data")
    summary = collect("retrace", out, episodes=3, seed=5, progress=False)
    return out, summary
