"""Where the GPU waits: idle gaps in a torch.profiler Chrome trace of a training step.

    python benchmarks/trace_gaps.py RUN/profile/trace_steps_A-B.json[.gz] [--bucket-ms 100] [--top 20] [--json OUT]

A run writes the trace with ``logging.profile_at_step=N logging.profile_trace=true``. The GPU
timeline (kernels, copies, memsets, merged over streams) is walked in time order; a gap is time
when nothing ran on the device. Printed: the span and total idle time; idle time per time bucket
of the step (where in the step the GPU waits: forward / backward / optimizer tail); idle time by
the kind of work that ended the gap (what the host was slow to issue); the host's top-level
operators during the last bucket (the step's tail). The profiler's own overhead makes host-side
gaps larger than in an unprofiled step: compare variants traced the same way.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def load_events(path: Path) -> list[dict[str, Any]]:
    """The trace's complete ("X") events."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def gaps(events: list[dict[str, Any]], bucket_ms: float) -> dict[str, Any]:
    """Idle time of the device timeline: total, per bucket of the span, by the name of the next work."""
    dev = sorted((e for e in events if e.get("cat") in DEVICE_CATS), key=lambda e: e["ts"])
    if not dev:
        raise SystemExit("error: the trace holds no GPU kernels (a CPU run, or a trace without CUDA activity)")
    t0, end = dev[0]["ts"], dev[0]["ts"]
    by_bucket: Counter[int] = Counter()
    by_next: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    total = 0.0
    for e in dev:
        gap = max(0.0, e["ts"] - end)
        total += gap
        by_bucket[int((e["ts"] - t0) / (bucket_ms * 1e3))] += gap
        entry = by_next[e["name"][:90]]
        entry[0] += 1
        entry[1] += gap
        end = max(end, e["ts"] + e["dur"])
    span = end - t0
    return {"t0": t0, "span_ms": span / 1e3, "idle_ms": total / 1e3,
            "buckets_ms": [round(by_bucket[i] / 1e3, 2) for i in range(int(span / (bucket_ms * 1e3)) + 1)],
            "by_next": sorted(((n, int(c), g / 1e3) for n, (c, g) in by_next.items()), key=lambda r: -r[2])}  # fmt: skip


def host_ops(events: list[dict[str, Any]], start_us: float) -> list[tuple[str, int, float]]:
    """Top-level host operators (not nested in another on the same thread) from ``start_us`` on:
    (name, count, total ms), largest first."""
    ops = sorted(
        (e for e in events if e.get("cat") == "cpu_op" and e["ts"] >= start_us), key=lambda e: (e["ts"], -e["dur"])
    )
    agg: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    ends: dict[Any, float] = {}
    for e in ops:
        tid = e.get("tid")
        if e["ts"] >= ends.get(tid, -1.0):
            agg[e["name"]][0] += 1
            agg[e["name"]][1] += e["dur"]
            ends[tid] = e["ts"] + e["dur"]
    return sorted(((n, int(c), d / 1e3) for n, (c, d) in agg.items()), key=lambda r: -r[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--bucket-ms", type=float, default=100.0)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.trace.is_file():
        raise SystemExit(f"error: {args.trace}: no such trace file")
    events = load_events(args.trace)
    g = gaps(events, args.bucket_ms)
    tail_start = g["t0"] + (len(g["buckets_ms"]) - 3) * args.bucket_ms * 1e3
    tail = host_ops(events, tail_start)
    print(f"device span {g['span_ms']:.1f} ms, idle {g['idle_ms']:.1f} ms ({g['idle_ms'] / g['span_ms']:.1%})")
    print(f"idle ms per {args.bucket_ms:g}-ms bucket: {g['buckets_ms']}")
    print(f"\n{'idle before (ms)':>16s} {'count':>7s}  next device work")
    for name, count, ms in g["by_next"][: args.top]:
        print(f"{ms:16.1f} {count:7d}  {name}")
    print(f"\nhost top-level operators in the last {3 * args.bucket_ms:g} ms (the step's tail)")
    print(f"{'ms':>10s} {'count':>7s}  operator")
    for name, count, ms in tail[: args.top]:
        print(f"{ms:10.1f} {count:7d}  {name[:90]}")
    if args.json:
        args.json.write_text(json.dumps({**g, "tail_host_ops": tail[: args.top]}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
