"""Evaluation library behind tools/eval_long_context.py, tools/eval_copy_paste.py and tools/generate.py.

Modules: ``loading`` (checkpoint -> model, ablated variants), ``long_context`` (PG-19-style
per-position BPB with state carried), ``copy_paste`` (accuracy by copy length), ``generate``
(sampling with the streaming state), ``plotting`` (PNG figures), ``cli`` (shared CLI plumbing).
"""
