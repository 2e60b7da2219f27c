"""mosaicml-streaming's dataset classes without the package's eager imports, and its loader.

``import streaming`` runs ``streaming/__init__.py``, which imports the text, vision and
multimodal dataset zoos (transformers' tokenizer registry, scikit-learn, torchvision) and
``streaming.base``'s ``StreamingDataLoader``, which imports transformers for two isinstance
checks. None of it is used here, and it is most of a training rank's import time (3.5 s of 5 s
on a CPU machine, more on a GPU host; ``benchmarks/import_time.py``), paid by every rank on
every restart.

:func:`_import_core` imports the modules this project uses (``streaming.base.dataset``,
``.stream``, ``.world``) with the two package ``__init__`` files deferred: the package objects
are created from their specs but not executed until someone reads an attribute the ``__init__``
would have set (``streaming.MDSWriter``, ``from streaming import text``), at which point the
real ``__init__`` runs once, so other code that imports ``streaming`` keeps working. When
``streaming`` is already imported, nothing is deferred.

:class:`StreamingDataLoader` is streaming 0.13's loader of the same name (the resume protocol:
count this rank's yielded samples, ``state_dict`` = the dataset's state at that count times the
world size) for dict and tensor batches; ``tests/data/test_streaming_core.py`` compares it with
streaming's own class.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader

__all__ = ["Stream", "StreamingDataLoader", "StreamingDataset", "World"]


def _defer_package(name: str) -> None:
    """Put package ``name`` in ``sys.modules`` without running its ``__init__`` (run on first use)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a regular package: import it the normal way
    module = importlib.util.module_from_spec(spec)

    def _run_init(attr: str) -> Any:
        # PEP 562: called only for names the module lacks. A submodule (``from streaming.base
        # import distributed``, as streaming's own modules do) is imported as such; any other
        # name runs the real __init__ once, which sets it.
        if attr.startswith("__"):
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        del module.__dict__["__getattr__"]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return getattr(module, attr)

    module.__getattr__ = _run_init  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _import_core() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    _defer_package("streaming")
    _defer_package("streaming.base")
    return (
        importlib.import_module("streaming.base.dataset"),
        importlib.import_module("streaming.base.stream"),
        importlib.import_module("streaming.base.world"),
    )


_dataset, _stream, _world = _import_core()
StreamingDataset = _dataset.StreamingDataset
Stream = _stream.Stream
World = _world.World


class StreamingDataLoader(DataLoader):
    """A DataLoader that counts the samples it yielded on this rank, for exact resume.

    ``state_dict()`` is the dataset's state after ``num_samples_yielded * world size`` samples of
    the current epoch (divided by ``replication`` when set); ``load_state_dict`` hands a state to
    the dataset, which the next ``iter()`` continues from. Batches are dicts (the first value's
    length counts), tensors, or sequences (the first element's length counts).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_samples_yielded = 0

    @staticmethod
    def _batch_size(batch: Any) -> int:
        if isinstance(batch, dict):
            for value in batch.values():
                return len(value)
            raise ValueError("batch is empty")
        if isinstance(batch, Tensor):
            return len(batch)
        return len(batch[0])

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # a generator, as streaming's
        self.num_samples_yielded = 0
        for batch in super().__iter__():
            self.num_samples_yielded += self._batch_size(batch)
            yield batch

    def state_dict(self) -> dict[str, Any] | None:
        """The dataset's resume state at this rank's position (called on rank 0, not in workers)."""
        if not isinstance(self.dataset, StreamingDataset):
            return None
        num_samples = self.num_samples_yielded * World.detect().num_ranks
        if self.dataset.replication is not None:
            num_samples //= self.dataset.replication  # replicated ranks share sample ids
        return self.dataset.state_dict(num_samples, False)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Give the dataset a saved state; the next ``iter()`` continues from it (every rank)."""
        if isinstance(self.dataset, StreamingDataset):
            self.dataset.load_state_dict(obj)

    def __del__(self) -> None:
        if getattr(self, "_iterator", None) is not None:
            self._iterator._shutdown_workers()  # type: ignore[union-attr]
