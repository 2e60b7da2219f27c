"""Read PyTorch ``.pt`` files (the zip format DeepSpeed writes) without torch and without running code.

Why: the converter must stay within about one fp32 model copy of RAM, and importing the
CUDA build of torch alone costs ~650 MB of resident memory (more than a whole 119M model
in fp32). This reader needs only the standard library and numpy:

* ``data.pkl`` is unpickled by a restricted unpickler: containers, ``torch.Size``,
  tensors (as :class:`TensorRef`, a lazy reference: storage entry, dtype, offset, shape,
  stride) and a few numpy scalars are allowed; the DeepSpeed bookkeeping classes named in
  :data:`DEEPSPEED_CLASSES` become inert :class:`Stub` objects; anything else is refused in
  one line (no code runs).

:data:`ALLOWED_GLOBALS` is the project's one allowlist of pickle globals a checkpoint may
name. :mod:`pmnet.checkpoint.safeload` enforces the same list on every ``torch.load`` DeepSpeed
makes (``weights_only=True`` plus these classes), and :func:`check_pickle` is the scan every
loader runs before DeepSpeed touches a file.
* A tensor's bytes are read on demand straight from the uncompressed zip member with
  ``readinto`` (one copy, nothing cached), so peak memory is the tensor being read.
"""

from __future__ import annotations

import collections
import importlib
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ALLOWED_GLOBALS",
    "DEEPSPEED_CLASSES",
    "DTYPES",
    "PtFile",
    "PtReadError",
    "Stub",
    "TensorRef",
    "check_pickle",
    "fp32_to_bf16_bits",
]

# torch storage class name -> (safetensors dtype name, numpy dtype for the raw bytes)
DTYPES: dict[str, tuple[str, Any]] = {
    "FloatStorage": ("F32", np.float32),
    "DoubleStorage": ("F64", np.float64),
    "HalfStorage": ("F16", np.float16),
    "BFloat16Storage": ("BF16", np.uint16),  # raw bits; numpy has no bfloat16
    "LongStorage": ("I64", np.int64),
    "IntStorage": ("I32", np.int32),
    "ShortStorage": ("I16", np.int16),
    "CharStorage": ("I8", np.int8),
    "ByteStorage": ("U8", np.uint8),
    "BoolStorage": ("BOOL", np.bool_),
}


class PtReadError(ValueError):
    """A .pt file that cannot be read safely (one-line message naming the file)."""


class Stub:
    """Inert stand-in for a pickled non-tensor class (DeepSpeed's loss scaler, enums, fragment addresses)."""

    qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname} {self.args or self.state}>"


@dataclass
class TensorRef:
    """A tensor inside a .pt file: where its bytes are and how to view them (read with :meth:`PtFile.read`)."""

    key: str
    storage: str
    storage_numel: int
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> str:
        """safetensors dtype name (F32, BF16, ...)."""
        return DTYPES[self.storage][0]

    @property
    def itemsize(self) -> int:
        return np.dtype(DTYPES[self.storage][1]).itemsize

    @property
    def contiguous(self) -> bool:
        expect, acc = [], 1
        for s in reversed(self.shape):
            expect.append(acc)
            acc *= s
        return all(sz == 1 or st == e for sz, st, e in zip(self.shape, self.stride, reversed(expect)))


_SAFE = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
_TORCH_DTYPES = ("float32", "bfloat16", "float16", "float64", "int64", "int32", "uint8", "bool")
_TORCH_REBUILD = (
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
)
_NUMPY = (
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
)

# Every non-torch class DeepSpeed 0.19.8 pickles into a training checkpoint (ZeRO 0-3, fp32 /
# bf16 / fp16, and the universal checkpoints of ds_to_universal), found by listing the globals
# of real checkpoints of each kind. Anything else naming ``deepspeed.*`` is refused like any
# other unknown global: a module path alone says nothing about what calling it does.
DEEPSPEED_CLASSES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)

ALLOWED_GLOBALS: frozenset[str] = frozenset(
    [f"{m}.{n}" for m, n in _SAFE]
    + [f"{m}.{n}" for m, n in _TORCH_REBUILD]
    + [f"torch.{n}" for n in DTYPES]
    + [f"torch.{n}" for n in _TORCH_DTYPES]
    + ["torch.Tensor", "torch.nn.Parameter", "torch.device"]
    + [f"{m}.{n}" for m, n in _NUMPY]
    + list(DEEPSPEED_CLASSES)
)
"""Every global (``module.name``) a checkpoint pickle may name; the one allowlist of the project."""


