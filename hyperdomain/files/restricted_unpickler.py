"""Restricted loading of foreign checkpoints: tensors and plain data only, never pickled code.

Two readers:

- :func:`load_torch_file` for files written by ``torch.save`` (zip and legacy formats). It is
  ``torch.load(weights_only=True)``, PyTorch's own audited restricted unpickler (it vets every
  opcode and global, and it alone knows the zip/legacy storage layouts), with
  ``argparse.Namespace`` added to its allow-list because rosinality's checkpoints carry one under
  ``"args"``; namespaces come back as plain dicts.
- :func:`load_nvidia_pickle` for NVIDIA's raw network pickles (StyleGAN2-ADA / StyleGAN3 code
  bases). Their ``torch_utils.persistence`` objects embed the defining module's source, which
  NVIDIA's loader executes; ours maps every referenced global to a small safe stand-in, keeps each
  network's *state* (parameters, buffers, sub-networks, init kwargs) and never looks at the source.

Anything else a file references is refused by name with a one-line :class:`HyperdomainError`.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import HyperdomainError

__all__ = ["load_torch_file", "load_nvidia_pickle", "sniff", "PERSISTENT_CLASS_KEY"]

# The key under which a reconstructed NVIDIA network state records its class name.
PERSISTENT_CLASS_KEY = "class_name"

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy format starts with a pickled int: this magic number (protocol 2, LONG1).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PREFIX = b"\x80\x02\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")

# Every error a corrupt or truncated stream can raise from the unpicklers or torch's readers.
_CORRUPT_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    struct.error,
    RuntimeError,
    zipfile.BadZipFile,
    OverflowError,
    MemoryError,
)


class _Refused(Exception):
    """Raised inside an unpickler when a stream references a global we do not allow."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _corrupt(path: Path, e: BaseException) -> HyperdomainError:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return HyperdomainError(f"{path}: truncated or corrupt checkpoint ({detail[:200]})")


def _refused(path: Path, what: str) -> HyperdomainError:
    return HyperdomainError(
        f"{path}: refused to load '{what}': the file references code or objects beyond tensors "
        f"and plain data (an ordinary unpickler would run it)"
    )


def _open_checked(path: str | os.PathLike) -> tuple[Path, bytes]:
    """Return ``path`` and its first bytes, with one-line errors for missing or empty files."""
    path = Path(path)
    if not path.is_file():
        raise HyperdomainError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as e:
        raise HyperdomainError(f"{path}: cannot read ({e.strerror or e})") from None
    if not head:
        raise HyperdomainError(f"{path}: truncated or corrupt checkpoint (empty file)")
    return path, head


def sniff(path: str | os.PathLike) -> str:
    """Classify a checkpoint by its first bytes: ``"torch-zip"``, ``"torch-legacy"``, ``"pickle"``.

    Raises a one-line error for a missing, empty or unrecognised file.
    """
    path, head = _open_checked(path)
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if head.startswith(_LEGACY_PREFIX):
        return "torch-legacy"
    if head[:1] == b"\x80" and len(head) >= 2 and 2 <= head[1] <= 5:
        return "pickle"
    raise HyperdomainError(
        f"{path}: truncated or corrupt checkpoint (not a torch.save file or a pickle; "
        f"starts with {head[:8]!r})"
    )


# --------------------------------------------------------------------------- torch.save files
def load_torch_file(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) keeping tensors and plain data only.

    Tensors land on the CPU. ``argparse.Namespace`` objects become plain dicts. A file that
    references any other class or function raises :class:`HyperdomainError` naming it.
    """
    kind = sniff(path)
    path = Path(path)
    if kind == "pickle":
        raise HyperdomainError(
            f"{path}: a raw pickle, not a torch.save file (NVIDIA network pickles are read with "
            f"load_nvidia_pickle)"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        return _plain(obj)
    except pickle.UnpicklingError as e:
        # torch names the offending global as "GLOBAL module.name" in its (long) message.
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m:
            raise _refused(path, m.group(1)) from None
        raise _corrupt(path, e) from None
    except _CORRUPT_ERRORS as e:
        raise _corrupt(path, e) from None


# Checkpoints nest a few levels (a dict of state dicts of tensors); a crafted stream can nest
# containers a hundred thousand deep, which the unpicklers build without recursing but a walk
# over the result would not survive. Past this depth the file is refused as corrupt.
MAX_NESTING = 100


def _check_depth(depth: int) -> None:
    if depth > MAX_NESTING:
        raise ValueError(f"containers nested more than {MAX_NESTING} deep")


def _plain(obj: Any, depth: int = 0) -> Any:
    """Namespaces to dicts, recursively through the plain containers (others pass through)."""
    _check_depth(depth)
    if isinstance(obj, argparse.Namespace):
        return {k: _plain(v, depth + 1) for k, v in vars(obj).items()}
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _plain(v, depth + 1)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        return tuple(_plain(v, depth + 1) for v in obj)
    return obj


# --------------------------------------------------------------------------- NVIDIA pickles
class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``; turned into a plain dict after loading."""

    def __setstate__(self, state: Any) -> None:  # an EasyDict keeps its data as items
        if isinstance(state, dict):
            self.update(state)


