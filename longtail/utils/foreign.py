"""Read checkpoints of other code bases (the original BalPoE/SADE/RIDE repos) without executing pickled objects.

Their files are ``torch.save``d dicts whose ``config`` entry is a pickled ``parse_config.ConfigParser`` object, so
``torch.load(weights_only=True)`` refuses them and ``weights_only=False`` would run whatever code the pickle names.
:func:`read_foreign_checkpoint` unpickles them with a restricted unpickler instead:

* tensors are rebuilt from the raw storage bytes with public torch APIs (``torch.frombuffer`` + ``as_strided``),
  never through ``torch._utils``; parameters come back as plain tensors;
* plain data (dict, list, tuple, str, numbers, ``collections.OrderedDict``, sets, bytes, torch dtypes, numpy
  scalars and arrays of non-object dtypes) is rebuilt as such;
* every other class or function the pickle names is replaced by an inert :class:`ForeignObject` subclass that only
  records the arguments and state it was given (nothing of the named module is imported or called); the qualified
  names are reported as ``skipped``.

Both torch formats are read: the zip archive (``<name>/data.pkl`` + ``<name>/data/<key>`` storage records, torch >=
1.6) and the legacy stream (magic number, protocol, system info, pickle, storage keys, raw storages).
"""
from __future__ import annotations

import _compat_pickle
import builtins
import collections
import io
import math
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from longtail.utils.errors import CheckpointError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> element dtype (the storage type a tensor's pickle names; UntypedStorage holds bytes)
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}

# builtins that only build plain data
SAFE_BUILTINS: dict[str, Any] = {name: getattr(builtins, name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "complex", "str", "bytes", "bytearray",
    "slice", "range")}


class ForeignObject:
    """Inert stand-in for an object of a class (or the result of a function) that was not unpickled.

    ``qualname`` is ``module.Name``; ``args`` the constructor/call arguments, ``state`` what ``__setstate__`` would
    have received, ``items``/``listitems`` what dict/list-like classes would have been filled with.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "ForeignObject":
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, listitems=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # calls of the stub (REDUCE) only record arguments
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["listitems"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["listitems"].extend(values)

    def __repr__(self) -> str:
        return f"<not unpickled: {self.qualname}>"


class _StorageRef:
    """A storage read from the file: its bytes (filled later for legacy files) and element dtype."""

    def __init__(self, buffer: bytearray | memoryview, dtype: torch.dtype) -> None:
        self.buffer, self.dtype = buffer, dtype

    def elements(self, dtype: torch.dtype) -> torch.Tensor:
        """The whole storage as a 1-D tensor of ``dtype`` sharing the bytes."""
        nbytes = len(self.buffer)
        if nbytes == 0:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(self.buffer, dtype=dtype)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *unused: Any) -> torch.Tensor:
    """Replacement of ``torch._utils._rebuild_tensor(_v2)``: a strided view of the storage's bytes."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("a tensor refers to something that is not a storage record")
    if not (isinstance(storage_offset, int) and _int_tuple(size) and _int_tuple(stride) and len(size) == len(stride)):
        raise pickle.UnpicklingError("malformed tensor metadata (offset/size/stride)")
    if math.prod(size) == 0:
        return torch.empty(tuple(size), dtype=storage.dtype)
    flat = storage.elements(storage.dtype)
    return flat.as_strided(tuple(size), tuple(stride), storage_offset)  # bounds-checked by torch


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, *unused: Any) -> Any:
    """Replacement of ``torch._utils._rebuild_parameter(_with_state)``: the plain tensor."""
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """Replacement of ``torch._tensor._rebuild_from_type_v2`` (tensor subclasses): the plain tensor (the subclass
    itself, ``new_type``, was reported as skipped by find_class unless it is a plain tensor type)."""
    if func in (_rebuild_tensor, _rebuild_parameter) and isinstance(args, tuple):
        return func(*args)
    raise pickle.UnpicklingError("a tensor subclass rebuilt by an unknown function")


def _int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _codecs_encode(text: Any, encoding: Any = "utf-8", *unused: Any) -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes: text -> bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError("unexpected use of _codecs.encode in a checkpoint")
    return text.encode(encoding)


def _numpy_dtype(spec: Any, *unused: Any) -> np.dtype:
    """``numpy.dtype`` from a type string (object dtypes refused: they would hold arbitrary objects)."""
    if not isinstance(spec, str):
        raise pickle.UnpicklingError("numpy dtype from a non-string specification")
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy object arrays are not read")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: one value of ``dtype`` from its bytes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct``: an empty ndarray that the following BUILD fills (numpy's own C code)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are read")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}
_STUBS: dict[str, type] = {}


def _stub_class(qualname: str, skipped: dict[str, None]) -> type:
    """The (cached) inert class standing for ``qualname``; records the name as skipped."""
    skipped[qualname] = None
    if qualname not in _STUBS:
        module, _, name = qualname.rpartition(".")
        _STUBS[qualname] = type(name or qualname, (ForeignObject,),
                                {"qualname": qualname, "__module__": f"foreign:{module}"})
    return _STUBS[qualname]


