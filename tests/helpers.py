"""Shared by several test files: the benchmark scripts as modules, and the tiny UNet they all run."""
import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).parents[1] / "scripts"

# Random-init UNet of two 16/32-channel levels: the test suite's size, so that it fits CI's time on 2 cores.
TINY = dict(block_out_channels=(16, 32), attention_head_dim=2, norm_num_groups=8, sample_steps=2)


def load_script(name):
    """``scripts/NAME.py`` imported as a module (scripts/ is not a package: it holds command-line tools)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