class _DTypeSpec:
    """Stand-in for a pickled ``numpy.dtype``: records the type code and byte order only."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(code, str) or not re.fullmatch(r"[<>=|]?[biufc]\d{1,2}|\?|[bBhHiIlLqQefdgFD]", code):
            raise _Refused(f"numpy.dtype({code!r})")
        self.code = code
        self.byteorder = ""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1] if state[1] in "<>" else ""

    def to_numpy(self) -> np.dtype:
        return np.dtype(self.byteorder + self.code.lstrip("<>=|"))


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    """Stand-in for ``numpy.core.multiarray.scalar``: a Python number from raw bytes."""
    if not isinstance(dtype, _DTypeSpec) or not isinstance(data, bytes):
        raise _Refused("numpy.core.multiarray.scalar (with a non-numeric dtype)")
    dt = dtype.to_numpy()
    if len(data) != dt.itemsize:
        raise ValueError(f"numpy scalar of {dt} has {len(data)} bytes")
    return np.frombuffer(data, dtype=dt, count=1)[0].item()


def _load_from_bytes(b: Any) -> Any:
    """Stand-in for ``torch.storage._load_from_bytes``: a nested torch.save blob, read weights-only."""
    if not isinstance(b, (bytes, bytearray)):
        raise TypeError("tensor storage blob is not bytes")
    return torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise TypeError("tensor storage is not a storage")
    if backward_hooks:
        raise _Refused("torch._utils._rebuild_tensor_v2 (with backward hooks)")
    return torch._utils._rebuild_tensor_v2(
        storage, int(storage_offset), tuple(size), tuple(stride), False, collections.OrderedDict()
    )


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise TypeError("parameter data is not a tensor")
    if backward_hooks:
        raise _Refused("torch._utils._rebuild_parameter (with backward hooks)")
    return data  # a parameter is kept as its plain tensor


def _reconstruct_persistent_obj(meta: Any) -> dict:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``.

    Returns the network's state only: ``class_name``, ``_parameters``, ``_buffers``, ``_modules``
    (each child such a state), ``init_args``, ``init_kwargs`` and ``attributes`` (the other public
    plain attributes, e.g. ``conv_clamp``). ``meta["module_src"]`` is deliberately never read.
    """
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise ValueError("persistent object meta is not a class record")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise ValueError("persistent object state is not a dict")
    return {
        PERSISTENT_CLASS_KEY: str(meta.get("class_name")),
        "_parameters": dict(state.get("_parameters") or {}),
        "_buffers": dict(state.get("_buffers") or {}),
        "_modules": dict(state.get("_modules") or {}),
        "init_args": tuple(state.get("_init_args") or ()),
        "init_kwargs": dict(state.get("_init_kwargs") or {}),
        "attributes": {k: v for k, v in state.items() if not k.startswith("_")},
    }


# module.name -> the safe object the stream gets in its place. Nothing else resolves.
_NVIDIA_GLOBALS: dict[str, Callable[..., Any] | type] = {
    "torch_utils.persistence._reconstruct_persistent_obj": _reconstruct_persistent_obj,
    "dnnlib.util.EasyDict": _EasyDict,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "numpy.dtype": _DTypeSpec,
    "numpy.core.multiarray.scalar": _np_scalar,
    "numpy._core.multiarray.scalar": _np_scalar,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.storage._load_from_bytes": _load_from_bytes,
}


class _NvidiaUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _NVIDIA_GLOBALS.get(f"{module}.{name}")
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"persistent id {str(pid)[:40]}")


def load_nvidia_pickle(path: str | os.PathLike) -> Any:
    """Load an NVIDIA network pickle as plain data, never executing its embedded source.

    Each persistent network becomes a dict (see ``_reconstruct_persistent_obj``); ``EasyDict``
    becomes ``dict``; numpy scalars become Python numbers; tensors land on the CPU.
    """
    path, _ = _open_checked(path)
    try:
        with open(path, "rb") as f:
            obj = _NvidiaUnpickler(f).load()
        return _finish_nvidia(obj)
    except _Refused as e:
        raise _refused(path, e.what) from None
    except _CORRUPT_ERRORS as e:
        raise _corrupt(path, e) from None