def _numpy_global(module: str, name: str) -> Any:
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
        try:  # numpy's stubs do not declare the pickling helper `scalar`: looked up by name
            return importlib.import_module("numpy._core.multiarray").scalar
        except ImportError:  # numpy < 2
            return importlib.import_module("numpy.core.multiarray").scalar
    if module == "numpy" and name == "dtype":
        return np.dtype
    return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: Any, path: Path) -> None:
        super().__init__(fh)
        self.path = path
        self.stubs: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" not in ALLOWED_GLOBALS:
            raise PtReadError(
                f"{self.path}: refusing to unpickle {module}.{name} (not in the checkpoint allowlist; no code was run)"
            )
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad=False, hooks=None: data
        if module == "torch._utils" and name == "_rebuild_parameter_with_state":
            return lambda data, requires_grad=False, hooks=None, state=None: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return lambda func, _type, args, _state: func(*args)
        if module == "torch" and name.endswith("Storage") and name in DTYPES:
            return name
        if module == "torch" and name in _TORCH_DTYPES:
            return f"torch.{name}"
        if module == "torch" and name in ("Tensor", "nn.Parameter"):
            return "torch.Tensor"  # only ever the 'type' argument of _rebuild_from_type_v2
        if module == "torch" and name == "device":
            return lambda *a: ("device", *a)
        np_obj = _numpy_global(module, name)
        if np_obj is not None:
            return np_obj
        if f"{module}.{name}" in DEEPSPEED_CLASSES:
            qual = f"{module}.{name}"
            if qual not in self.stubs:
                self.stubs[qual] = type(name, (Stub,), {"qualname": qual})
            return self.stubs[qual]
        raise PtReadError(f"{self.path}: refusing to unpickle {module}.{name} (not a tensor container)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise PtReadError(f"{self.path}: unknown persistent id {pid!r}")
        _, storage, key, _location, numel = pid
        if storage not in DTYPES:
            raise PtReadError(f"{self.path}: unsupported storage type {storage!r}")
        return ("storage", storage, str(key), int(numel))


def check_pickle(path: str | Path) -> None:
    """Unpickle a .pt file's ``data.pkl`` with the restricted unpickler only (no tensor data read).

    Raises :class:`PtReadError` (one line naming the file) for a global outside
    :data:`ALLOWED_GLOBALS`, a file that is not a torch zip, or a broken pickle. Cheap: the
    pickle holds only tensor metadata, so a multi-GB optimizer file is checked in milliseconds.
    """
    PtFile(path).close()


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_rest: Any) -> TensorRef:
    _, kind, key, numel = storage
    return TensorRef(
        key=key, storage=kind, storage_numel=numel, offset=int(offset), shape=tuple(size), stride=tuple(stride)
    )


class PtFile:
    """One .pt zip file: ``obj`` is the unpickled tree (tensors as TensorRef); :meth:`read` fetches bytes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
            names = self._zip.namelist()
        except (OSError, zipfile.BadZipFile) as err:
            raise PtReadError(f"{self.path}: not a readable torch zip file ({err})") from None
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise PtReadError(f"{self.path}: no data.pkl inside (not a torch checkpoint)")
        self._prefix = pkl[: -len("data.pkl")]
        self._members = {n: self._zip.getinfo(n) for n in names}
        self._offsets: dict[str, int] = {}
        self._fh = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        try:
            with self._zip.open(pkl) as f:
                self.obj = _Unpickler(f, self.path).load()
        except PtReadError:
            raise
        except Exception as err:
            raise PtReadError(f"{self.path}: corrupt pickle ({type(err).__name__}: {err})") from None

    def close(self) -> None:
        self._fh.close()
        self._zip.close()

    def __enter__(self) -> PtFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _data_start(self, storage_key: str) -> tuple[int, int]:
        name = f"{self._prefix}data/{storage_key}"
        info = self._members.get(name)
        if info is None:
            raise PtReadError(f"{self.path}: tensor storage {storage_key} missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise PtReadError(f"{self.path}: storage {storage_key} is compressed (unsupported)")
        if name not in self._offsets:
            self._fh.seek(info.header_offset)
            header = self._fh.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise PtReadError(f"{self.path}: bad zip header for storage {storage_key}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            self._offsets[name] = info.header_offset + 30 + name_len + extra_len
        return self._offsets[name], info.file_size

    def read_range(self, ref: TensorRef, start: int, out: np.ndarray) -> None:
        """Fill ``out`` (1-D, the ref's raw dtype) with flat elements ``start .. start+len(out)`` of a
        contiguous tensor (a view of its storage)."""
        base, size = self._data_start(ref.key)
        item = ref.itemsize
        first = (ref.offset + start) * item
        nbytes = out.size * item
        if first + nbytes > size:
            raise PtReadError(f"{self.path}: storage {ref.storage}  is shorter than its tensors (truncated file)")
        self._fh.seek(base + first)
        view = out.data.cast("B")
        got = self._fh.readinto(view)
        if got != nbytes:
            raise PtReadError(f"{self.path}: short read in storage {ref.storage} (truncated file)")

    def read(self, ref: TensorRef) -> np.ndarray:
        """The whole tensor as a numpy array of its raw dtype (bf16 as uint16 bits)."""
        if not ref.contiguous:
            raise PtReadError(f"{self.path}: non-contiguous tensor {ref.key or ref.storage} (unsupported)")
        out = np.empty(ref.numel, dtype=DTYPES[ref.storage][1])
        self.read_range(ref, 0, out)
        return out.reshape(ref.shape)


def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even, like torch), returned as uint16 bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan.reshape(rounded.shape)] = np.uint16(0x7FC0)
    return rounded
