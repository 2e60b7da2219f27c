"""Analytic matmul FLOPs per byte of the PMNet forward pass (for MFU).

Every matrix product is counted at its real shape as 2 * m * n * k. Elementwise work
(norms, sin/cos, softmax, the scan) is not counted, as is usual for MFU. The memory read
projection Wkv runs on each of the N slots of every byte, which is why PMNet's cost is
far above 6 x params (docs/model.md section 6).

Attention counts the keys a query really sees: with ``seq_len`` = T from a fresh stream,
query t sees min(t + 1, W) keys; with ``seq_len=None`` (a long stream, state carried)
every query sees W. ``dense_attention=True`` instead counts T keys per query, which is
what a dense masked implementation (eager / sdpa with ``attn_window="dense"``) multiplies,
and what torch's FLOP counter reports for them; the blocked window multiplies 2W keys per
query (blocks of W queries against the 2W keys they can reach).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pmnet.model.config import PMNetConfig


def mean_keys_seen(window: int, seq_len: int | None) -> float:
    """Average number of keys per query: W in steady state, mean(min(t+1, W)) over a fresh chunk."""
    if seq_len is None:
        return float(window)
    full = min(seq_len, window)
    ramp = full * (full + 1) / 2  # queries 0 .. full-1 see 1 .. full keys
    return (ramp + (seq_len - full) * window) / seq_len


def forward_flops_breakdown(
    cfg: PMNetConfig,
    seq_len: int | None = None,
    dense_attention: bool = False,
    implementation: str = "model",
    bytes_per_call: int | None = None,
) -> dict[str, float]:
    """Forward matmul FLOPs per byte by component (the sum is ``forward_flops_per_byte``).

    ``implementation="model"`` counts the model as docs/model.md defines it: the whole read
    projection Wkv (keys and values) on each of the N slots of every byte; this is the
    count for MFU and the one ``PMNetConfig.flops_per_byte`` reports. ``"fast"`` counts the
    products the fast path (``fused.read_core``) actually runs: the value half of Wkv is
    linear and the read softmax sums to 1, so it runs once per head on the
    attention-weighted slot features instead of on every slot (and, where d < 2M, is folded
    into the output projection; the fold costs a per-call constant, counted per byte when
    ``bytes_per_call`` = B x T is given, negligible at training sizes).
    """
    if implementation not in ("model", "fast"):
        raise ValueError(f"implementation={implementation!r}: use 'model' or 'fast'")
    d, hw, hd, heads = cfg.hidden_size, cfg.attn_width, cfg.head_dim, cfg.num_attention_heads
    n, m, r = cfg.num_memory, cfg.memory_size, cfg.num_memory_read_heads
    layers = cfg.num_hidden_layers
    if dense_attention:
        if seq_len is None:
            raise ValueError("dense_attention needs seq_len")
        keys = float(seq_len)
    else:
        keys = mean_keys_seen(cfg.sliding_window, seq_len)
    out = {
        "attn_proj": layers * (3 * 2 * d * hw + 2 * hw * d),
        "attn_core": layers * 2 * (2 * heads * hd * keys),  # q.k and p.v
        "mlp": layers * 3 * 2 * d * cfg.intermediate_size,
        "lm_head": 2 * d * cfg.vocab_size,
        "memory_read": 0.0,
        "memory_write": 0.0,
    }
    if cfg.use_memory:
        values: float  # the fold's share per byte below is fractional
        if implementation == "model":
            values = (
                n * 2 * (2 * m) * (r * m)  # value half of proj_kv on each of the N slots
                + r * n * 2 * m  # attention-weighted sum of slot values
            )
            values += 2 * r * m * d  # proj_out
        elif d < 2 * m:  # fused.fold_value_out: Wv folded into Wo, one [d, R x 2M] GEMM per byte
            values = r * n * 2 * (2 * m) + 2 * d * r * (2 * m)
            if bytes_per_call:  # the fold itself (R products [d, M] x [M, 2M]) once per forward call
                values += 2 * d * r * m * (2 * m) / bytes_per_call
        else:
            values = (
                r * n * 2 * (2 * m)  # attention-weighted slot features, per head
                + r * 2 * (2 * m) * m  # value half of proj_kv once per head
                + 2 * r * m * d  # proj_out
            )
        read = (
            2 * d * r * m  # proj_q
            + n * 2 * (2 * m) * (r * m)  # key half of proj_kv on each of the N slots
            + r * n * 2 * (2 * m)  # phase scores as cos.cos + sin.sin dot products
            + values
        )
        write = (
            2 * d * m  # proj_q
            + 2 * d * m  # proj_v
            + 2 * m * m  # proj_out (theta)
            + n * 2 * (2 * m) * m  # proj_k on each slot
            + n * 2 * (2 * m)  # phase scores
        )
        out["memory_read"] = float(layers * read)
        out["memory_write"] = float(cfg.num_levels * write)
    return {k: float(v) for k, v in out.items()}


def forward_flops_per_byte(
    cfg: PMNetConfig,
    seq_len: int | None = None,
    dense_attention: bool = False,
    implementation: str = "model",
    bytes_per_call: int | None = None,
) -> float:
    """Forward matmul FLOPs per byte (training is about 3x this: forward + two backward products)."""
    return sum(forward_flops_breakdown(cfg, seq_len, dense_attention, implementation, bytes_per_call).values())
