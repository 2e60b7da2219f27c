"""data_pipeline.streaming_core: streaming's classes without its dataset zoos, and its loader copy.

The copy of ``StreamingDataLoader`` is compared with streaming's own class on the same shards:
the same samples in the same order, the same resume states, and a state saved by one resumes
the other exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.data.helpers import run_fresh_python
from tests.data.loader_worker import read_run
from tests.data.test_dataset import _fresh_copy, data_cfg, shard_one_doc_per_sample

HEAVY = ("transformers", "torchvision", "sklearn", "streaming.text", "streaming.vision", "streaming.base.dataloader")


def test_training_data_path_skips_streaming_zoos_and_streaming_still_works() -> None:
    code = (
        "import sys\n"
        "import data_pipeline.dataset as d\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, f'importing data_pipeline.dataset loaded {heavy}'\n"
        "import streaming\n"  # a later user of the whole package gets all of it
        "from streaming import MDSWriter, StreamingDataLoader, StreamingDataset\n"
        "assert StreamingDataset is d.StreamingDataset and streaming.Stream is d.Stream\n"
        "assert streaming.text.__name__ == 'streaming.text' and MDSWriter.__name__ == 'MDSWriter'\n"
        "assert issubclass(StreamingDataLoader, __import__('torch').utils.data.DataLoader)\n"
        "try:\n"
        "    streaming.no_such_name\n"
        "except AttributeError:\n"
        "    print('CORE_OK')\n"
    )
    run_fresh_python(code, "CORE_OK")


@pytest.mark.timeout(600)
def test_loader_matches_streaming_loader(shared_data: Path, tmp_path: Path) -> None:
    """One rank, 2 workers: ours and streaming's give the same batches, states and resumes."""
    out = shard_one_doc_per_sample(shared_data / "books" / "pg10146.txt", tmp_path / "ds", 48)
    copies = iter(_fresh_copy(out, tmp_path / f"copy{i}") for i in range(5))

    def run(reference: bool, **kw: Any) -> dict[str, Any]:
        # streaming refuses two live datasets on one directory: each run reads its own copy
        spec = {"data": data_cfg(next(copies), num_workers=2, shuffle=True), "batch": 4, **kw}
        result = read_run({**spec, "reference_loader": reference})
        result.pop("shm_prefix")
        return result

    ours_state, ref_state = tmp_path / "ours.json", tmp_path / "ref.json"
    ours = run(False, max_batches=5, save_state=str(ours_state))
    ref = run(True, max_batches=5, save_state=str(ref_state))
    assert ours == ref and len(ours["passes"][0]) == 20
    assert json.loads(ours_state.read_text())["sample_in_epoch"] == 20
    assert ours_state.read_text() == ref_state.read_text()
    # a state saved through ours resumes streaming's loader where ours resumes
    ours_resumed = run(False, epochs=2, load_state=str(ours_state))
    ref_resumed = run(True, epochs=2, load_state=str(ours_state))
    assert ours_resumed == ref_resumed
    assert len(ours_resumed["passes"][0]) == 48 - 20 and len(ours_resumed["passes"][1]) == 48
