"""``python -m xling_edit.bench`` (deprecated): runs ``bench/edit_bench.py`` with the same arguments."""
import runpy
import sys
from pathlib import Path

print("deprecated: `python -m xling_edit.bench` is now `python bench/edit_bench.py` (the one "
      "benchmark home); the old spelling goes in the next release", file=sys.stderr, flush=True)
script = Path(__file__).resolve().parents[2] / "bench" / "edit_bench.py"
sys.argv[0] = str(script)
runpy.run_path(str(script), run_name="__main__")
