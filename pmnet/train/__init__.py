"""The training engine: ``python -m pmnet.train CONFIG [overrides]`` (see launchers/pretrain.sh).

Modules: ``trainer`` (train(): wiring), ``loop`` (optimizer steps, truncated BPTT, skip/stop
agreement), ``engine`` (DeepSpeed JSON, AdamW groups, LR schedule, ZeRO-3 construction),
``hooks`` (metrics, eval, checkpoint cadence), ``metrics`` (TensorBoard, console, log file),
``distributed`` (process groups), ``checkpoint`` (saving and loading through the engine; the
files themselves are ``pmnet.checkpoint``'s), ``preflight`` (data streams and the run directory's
saved config, checked before any rank starts).
"""
