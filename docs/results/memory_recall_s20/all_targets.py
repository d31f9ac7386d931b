"""bench_recall.py with one more Temp-LoRA target set, "all": attention, feed-forward and ResNet convolutions.

Session 20's capacity probe (README.md there); the target set is added for this run only. Arguments are
bench_recall.py's, e.g. ``--memory-targets all --learn-from return``.
"""
import runpy
import sys
from pathlib import Path

import worldmodel.memory as memory

memory.TARGETS["all"] = (r".*(attentions|transformer_in).*\.(to_q|to_k|to_v|to_out\.0|ff\.net\.0\.proj|ff\.net\.2)"
                         r"|.*resnets.*\.(conv1|conv2)")
script = Path(__file__).resolve().parents[3] / "scripts" / "bench_recall.py"
sys.argv = [str(script), *sys.argv[1:]]
runpy.run_path(str(script), run_name="__main__")