def _finish_nvidia(obj: Any, depth: int = 0) -> Any:
    _check_depth(depth)
    if isinstance(obj, _DTypeSpec):
        return obj.to_numpy()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _finish_nvidia(v, depth + 1)) for k, v in obj.items())
    if isinstance(obj, dict):  # includes _EasyDict
        return {k: _finish_nvidia(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finish_nvidia(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finish_nvidia(v, depth + 1) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_finish_nvidia(v, depth + 1) for v in obj)
    return obj


# --------------------------------------------------------------------------- OmegaConf configs
# The HyperDomainNet authors' hypernetwork checkpoints keep their ``mapper_config`` as a pickled
# OmegaConf ``DictConfig`` (with its parent, the whole training config). Pickle rebuilds one with
# NEWOBJ (no constructor runs) and BUILD (its ``__dict__``: ``_content``, ``_metadata``,
# ``_parent``); these inert stand-ins only keep that state, and ``_omega_plain`` reads the plain
# data out of it. No OmegaConf code is imported or run.
class _OmegaObject:
    """Inert stand-in for a pickled OmegaConf object; keeps the state dict BUILD hands it."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slot state)
            state = state[0]
        self.state = state if isinstance(state, dict) else {}


class _OmegaDict(_OmegaObject):
    """``omegaconf.DictConfig``: ``_content`` maps keys to nodes (or is None / a ``???`` string)."""


class _OmegaList(_OmegaObject):
    """``omegaconf.ListConfig``: ``_content`` is a list of nodes."""


class _OmegaValue(_OmegaObject):
    """A value node (``AnyNode``, ``StringNode``, ...): the value is ``_val``."""


class _OmegaMetadata(_OmegaObject):
    """``Metadata`` / ``ContainerMetadata``: typing information only, dropped."""


class _TypeRef:
    """A type named in OmegaConf metadata (``ref_type``, ``object_type``): kept as a name only."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<type {self.name}>"


def _omega_defaultdict(*args: Any) -> dict:
    """``collections.defaultdict(dict)``: OmegaConf's resolver cache; its factory is not kept."""
    return {}


_OMEGACONF_GLOBALS: list[tuple[Any, str]] = [
    (_OmegaDict, "omegaconf.dictconfig.DictConfig"),
    (_OmegaList, "omegaconf.listconfig.ListConfig"),
    *[(_OmegaValue, f"omegaconf.nodes.{n}")
      for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode")],
    (_OmegaMetadata, "omegaconf.base.Metadata"),
    (_OmegaMetadata, "omegaconf.base.ContainerMetadata"),
    (_omega_defaultdict, "collections.defaultdict"),
    *[(_TypeRef(n), n) for n in ("typing.Any", "typing.Dict", "typing.List", "builtins.dict", "builtins.list",
                                 "builtins.int", "builtins.float", "builtins.str", "builtins.bool",
                                 "builtins.bytes", "builtins.object")],
]


def _omega_plain(obj: Any, depth: int = 0) -> Any:
    """OmegaConf stand-ins to plain dicts, lists and values (their ``_parent`` is not followed)."""
    _check_depth(depth)
    if isinstance(obj, (_OmegaDict, _OmegaList)):
        content = obj.state.get("_content")
        if isinstance(content, dict):
            return {k: _omega_plain(v, depth + 1) for k, v in content.items()}
        if isinstance(content, list):
            return [_omega_plain(v, depth + 1) for v in content]
        return content if content is None or isinstance(content, str) else None  # None, "???", "${...}"
    if isinstance(obj, _OmegaValue):
        return _omega_plain(obj.state.get("_val"), depth + 1)
    if isinstance(obj, (_OmegaMetadata, _TypeRef)):
        return None
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _omega_plain(v, depth + 1)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _omega_plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_omega_plain(v, depth + 1) for v in obj]
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        return tuple(_omega_plain(v, depth + 1) for v in obj)
    return obj


def load_torch_file_omegaconf(path: str | os.PathLike) -> Any:
    """:func:`load_torch_file` that also reads pickled OmegaConf configs, as plain dicts and lists.

    Only OmegaConf's containers, value nodes and metadata (and the few types its metadata names)
    are allowed beyond :func:`load_torch_file`'s tensors and plain data; anything else is refused
    by name as there.
    """
    with torch.serialization.safe_globals(_OMEGACONF_GLOBALS):
        obj = load_torch_file(path)
    try:
        return _omega_plain(obj)
    except ValueError as e:
        raise _corrupt(Path(path), e) from None
