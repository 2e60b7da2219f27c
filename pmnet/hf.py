"""Hugging Face ``transformers`` integration (optional; the only module of pmnet that imports transformers).

``import pmnet.hf`` registers model_type ``"PMNet"`` with ``AutoConfig``,
``AutoModelForCausalLM`` and ``AutoTokenizer``; afterwards::

    tok = AutoTokenizer.from_pretrained(DIR)
    model = AutoModelForCausalLM.from_pretrained(DIR)      # our export or the released model's folder
    out = model.generate(**tok("Once upon", return_tensors="pt"), max_new_tokens=64, do_sample=False)
    print(tok.decode(out[0], skip_special_tokens=True))

The locally registered classes are used even when the folder's ``auto_map`` names the
released code (``trust_remote_code`` is not needed and not consulted unless set to true).

Streaming state: ``model(ids, cache_params=cache)`` continues the byte stream held by
``cache`` (a :class:`PMNetCache`, updated in place and returned as ``out.cache_params``),
exactly as ``pmnet.model``'s ``model(ids, state)``; its size does not grow with the stream.
``generate(..., cache_params=cache)`` feeds the new ``input_ids`` after the stream the cache
holds, then one byte per step. When ``generate`` returns, the cache has consumed every
returned byte except the last one sampled, so a follow-up call passes that byte first:
``model.generate(torch.cat([out[:, -1:], more_ids], 1), cache_params=cache, ...)``.

Padding is not supported (each row of a batch is one stream): an ``attention_mask`` with
zeros is refused. Sampling never picks PAD, BOS or the padding rows 256..383 of the
embedding (``suppress_tokens``, as ``pmnet.eval.generate`` does); EOS ends generation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizer,
)
from transformers.tokenization_utils import AddedToken
from transformers.utils import ModelOutput

from pmnet.model.config import PMNetConfig
from pmnet.model.interchange import AUTO_MAP, MAX_POSITION_EMBEDDINGS, config_from_interchange
from pmnet.model.modeling import PMNetModel, init_module_weights, initial_state
from pmnet.model.state import PMNetState

__all__ = ["ByteTokenizer", "PMNetCache", "PMNetCausalLMOutput", "PMNetHFConfig", "PMNetHFForCausalLM"]

MODEL_TYPE = "PMNet"
_DEFAULT = PMNetConfig()


class PMNetHFConfig(PretrainedConfig):
    """transformers configuration of PMNet: the released config.json keys (docs/model.md section 7)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        hidden_size: int = _DEFAULT.hidden_size,
        intermediate_size: int = _DEFAULT.intermediate_size,
        num_hidden_layers: int = _DEFAULT.num_hidden_layers,
        num_attention_heads: int = _DEFAULT.num_attention_heads,
        num_key_value_heads: int | None = None,
        head_dim: int = _DEFAULT.head_dim,
        memory_size: int = _DEFAULT.memory_size,
        num_memory: int = _DEFAULT.num_memory,
        num_memory_read_heads: int = _DEFAULT.num_memory_read_heads,
        memory_write_period: int = _DEFAULT.memory_write_period,
        memory_cumsum: bool = True,
        sliding_window: int = _DEFAULT.sliding_window,
        use_sliding_window: bool = True,
        max_window_layers: int = 0,
        layer_types: list[str] | None = None,
        rope_theta: float = _DEFAULT.rope_theta,
        rope_scaling: dict[str, Any] | None = None,
        rms_norm_eps: float = _DEFAULT.rms_norm_eps,
        vocab_size: int = _DEFAULT.vocab_size,
        attention_dropout: float = 0.0,
        attention_bias: bool = False,
        hidden_act: str = "silu",
        initializer_range: float = _DEFAULT.initializer_range,
        max_position_embeddings: int = MAX_POSITION_EMBEDDINGS,
        use_cache: bool = False,
        bos_token_id: int = _DEFAULT.bos_token_id,
        eos_token_id: int = _DEFAULT.eos_token_id,
        pad_token_id: int | None = None,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.memory_size = memory_size
        self.num_memory = num_memory
        self.num_memory_read_heads = num_memory_read_heads
        self.memory_write_period = memory_write_period
        self.memory_cumsum = memory_cumsum
        self.sliding_window = sliding_window
        self.use_sliding_window = use_sliding_window
        self.max_window_layers = max_window_layers
        self.layer_types = ["sliding_attention"] * num_hidden_layers if layer_types is None else layer_types
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.rms_norm_eps = rms_norm_eps
        self.vocab_size = vocab_size
        self.attention_dropout = attention_dropout
        self.attention_bias = attention_bias
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.max_position_embeddings = max_position_embeddings
        self.use_cache = use_cache
        kwargs.setdefault("auto_map", AUTO_MAP)
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def to_diff_dict(self) -> dict[str, Any]:
        """What save_pretrained writes: the released key set (tie_word_embeddings is kept even when it
        equals transformers' own default, as in the released config.json)."""
        out = super().to_diff_dict()
        out["tie_word_embeddings"] = self.tie_word_embeddings
        return dict(sorted(out.items()))

    def to_pmnet(self, **overrides: Any) -> PMNetConfig:
        """The pmnet.model configuration; a value PMNet cannot honour is refused (one line naming the key)."""
        data = {k: v for k, v in self.to_dict().items() if not k.startswith("_")}
        src = getattr(self, "_name_or_path", "")
        where = f"{src}/config.json" if src else f"{MODEL_TYPE} config"
        return config_from_interchange(data, where=where, **overrides)


