"""Checkpoint files without the trainer: manifests, conversion, audit, resume reports, safe reading.

Nothing here imports DeepSpeed or starts a process group, so evaluation and the tools depend on
this package, not on ``pmnet.train``. Modules: ``manifest`` (step directories, sha256 manifests,
validity, the ``latest`` pointer), ``ptread`` (``.pt`` files read without torch and without
running code; the pickle allowlist), ``safeload`` (DeepSpeed's own loads held to that allowlist), ``convert`` (DeepSpeed ZeRO 0-3 -> interchange safetensors, universal
checkpoints), ``audit`` (integrity and consistency checks), ``resume`` (what a run directory
can resume from), ``version`` (the code version recorded with a checkpoint). Saving and loading
through a live DeepSpeed engine stays in ``pmnet.train.checkpoint``.
"""
