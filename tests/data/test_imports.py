"""Sharding a corpus needs neither torch nor the model: the byte ids live in ``pmnet.vocab``."""

from __future__ import annotations

from tests.data.helpers import run_fresh_python

# the modules the shard tool's run goes through (tools/shard_dataset.py -> data_pipeline.sharding)
TORCH_FREE = [
    "pmnet.vocab",
    "data_pipeline.packing",
    "data_pipeline.manifest",
    "data_pipeline.sources",
    "data_pipeline.writer",
    "data_pipeline.verify",
    "data_pipeline.sharding",
]


def test_sharding_path_imports_without_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "    loaded = [m for m in ('torch', 'pmnet.model') if m in sys.modules]\n"
        "    assert not loaded, f'importing {name} loaded {loaded}'\n"
        "print('TORCH_FREE_OK')\n"
    )
    run_fresh_python(code, "TORCH_FREE_OK")


def test_model_and_data_share_the_byte_ids() -> None:
    import pmnet.vocab
    from data_pipeline import packing
    from pmnet.model import config

    for name in ("PAD_ID", "BOS_ID", "EOS_ID"):
        assert getattr(config, name) == getattr(pmnet.vocab, name) == getattr(packing, name)
    cfg = config.PMNetConfig()
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (
        pmnet.vocab.PAD_ID,
        pmnet.vocab.BOS_ID,
        pmnet.vocab.EOS_ID,
    )


def test_preflight_imports_without_torch() -> None:
    """The launcher's pre-flight process and the trainer's entry point start without torch."""
    code = (
        "import sys\n"
        "import pmnet.train.preflight, pmnet.train.__main__, pmnet.config\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from pmnet.model import PMNetConfig, PMNetForCausalLM\n"  # the package's names still resolve
        "assert 'torch' in sys.modules and PMNetForCausalLM.__name__ == 'PMNetForCausalLM'\n"
        "print('PREFLIGHT_OK')\n"
    )
    run_fresh_python(code, "PREFLIGHT_OK")
