"""The console scripts of pyproject.toml ``[project.scripts]``, one function per tool.

Each runs its tool module as ``python -m`` does, the module's ``if __name__ == "__main__"``
block included, so error handling and exit status are the tool's own whichever way it is
started. (They live here, not in ``pmnet/tools/__init__.py``, because importing a submodule
would replace a package-level function of the same name.)
"""

from __future__ import annotations

import runpy


def _run(module: str) -> int:
    # The module's __main__ block ends in SystemExit (the tool's exit status); 0 if it ever returns.
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


def shard_dataset() -> int:
    """``pmnet-shard``: tools/shard_dataset.py."""
    return _run("pmnet.tools.shard_dataset")


def convert_checkpoint() -> int:
    """``pmnet-convert``: tools/convert_checkpoint.py."""
    return _run("pmnet.tools.convert_checkpoint")


def audit_checkpoint() -> int:
    """``pmnet-audit``: tools/audit_checkpoint.py."""
    return _run("pmnet.tools.audit_checkpoint")


def resume() -> int:
    """``pmnet-resume``: tools/resume.py."""
    return _run("pmnet.tools.resume")


def eval_long_context() -> int:
    """``pmnet-eval-long-context``: tools/eval_long_context.py."""
    return _run("pmnet.tools.eval_long_context")


def eval_copy_paste() -> int:
    """``pmnet-eval-copy-paste``: tools/eval_copy_paste.py."""
    return _run("pmnet.tools.eval_copy_paste")


def generate() -> int:
    """``pmnet-generate``: tools/generate.py."""
    return _run("pmnet.tools.generate")


def train() -> int:
    """``pmnet-train``: ``python -m pmnet.train``."""
    return _run("pmnet.train")
