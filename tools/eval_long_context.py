"""``python tools/eval_long_context.py``: the tool is pmnet/tools/eval_long_context.py (installed: ``pmnet-eval-long-context`` or ``python -m pmnet.tools.eval_long_context``)."""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

if __name__ == "__main__":
    runpy.run_module("pmnet.tools.eval_long_context", run_name="__main__", alter_sys=True)
else:  # imported as a module (the tests load tools/*.py by path): the tool's entry point
    from pmnet.tools.eval_long_context import main  # noqa: F401
