"""PNG figures of the evaluations (matplotlib, headless Agg backend).

Kept apart from the numerics so the evaluation library imports without matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot import
    import matplotlib.pyplot as plt

    return plt


def plot_bpb_curves(
    path: str | Path,
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    title: str = "Bits per byte vs position",
    window: int = 0,
) -> None:
    """BPB per position (faint) and its moving average (bold) for each (label, bpb, moving avg); log x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for i, (label, bpb, ma) in enumerate(curves):
        pos = np.arange(1, len(bpb) + 1)
        color = f"C{i}"
        if i == 0:  # the raw per-byte curve of the first model only: several would hide the averages
            ax.plot(pos, bpb, color=color, alpha=0.08, linewidth=0.3, label=f"{label} (per byte)")
        ax.plot(pos, ma, color=color, linewidth=1.8, label=f"{label} (moving avg {window} B)" if window else label)
    ax.set_xscale("log")
    ax.set_xlabel("position in book (bytes)")
    ax.set_ylabel("bits per byte")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    # y range from the moving averages past the first 16 bytes (an average of a handful of bytes is
    # all noise); the faint per-byte curve may leave the frame
    skip = [ma[16:] if len(ma) > 32 else ma for _, _, ma in curves]
    lo, hi = min(float(np.nanmin(m)) for m in skip), max(float(np.nanmax(m)) for m in skip)
    pad = 0.05 * (hi - lo) + 0.02
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_cumulative_diff(
    path: str | Path,
    diffs: Sequence[tuple[str, np.ndarray]],
    *,
    title: str = "Cumulative BPB difference vs the full model",
) -> None:
    """One line per ablation: cumulative sum of (ablation BPB - model BPB) over positions."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for i, (label, cum) in enumerate(diffs):
        ax.plot(np.arange(1, len(cum) + 1), cum, color=f"C{i}", linewidth=1.6, label=label)
    ax.axhline(0.0, color="k", linewidth=0.6)
    ax.set_xlabel("position in book (bytes)")
    ax.set_ylabel("cumulative BPB difference (bits)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_copy_paste(
    path: str | Path,
    series: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[float]]],
    *,
    receptive_field: int | None = None,
    title: str = "Copy-paste accuracy vs copy length N",
) -> None:
    """Exact-match (left) and per-byte (right) accuracy vs N: (label, N, exact, per-byte) per model.

    A dashed line marks N = receptive field / 2, beyond which attention alone cannot reach
    the bytes to copy (lookback 2N).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    for i, (label, ns, exact, per_byte) in enumerate(series):
        axes[0].plot(ns, np.asarray(exact) * 100, marker="o", color=f"C{i}", label=label)
        axes[1].plot(ns, np.asarray(per_byte) * 100, marker="o", color=f"C{i}", label=label)
    for ax, name in zip(axes, ("exact match (all N bytes right)", "per-byte accuracy")):
        if receptive_field:
            ax.axvline(receptive_field / 2, color="gray", linestyle="--", linewidth=1)
            ax.text(receptive_field / 2, 50, f" 2N = {receptive_field}", color="gray", fontsize=8)
        ax.set_xlabel("N (bytes to copy; bucket upper edge)")
        ax.set_title(name, fontsize=10)
        ax.set_ylim(-3, 103)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