class _StorageType:
    """What ``torch.<Name>Storage`` stands for in a storage record: just its element dtype."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, STORAGE_DTYPES[name]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds tensors and plain data only; see the module docstring."""

    def __init__(self, stream: io.BufferedIOBase, load_storage: Callable[[tuple], _StorageRef]) -> None:
        super().__init__(stream)
        self.load_storage = load_storage
        self.skipped: dict[str, None] = {}

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python-2 names written by protocol <= 2 pickles
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "builtins" and SAFE_BUILTINS.get(name) is not None:
            return SAFE_BUILTINS[name]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _stub_class(f"{module}.{name}", self.skipped)

    def persistent_load(self, pid: Any) -> Any:  # noqa: D401 - pickle API
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) > 1:  # legacy whole-module pickles: keep the (stub) class
            return pid[1]
        if kind != "storage" or len(pid) < 5 or not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        return self.load_storage(pid)


def _load_zip(path: Path) -> tuple[Any, list[str]]:
    """The torch zip format: ``<prefix>/data.pkl`` plus one raw record per storage."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl inside)")
        pkl = min(pickles, key=len)
        prefix = pkl[: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointError(f"{path} was written on a big-endian machine; only little-endian files are read")
        storages: dict[str, _StorageRef] = {}

        def load_storage(pid: tuple) -> _StorageRef:
            storage_type, key = pid[1], str(pid[2])
            if key not in storages:
                record = f"{prefix}data/{key}"
                try:
                    data = bytearray(archive.read(record))
                except KeyError:
                    raise pickle.UnpicklingError(f"storage record {record} is missing") from None
                storages[key] = _StorageRef(data, storage_type.dtype)
            ref = storages[key]
            return ref if ref.dtype == storage_type.dtype else _StorageRef(ref.buffer, storage_type.dtype)

        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pkl)), load_storage)
        result = unpickler.load()
    return result, sorted(unpickler.skipped)


def _load_legacy(path: Path) -> tuple[Any, list[str]]:
    """The pre-1.6 stream: magic, protocol, sys info, main pickle, storage keys, then each storage's bytes."""
    with open(path, "rb") as handle:
        head = RestrictedUnpickler(handle, _no_storage)
        try:
            magic = head.load()
        except Exception:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch zip archive nor a legacy "
                                  "torch.save stream)") from None
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (a pickle, but without torch.save's "
                                  "magic number)")
        protocol, sys_info = head.load(), head.load()
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported legacy torch.save protocol {protocol!r}")
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError(f"{path} was written on a big-endian machine; only little-endian files are read")
        roots: dict[str, _StorageRef] = {}
        views: dict[str, _StorageRef] = {}

        def load_storage(pid: tuple) -> _StorageRef:
            storage_type, root_key, _location, numel = pid[1:5]
            view_metadata = pid[5] if len(pid) > 5 else None
            dtype = storage_type.dtype
            size = torch.empty(0, dtype=dtype).element_size()
            if not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError("malformed storage record")
            root_key = str(root_key)
            if root_key not in roots:
                roots[root_key] = _StorageRef(bytearray(numel * size), dtype)
            root = roots[root_key]
            if view_metadata is None:
                return root
            view_key, offset, view_size = view_metadata
            if str(view_key) not in views:
                views[str(view_key)] = _StorageRef(memoryview(root.buffer)[offset * size:(offset + view_size) * size],
                                                   dtype)
            return views[str(view_key)]

        body = RestrictedUnpickler(handle, load_storage)
        result = body.load()
        keys = RestrictedUnpickler(handle, _no_storage).load()
        if not isinstance(keys, list):
            raise pickle.UnpicklingError("malformed storage key list")
        for key in keys:
            ref = roots.get(str(key))
            if ref is None:
                raise pickle.UnpicklingError(f"storage {key} is listed but not used")
            (numel,) = struct.unpack("<q", _read_exact(handle, 8))
            nbytes = len(ref.buffer)
            if numel * torch.empty(0, dtype=ref.dtype).element_size() != nbytes:
                raise pickle.UnpicklingError(f"storage {key} has {numel} elements, expected {nbytes} bytes")
            ref.buffer[:] = _read_exact(handle, nbytes)
    return result, sorted(set(head.skipped) | set(body.skipped))


def _no_storage(pid: tuple) -> _StorageRef:
    raise pickle.UnpicklingError("unexpected storage record outside the main pickle")


def _read_exact(handle: io.BufferedIOBase, n: int) -> bytes:
    data = handle.read(n)
    if len(data) != n:
        raise pickle.UnpicklingError("file ends inside a storage (truncated?)")
    return data


def load_foreign_object(path: str | Path) -> tuple[Any, list[str]]:
    """Unpickle a ``torch.save`` file of any origin without executing it: (object, sorted skipped qualnames)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RuntimeError, struct.error, zipfile.BadZipFile, OSError, MemoryError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None


def read_foreign_checkpoint(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Read a checkpoint written by another code base (pickled objects not executed): (the saved dict, sorted 'module.Name' of what was not unpickled).

    The dict keeps tensors and plain data; objects such as the pickled ``config`` are inert
    :class:`ForeignObject` instances. Raises CheckpointError when the file is no PyTorch checkpoint or holds no
    ``state_dict`` mapping of tensors.
    """
    state, skipped = load_foreign_object(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict with a 'state_dict' entry")
    weights = state.get("state_dict")
    if not isinstance(weights, dict):
        found = ", ".join(repr(k) for k in list(state)[:8])
        raise CheckpointError(f"{path} has no 'state_dict' entry (keys: {found}); is it a training checkpoint "
                              "of the code base you meant?")
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return state, skipped
