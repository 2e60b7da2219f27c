"""lm-evaluation-harness model ``pmnet`` (optional extra: ``pip install .[eval]``).

lm_eval 0.4.x finds models only in its registry, and its ``lm_eval`` command imports no
plugins, so PMNet's model is registered when this module is imported. Run the harness's own
command line through it::

    python -m pmnet.eval.harness --model pmnet --model_args pretrained=DIR --tasks TASKS [lm_eval options]

(every option is lm_eval's; ``run``/``ls``/``validate`` work as with ``lm_eval``), or from
Python: ``import pmnet.eval.harness`` then ``lm_eval.simple_evaluate(model="pmnet", ...)``.

``model_args``: ``pretrained`` (an interchange folder, the released model's folder, a run
directory or a DeepSpeed checkpoint: as tools/eval_long_context.py), ``dtype`` (fp32 | bf16),
``chunk_bytes`` (bytes per forward, default 4096), ``max_gen_bytes`` (default 256), ``compile``
(CUDA only). The device is lm_eval's ``--device`` (its default ``cuda:0`` falls back to the CPU,
with a warning, on a machine without CUDA); the batch size is lm_eval's ``--batch_size``: a
positive integer (default 1) or ``auto`` / ``auto:N``: a fixed 16 on CUDA and 1 on the CPU
(no memory probing), capped by ``--max_batch_size``.

Scoring streams each text through the model in chunks of ``chunk_bytes`` with the carried
state (docs/model.md section 5), so memory is constant in a text's length:

* ``loglikelihood``, batch size 1: ``BOS + context`` is fed once per distinct context; each
  continuation continues that state, so multiple-choice answers share the context's cost.
  Batch size B > 1: each request's whole ``BOS + context + continuation`` is one row; the
  requests, longest first, go B at a time as right-padded batches, and each row's
  continuation bytes are scored. Rows do not share contexts, so this pays a context once
  per continuation: it wins where one row alone leaves the device idle (a GPU), not on a CPU.
* ``loglikelihood_rolling``: ``BOS + document``, every byte scored once with all the context
  before it (lm_eval's overlapping windows are not needed for a streaming model); one
  document at a time, or B > 1 documents, longest first, as right-padded batches.
* ``generate_until``: one request at a time, whatever the batch size:
  ``pmnet.eval.generate`` (greedy unless ``do_sample``), stopped at EOS, ``max_gen_toks``
  bytes or the first ``until`` string.

Results come back in the order of the requests. Tokens are bytes: lm_eval's token counts
(``max_gen_toks``, ``max_length``) count bytes.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from pmnet.eval.cli import run_cli
from pmnet.eval.generate import generate
from pmnet.eval.loading import eval_device, load_model
from pmnet.model.state import PMNetState
from pmnet.vocab import BOS_ID, PAD_ID

__all__ = ["PMNetLM", "main", "parse_batch_size"]

BOS = BOS_ID
LOG = logging.getLogger(__name__)
AUTO_BATCH_SIZE = {"cuda": 16, "cpu": 1}
"""``batch_size=auto``: a fixed size per device type (no memory probing); others get the CPU's.
1 on the CPU: a CPU forward is compute-bound, so batched rows only add padding and, for
``loglikelihood``, a context per continuation (0.3-0.9x the speed of batch size 1 in
benchmarks/harness_batching.py)."""


def _as_bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


def _positive_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 1 else None
    text = str(v).strip()
    return int(text) if text.isdigit() and int(text) >= 1 else None


def parse_batch_size(batch_size: Any, max_batch_size: Any, device: torch.device) -> int:
    """lm_eval's ``--batch_size`` (None, a positive integer, ``auto`` or ``auto:N``) as a number.

    ``auto`` is :data:`AUTO_BATCH_SIZE` for the device's type, capped by ``max_batch_size``
    (lm_eval's ``auto:N`` re-detection is not needed for a fixed size: it means ``auto``).
    A bad value raises a one-line ``ValueError`` naming it.
    """
    cap: int | None = None
    if max_batch_size is not None:
        cap = _positive_int(max_batch_size)
        if cap is None:
            raise ValueError(f"max_batch_size={max_batch_size!r}: must be a positive integer")
    if batch_size is None:
        return 1
    text = str(batch_size).strip().lower()
    if text == "auto" or (text.startswith("auto:") and _positive_int(text[5:]) is not None):
        size = AUTO_BATCH_SIZE.get(device.type, AUTO_BATCH_SIZE["cpu"])
        size = min(size, cap) if cap is not None else size
        LOG.warning("pmnet: batch_size=%s -> %d on %s", batch_size, size, device)
        return size
    given = _positive_int(batch_size)
    if given is None:
        raise ValueError(f"batch_size={batch_size!r}: must be a positive integer, 'auto' or 'auto:N'")
    return given


@register_model("pmnet")
class PMNetLM(LM):
    """PMNet for lm_eval: bytes as tokens, the streaming state carried through long texts."""

    def __init__(
        self,
        pretrained: str,
        device: str | None = "auto",
        dtype: str = "fp32",
        chunk_bytes: int | str = 4096,
        max_gen_bytes: int | str = 256,
        compile: bool | str = False,
        batch_size: int | str | None = None,  # lm_eval's --batch_size
        max_batch_size: int | str | None = None,  # lm_eval's --max_batch_size (caps ``auto``)
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"pmnet model_args: unknown {', '.join(sorted(unknown))} (known: pretrained, dtype, chunk_bytes, "
                "max_gen_bytes, compile; the device and batch size are lm_eval's --device and --batch_size)"
            )
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            LOG.warning("pmnet: --device %s but no CUDA GPU is visible; running on the CPU", device)
            device = "cpu"
        self._device = eval_device(device or "auto")
        self.batch_size = parse_batch_size(batch_size, max_batch_size, self._device)
        self.model, self.cfg = load_model(pretrained, device=self._device, dtype=dtype, compile=_as_bool(compile))
        self.chunk_bytes = int(chunk_bytes)
        self.max_gen_bytes = int(max_gen_bytes)
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes={chunk_bytes}: must be >= 1")

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return "pmnet-bytes"

    # ---- streaming helpers -------------------------------------------------------------
    def _feed(self, ids: list[int], state: PMNetState | None, targets: list[int] | None = None) -> tuple[Any, ...]:
        """Feed ``ids`` in chunks; returns (state, last logits [V], summed log-prob of ``targets``,
        all greedy) where ``targets[i]`` is the byte after ``ids[i]``."""
        total, greedy, last = 0.0, True, None
        for start in range(0, len(ids), self.chunk_bytes):
            x = torch.tensor([ids[start : start + self.chunk_bytes]], dtype=torch.long, device=self._device)
            logits, state = self.model(x, state=state)
            last = logits[0, -1]
            if targets is not None:
                y = torch.tensor(targets[start : start + self.chunk_bytes], dtype=torch.long, device=self._device)
                logp = F.log_softmax(logits[0].float(), dim=-1)
                total += float(logp.gather(1, y[:, None]).sum())
                greedy = greedy and bool((logp.argmax(-1) == y).all())
        return state, last, total, greedy

    @torch.inference_mode()
    def _continuation(self, state: PMNetState, last: torch.Tensor, cont: bytes) -> tuple[float, bool]:
        """Log-prob of ``cont`` after a stream whose final logits are ``last``, and whether greedy picks it."""
        if not cont:
            return 0.0, True
        first = F.log_softmax(last.float(), dim=-1)
        total, greedy = float(first[cont[0]]), int(first.argmax()) == cont[0]
        if len(cont) > 1:
            _, _, rest, rest_greedy = self._feed(list(cont[:-1]), state, targets=list(cont[1:]))
            total, greedy = total + rest, greedy and rest_greedy
        return total, greedy

    @torch.inference_mode()
    def _score_batch(self, rows: list[list[int]], starts: list[int]) -> list[tuple[float, bool]]:
        """Score right-padded rows together: for each row of byte ids (``BOS`` first), the summed
        log-prob of its bytes from index ``starts[i]`` on (each given all the bytes before it),
        and whether greedy picks every one of them.

        Right padding with PAD is exact here: everything in the model is causal (the sliding
        window attends to positions <= t; the phasor memory's write at position t changes only
        the phases of positions > t, and its routing is per position), so the pad bytes after a
        row's end, and the carried state they leave, never reach the scores of that row's bytes.
        Every row starts at position 0, so RoPE and the window need no per-row offsets. (In
        floating point a row's scores can differ from its scores alone in the last bits: other
        shapes round differently.)
        """
        n_in = max(len(r) for r in rows) - 1  # inputs: every byte but the last of the longest row
        ids = torch.full((len(rows), n_in + 1), PAD_ID, dtype=torch.long)
        scored = torch.zeros(len(rows), n_in, dtype=torch.bool)  # target index j predicts byte j + 1
        for i, (row, start) in enumerate(zip(rows, starts)):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            scored[i, start - 1 : len(row) - 1] = True
        span = scored.any(0).nonzero().flatten().tolist()  # columns that any row scores (on the CPU: no sync)
        ids, scored = ids.to(self._device), scored.to(self._device)
        first_col, last_col = (span[0], span[-1] + 1) if span else (n_in, n_in)
        total = torch.zeros(len(rows), dtype=torch.float64, device=self._device)
        greedy = torch.ones(len(rows), dtype=torch.bool, device=self._device)
        state: PMNetState | None = None
        for a in range(0, n_in, self.chunk_bytes):
            b = min(a + self.chunk_bytes, n_in)
            logits, state = self.model(ids[:, a:b], state=state)
            lo, hi = max(a, first_col), min(b, last_col)
            if lo >= hi:
                continue  # no row scores a byte of this chunk (a context's start)
            logp = F.log_softmax(logits[:, lo - a : hi - a].float(), dim=-1)
            y, mask = ids[:, lo + 1 : hi + 1], scored[:, lo:hi]
            tok = logp.gather(-1, y[..., None]).squeeze(-1)
            total += torch.where(mask, tok, 0.0).sum(1, dtype=torch.float64)
            greedy &= ((logp.argmax(-1) == y) | ~mask).all(1)
        return list(zip(total.tolist(), greedy.tolist()))

    def _batched(
        self, rows: list[list[int]], starts: list[int], name: str, disable_tqdm: bool
    ) -> list[tuple[float, bool]]:
        """:meth:`_score_batch` over all ``rows``, ``self.batch_size`` at a time, longest first
        (the first batch is the largest, so running out of memory shows at once); results in
        the order of ``rows``. Rows with nothing to score (``starts[i] == len(rows[i])``) are
        (0.0, True) without a forward."""
        out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        order = sorted((i for i in range(len(rows)) if starts[i] < len(rows[i])), key=lambda i: -len(rows[i]))
        bar = tqdm(
            total=len(rows), disable=disable_tqdm or self.rank != 0, desc=f"{name} (batches of {self.batch_size})"
        )
        bar.update(len(rows) - len(order))
        for k in range(0, len(order), self.batch_size):
            batch = order[k : k + self.batch_size]
            for i, res in zip(batch, self._score_batch([rows[i] for i in batch], [starts[i] for i in batch])):
                out[i] = res
            bar.update(len(batch))
        bar.close()
        return out

    # ---- the LM API --------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log P(continuation | context), greedy picks it) per request; batched when batch_size > 1."""
        if self.batch_size > 1:
            rows, starts = [], []
            for req in requests:
                prefix = [BOS, *req.args[0].encode("utf-8")]
                rows.append(prefix + list(req.args[1].encode("utf-8")))
                starts.append(len(prefix))
            results = self._batched(rows, starts, "pmnet loglikelihood", disable_tqdm)
            for req, res in zip(requests, results):
                self.cache_hook.add_partial("loglikelihood", req.args, res)
            return results
        by_context: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_context[req.args[0]].append(i)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="pmnet loglikelihood")
        for context, indices in by_context.items():
            state, last, _, _ = self._feed([BOS, *context.encode("utf-8")], None)
            for i in indices:
                out[i] = self._continuation(state, last, requests[i].args[1].encode("utf-8"))
                self.cache_hook.add_partial("loglikelihood", requests[i].args, out[i])
                bar.update(1)
        bar.close()
        return out

    @torch.inference_mode()
    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """log P(document) per request, every byte scored once; batched when batch_size > 1."""
        if self.batch_size > 1:
            rows = [[BOS, *req.args[0].encode("utf-8")] for req in requests]
            scores = self._batched(rows, [1] * len(rows), "pmnet loglikelihood_rolling", disable_tqdm)
            for req, (total, _) in zip(requests, scores):
                self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            return [total for total, _ in scores]
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="pmnet loglikelihood_rolling"):
            data = req.args[0].encode("utf-8")
            if not data:
                out.append(0.0)
                continue
            ids = [BOS, *data]
            _, _, total, _ = self._feed(ids[:-1], None, targets=ids[1:])
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return out

    @torch.inference_mode()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generated text per request, one request at a time whatever the batch size."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="pmnet generate_until"):
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            sample = _as_bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 1.0 if sample else 0.0)) if sample else 0.0
            new_bytes = int(kw.pop("max_gen_toks", self.max_gen_bytes))
            data = generate(
                self.model, context.encode("utf-8"), new_bytes=new_bytes, temperature=temperature,
                top_k=int(kw.pop("top_k", 0) or 0), seed=int(kw.pop("seed", 0) or 0),
                prompt_chunk_bytes=self.chunk_bytes, until=[u.encode("utf-8") for u in until],
            )  # fmt: skip
            text = data.decode("utf-8", errors="replace")
            out.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out


def main(argv: list[str] | None = None) -> int:
    """``lm_eval``'s command line with the ``pmnet`` model registered; a checkpoint or model_args
    problem is one ``error:`` line and exit status 2 (``PMNET_DEBUG=1``: the traceback)."""
    from lm_eval.__main__ import cli_evaluate

    def run(args: Any) -> int:
        if args is not None:
            sys.argv[1:] = list(args)
        cli_evaluate()
        return 0

    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
