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
with a warning, on a machine without CUDA).

Scoring streams each text through the model with the carried state (docs/model.md section 5):

* ``loglikelihood``: ``BOS + context`` is fed once per distinct context; each continuation
  continues that state, so multiple-choice answers share the context's cost.
* ``loglikelihood_rolling``: ``BOS + document`` in chunks of ``chunk_bytes`` with the state
  carried, every byte scored once with all the context before it: memory is constant in the
  document's length (lm_eval's overlapping windows are not needed for a streaming model).
* ``generate_until``: ``pmnet.eval.generate`` (greedy unless ``do_sample``), stopped at EOS,
  ``max_gen_toks`` bytes or the first ``until`` string.

Tokens are bytes: lm_eval's token counts (``max_gen_toks``, ``max_length``) count bytes.
Requests run one at a time (each row of a batch would be its own stream).
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

__all__ = ["PMNetLM", "main"]

BOS = 254
LOG = logging.getLogger(__name__)


def _as_bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


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
        batch_size: int | str | None = None,  # lm_eval passes it; requests run one at a time
        max_batch_size: int | str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"pmnet model_args: unknown {', '.join(sorted(unknown))} (known: pretrained, dtype, chunk_bytes, "
                "max_gen_bytes, compile; the device is lm_eval's --device)"
            )
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            LOG.warning("pmnet: --device %s but no CUDA GPU is visible; running on the CPU", device)
            device = "cpu"
        self._device = eval_device(device or "auto")
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

    # ---- the LM API --------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
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
