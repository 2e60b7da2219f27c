"""Compile the fast path for the GPU with as few distinct graphs as possible.

``PMNetForCausalLM.compile_layers()`` compiles each decoder layer whole. The layers of
different levels differ in shapes (anchors [N**k, N, M], carried group states), and write
layers differ from read-only ones, so that is up to 2 x K distinct graphs, each compiled
for forward and backward: minutes of inductor time.

:func:`compile_fast_path` (``mode="modules"``, the default) compiles pieces whose shapes do
not depend on the level instead, each once for all 12 layers:

* the memory read, write, scan and level preparation (``Phi + S`` and the slot features of
  ``Phi + S + E_k[g]``, shared by a level's reads) as pure tensor functions (``fused.py``),
  switched on for this model by ``PMNetForCausalLM.compile_memory_cores``;
* every ``PMNetAttention`` (projections, q/k norms, RoPE, flex attention), ``SwiGLU`` and
  ``RMSNorm`` module. Dynamo lifts module parameters to graph inputs
  (``inline_inbuilt_nn_modules``), so the 12 instances share one graph per module class.

Left eager: residual adds, the anchor gather, and autograd's sums of gradients that meet
between graphs (a level's Phi and anchors, the feature gradients of its P reads). Nothing here
changes the math or the state_dict keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from torch import nn

from pmnet.model.attention import PMNetAttention
from pmnet.model.layers import RMSNorm, SwiGLU
from pmnet.model.modeling import PMNetForCausalLM, raise_recompile_limit

if TYPE_CHECKING:
    from pmnet.model.modeling import PMNetForCausalLM


def compile_fast_path(model: PMNetForCausalLM, mode: Literal["modules", "layers"] = "modules") -> PMNetForCausalLM:
    """Compile ``model`` (a PMNetForCausalLM) in place for speed; returns it.

    ``modules``: shared graphs per module class plus the compiled memory cores (see the
    module docstring). ``layers``: ``compile_layers()`` (each decoder layer whole,
    fullgraph), with the memory cores inlined into the layer graphs.
    """
    if mode == "layers":
        model.compile_memory_cores(False)  # inlined into the layer graphs instead
        model.compile_layers()
        return model
    if mode != "modules":
        raise ValueError(f"mode={mode!r}: use 'modules' or 'layers'")
    model.compile_memory_cores(True)
    raise_recompile_limit(32)
    for sub in model.modules():
        shared = isinstance(sub, PMNetAttention | SwiGLU)
        if shared or (isinstance(sub, RMSNorm) and not _inside_attention(model, sub)):
            sub.compile(fullgraph=True, dynamic=False)
    return model


def _inside_attention(model: nn.Module, norm: nn.Module) -> bool:
    """q/k norms live inside PMNetAttention and are compiled with it."""
    return any(isinstance(sub, PMNetAttention) and any(m is norm for m in sub.modules()) for sub in model.modules())