@dataclasses.dataclass
class PMNetCache:
    """The streaming state carried across calls (updated in place by every forward that gets it)."""

    state: PMNetState | None = None

    @property
    def position(self) -> int:
        """Bytes of the stream consumed so far."""
        return 0 if self.state is None else self.state.position


@dataclasses.dataclass
class PMNetCausalLMOutput(ModelOutput):
    """Loss (when labels are given), logits [B, T, V] and the stream's cache."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    cache_params: PMNetCache | None = None


# transformers' own annotations disagree: generation_config is typed differently in its two bases
class PMNetHFForCausalLM(PreTrainedModel, GenerationMixin):  # type: ignore[misc]
    """PMNet as a transformers causal LM: the same modules and weight names as ``pmnet.model``."""

    config_class = PMNetHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _tied_weights_keys = ["lm_head.weight"]  # type: ignore[assignment]  # transformers annotates only its default, None
    _no_split_modules = ["PMNetDecoderLayer"]
    _is_stateful = True  # the state is PMNetCache, not a key/value cache that grows

    def __init__(self, config: PMNetHFConfig) -> None:
        super().__init__(config)
        self.pmnet_config = config.to_pmnet()
        self.model = PMNetModel(self.pmnet_config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        init_module_weights(module, self.config.initializer_range)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache_params: PMNetCache | None = None,
        labels: Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> PMNetCausalLMOutput | tuple[Any, ...]:
        """``input_ids`` [B, T] continue the streams of ``cache_params`` (new streams without it)."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("PMNet streams cannot skip padded positions: attention_mask must be all ones")
        cache = PMNetCache() if cache_params is None else cache_params
        state = cache.state
        if state is None:
            param = self.model.embed_tokens.weight
            state = initial_state(self.pmnet_config, input_ids.shape[0], param.device, param.dtype)
        elif state.batch_size != input_ids.shape[0]:
            raise ValueError(f"cache_params holds {state.batch_size} stream(s), input_ids has {input_ids.shape[0]}")
        hidden, cache.state = self.model(input_ids, state, False, frozenset())
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:  # transformers' convention: labels = input_ids, shifted here, -100 ignored
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        out = PMNetCausalLMOutput(loss=loss, logits=logits, cache_params=cache)
        return out if return_dict is not False else out.to_tuple()

    # the recurrent-state signature (cache_params), as transformers' own Mamba models override it
    def prepare_inputs_for_generation(  # type: ignore[override]
        self,
        input_ids: Tensor,
        cache_params: PMNetCache | None = None,
        cache_position: Tensor | None = None,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """First step: every byte of ``input_ids`` (after the cache's stream); later steps: the newest byte."""
        if cache_params is None:
            cache_params = PMNetCache()
        elif cache_position is not None and int(cache_position[0]) > 0:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "cache_params": cache_params, "attention_mask": attention_mask}

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``GenerationMixin.generate`` with the stream carried step to step (see the module docstring)."""
        kwargs.setdefault("use_cache", True)  # the step rule above reads cache_position as use_cache=True sets it
        blocked = [_DEFAULT.pad_token_id, self.config.bos_token_id, *range(256, self.config.vocab_size)]
        kwargs.setdefault("suppress_tokens", blocked)
        return super().generate(*args, **kwargs)


class ByteTokenizer(PreTrainedTokenizer):
    """UTF-8 bytes as ids (docs/model.md section 1): ``<pad>`` = 0, ``<bos>`` = 254, ``<eos>`` = 255.

    Encoding prepends BOS (``add_bos_token``), as every training document starts with it;
    decoding joins the bytes and decodes UTF-8 (invalid sequences are replaced).
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        bos_token: str = "<bos>",
        eos_token: str = "<eos>",
        pad_token: str = "<pad>",
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        **kwargs: Any,
    ) -> None:
        specials = {
            _DEFAULT.pad_token_id: pad_token,
            _DEFAULT.bos_token_id: bos_token,
            _DEFAULT.eos_token_id: eos_token,
        }
        self._added_tokens_decoder = {
            i: t if isinstance(t, AddedToken) else AddedToken(t, special=True, normalized=False)
            for i, t in specials.items()
        }
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        kwargs.pop("added_tokens_decoder", None)
        super().__init__(bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                         add_bos_token=add_bos_token, add_eos_token=add_eos_token, **kwargs)  # fmt: skip

    @property
    def vocab_size(self) -> int:
        return 256

    def get_vocab(self) -> dict[str, int]:
        vocab = {chr(i): i for i in range(256)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [chr(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int | None:
        return ord(token) if len(token) == 1 and ord(token) < 256 else None

    def _convert_id_to_token(self, index: int) -> str:
        return chr(index) if 0 <= index < 256 else ""

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        out = bytearray()
        for tok in tokens:
            if tok in self.added_tokens_encoder:
                out += tok.encode("utf-8")
            elif len(tok) == 1 and ord(tok) < 256:
                out.append(ord(tok))
        return out.decode("utf-8", errors="replace")

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + token_ids_0 + eos
        return out if token_ids_1 is None else out + bos + token_ids_1 + eos

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos, eos = [1] * self.add_bos_token, [1] * self.add_eos_token
        out = bos + [0] * len(token_ids_0) + eos
        return out if token_ids_1 is None else out + bos + [0] * len(token_ids_1) + eos

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is the 256 byte values: nothing to write


def register() -> None:
    """Register PMNet with the Auto classes (done on import; idempotent)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, PMNetHFConfig)
        AutoModelForCausalLM.register(PMNetHFConfig, PMNetHFForCausalLM)
        AutoTokenizer.register(PMNetHFConfig, slow_tokenizer_class=ByteTokenizer)


register()
