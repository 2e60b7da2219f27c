"""``python tools/shard_dataset.py``: the tool is pmnet/tools/shard_dataset.py (installed: ``pmnet-shard`` or ``python -m pmnet.tools.shard_dataset``)."""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

if __name__ == "__main__":
    runpy.run_module("pmnet.tools.shard_dataset", run_name="__main__", alter_sys=True)
else:  # imported as a module (the tests load tools/*.py by path): the tool's entry point
    from pmnet.tools.shard_dataset import main  # noqa: F401
