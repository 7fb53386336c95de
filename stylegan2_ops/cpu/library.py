"""The C++ CPU kernels (``csrc/winograd_cpu.cpp``, ``fir_cpu.cpp``, ``act_cpu.cpp``), loaded with ctypes.

A plain shared library without torch headers, compiled on first use in a few seconds and cached
like the CUDA build (``_build.build_cpu_library``). It only speeds things up: where it cannot be
built ``available()`` is False and the callers run their tensor-op paths, after one warning per
process (never an error, strict mode or not); ``stylegan2_ops.status()["cpu_library"]`` says why.

``csrc/cpu_kernels.h`` declares every exported function and is the one source of their
signatures: ``parse_header`` reads it, the ctypes argtypes come from it, and each function has one
wrapper here (``hd_wino_input``, ...) whose parameters are the prototype's, in order, with the
annotation of the C type (checked when the library loads, and by the tests). Each call checks
its arguments against the prototype: a ``float*`` or ``const float*`` takes a contiguous float32
CPU tensor (``None`` only where the header marks it ``HD_OPTIONAL``: ``hd_wino_input``'s
``scale`` and ``hd_demod_bias_lrelu``'s ``add``), an ``int64_t`` or ``int`` a Python int and a
``float`` a Python float; anything else is a ValueError naming the function and the parameter.
A nonzero return (arguments outside what the function supports) is a RuntimeError naming it.
"""
from __future__ import annotations

import ctypes
import functools
import inspect
import re
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import torch

from .. import _build

HEADER = _build.CSRC / "cpu_kernels.h"


class Param(NamedTuple):
    name: str
    ctype: str  # one of C_TYPES
    optional: bool  # a pointer that may be NULL (None from Python)


class Prototype(NamedTuple):
    name: str
    restype: str
    params: tuple[Param, ...]


C_TYPES = {"const float*": ctypes.c_void_p, "float*": ctypes.c_void_p, "int64_t": ctypes.c_int64,
           "int": ctypes.c_int, "float": ctypes.c_float}
RESTYPES = {"int": ctypes.c_int}
# The annotation a wrapper's parameter carries for each C type (strings: `from __future__ import annotations`)
ANNOTATIONS = {"const float*": "torch.Tensor", "float*": "torch.Tensor", "int64_t": "int", "int": "int",
               "float": "float"}
_INT_BITS = {"int64_t": 64, "int": 32}
_DIRECTIVES = ("#pragma once", "#include <stdint.h>", "#define HD_OPTIONAL", "#ifdef __cplusplus", "#endif")


def parse_header(text: str, where: str = "cpu_kernels.h") -> dict[str, Prototype]:
    """The prototypes of a header in cpu_kernels.h's restricted style (see its top comment),
    by name; a ValueError for anything else in it."""
    lines = []
    for line in re.sub(r"//[^\n]*", "", text).splitlines():
        s = " ".join(line.split())
        if s.startswith("#") and s not in _DIRECTIVES:
            raise ValueError(f"{where}: unsupported preprocessor line {s!r}")
        if s and not s.startswith("#"):
            lines.append(s)
    m = re.fullmatch(r'extern "C" \{(.*)\}', " ".join(lines))
    if m is None:
        raise ValueError(f'{where}: expected the declarations inside one extern "C" {{ ... }} block')
    *decls, tail = m.group(1).split(";")
    if tail.strip():
        raise ValueError(f"{where}: {tail.strip()!r} does not end with ';'")
    out: dict[str, Prototype] = {}
    for decl in decls:
        d = re.fullmatch(r"\s*(int)\s+(hd_\w+)\s*\(([^()]*)\)\s*", decl)
        if d is None:
            raise ValueError(f"{where}: cannot parse {decl.strip()!r} (expected 'int hd_name(type name, ...)')")
        restype, name, params = d.groups()
        if name in out:
            raise ValueError(f"{where}: {name} is declared twice")
        out[name] = Prototype(name, restype, tuple(_parse_param(name, p, where) for p in params.split(",")))
        if len({p.name for p in out[name].params}) != len(out[name].params):
            raise ValueError(f"{where}: {name} has two parameters of one name")
    if not out:
        raise ValueError(f"{where}: no declarations")
    return out


def _parse_param(function: str, text: str, where: str) -> Param:
    tokens = re.findall(r"\w+|\*", text)
    optional = bool(tokens) and tokens[0] == "HD_OPTIONAL"
    ctype = re.sub(r" \*", "*", " ".join(tokens[optional:-1]))
    name = tokens[-1] if tokens else ""
    if (not re.fullmatch(r"[\w\s*]+", text) or ctype not in C_TYPES or not name.isidentifier()
            or name in ("HD_OPTIONAL", "const", "float", "int", "int64_t") or (optional and not ctype.endswith("*"))):
        raise ValueError(f"{where}: cannot parse parameter {text.strip()!r} of {function} (expected one of "
                         f"{', '.join(C_TYPES)} and a name, HD_OPTIONAL before a pointer)")
    return Param(name, ctype, optional)


@functools.lru_cache(maxsize=None)
def prototypes() -> Mapping[str, Prototype]:
    """The prototypes of ``csrc/cpu_kernels.h``, by name (read once, read-only)."""
    return MappingProxyType(parse_header(HEADER.read_text(), where=str(HEADER.name)))


def wrappers() -> dict[str, Callable]:
    """This module's wrappers of C functions (its ``hd_*`` functions), by name."""
    return {n: f for n, f in globals().items() if n.startswith("hd_") and callable(f)}


def wrapper_problems(proto: Prototype, fn: Callable | None) -> list[str]:
    """How the wrapper ``fn`` differs from ``proto`` (empty when it matches): the parameters'
    names, order, kinds (positional, no defaults) and annotations, and a None return."""
    if fn is None:
        return [f"{proto.name} has no wrapper in cpu_library.py"]
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    names, want = [p.name for p in params], [p.name for p in proto.params]
    if names != want:
        return [f"{proto.name}: the wrapper's parameters {names} are not the prototype's {want}"]
    problems = []
    for p, c in zip(params, proto.params):
        annotation = ANNOTATIONS[c.ctype] + (" | None" if c.optional else "")
        if p.kind is not p.POSITIONAL_OR_KEYWORD or p.default is not p.empty:
            problems.append(f"{proto.name}: parameter {p.name} must be a plain positional one without a default")
        if p.annotation != annotation:
            problems.append(f"{proto.name}: parameter {p.name} ({'HD_OPTIONAL ' * c.optional}{c.ctype}) is "
                            f"annotated {p.annotation!r}, expected {annotation!r}")
    if sig.return_annotation != "None":
        problems.append(f"{proto.name}: the wrapper must be annotated '-> None', not {sig.return_annotation!r}")
    return problems


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets the ctypes signature of every function in ``lib`` from its prototype; raises if
    ``lib`` lacks one or a wrapper disagrees with its prototype (then the library is unavailable)."""
    protos, fns = prototypes(), wrappers()
    problems = [p for proto in protos.values() for p in wrapper_problems(proto, fns.get(proto.name))]
    problems += [f"{n} has no prototype in {HEADER.name}" for n in fns if n not in protos]
    if problems:
        raise RuntimeError(f"cpu_library.py disagrees with {HEADER.name}: {problems[0]}")
    for proto in protos.values():
        f = getattr(lib, proto.name)
        f.restype = RESTYPES[proto.restype]
        f.argtypes = [C_TYPES[p.ctype] for p in proto.params]
    return lib


def _load():
    lib, info = _build.build_cpu_library()
    return bind(lib), info


LIBRARY = _build.ExtensionLoader(_load, functions=(), what="CPU kernel library",
                                 fallback="using the torch paths", honours_strict=False)


def available() -> bool:
    return LIBRARY.get() is not None


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"{v.dtype} {list(v.shape)} on {v.device}" + ("" if v.is_contiguous() else ", not contiguous")
    return f"{type(v).__name__} {v!r}"


def _c_argument(function: str, p: Param, v):
    """``v`` as passed to ctypes for parameter ``p``, or a ValueError saying why it does not fit."""
    if p.ctype.endswith("*"):
        if v is None and p.optional:
            return None
        if (not isinstance(v, torch.Tensor) or v.dtype != torch.float32 or v.device.type != "cpu"
                or not v.is_contiguous()):
            raise _refusal(function, p, "a contiguous float32 CPU tensor" + (" or None" if p.optional else ""), v)
        return v.data_ptr()
    if p.ctype == "float":
        if not isinstance(v, float):
            raise _refusal(function, p, "a Python float", v)
        return v
    bits = _INT_BITS[p.ctype]
    if not isinstance(v, int) or isinstance(v, bool) or not -2 ** (bits - 1) <= v < 2 ** (bits - 1):
        raise _refusal(function, p, f"a Python int that fits {bits} bits", v)
    return v


def _refusal(function: str, p: Param, expected: str, v) -> ValueError:
    return ValueError(f"{function}: {p.name} ({'HD_OPTIONAL ' * p.optional}{p.ctype}) needs {expected}, "
                     f"got {_describe(v)}")


def _c_function(stub: Callable) -> Callable:
    """The wrapper of the C function named like ``stub`` (keeping its signature and docstring):
    checks the arguments against the prototype, calls the function, raises on a nonzero return."""
    name, sig = stub.__name__, inspect.signature(stub)

    @functools.wraps(stub)
    def wrapper(*args, **kwargs):
        lib = LIBRARY.get(required=True)  # loading checked every wrapper against its prototype
        proto = prototypes()[name]
        try:
            bound = sig.bind(*args, **kwargs).arguments
        except TypeError as e:
            raise ValueError(f"{name}: {e} (its prototype has {len(proto.params)} parameters)") from None
        rc = getattr(lib, name)(*(_c_argument(name, p, bound[p.name]) for p in proto.params))
        if rc != 0:
            sizes = ", ".join(f"{p.name}={bound[p.name]}" for p in proto.params if not p.ctype.endswith("*"))
            raise RuntimeError(f"{name} returned {rc}: arguments outside what it supports ({sizes})")

    return wrapper


# ---- one wrapper per function of cpu_kernels.h -------------------------------------------------

@_c_function
def hd_wino_input(x: torch.Tensor, v: torch.Tensor, C: int, H: int, W: int, OH: int, OW: int, n0: int, n1: int,
                  t0: int, t1: int, tw: int, stride: int, offset: int, A: int, scale: torch.Tensor | None,
                  nthreads: int) -> None:
    """The Winograd input transform of one chunk: images [n0, n1), tile rows [t0, t1) of a logical
    OH x OW grid of 4x4-output tiles, tw per row.

    x: [N, C, H, W], read as its stride^2 phases (stride 1 or 2), tile row ty from logical row
    4 ty + offset, zero outside. v: [A*A, C * stride^2, (n1 - n0) * (t1 - t0) * tw], written.
    A: 6 (F(4x4, 3x3)) or 5 (F(4x4, 2x2)). scale: [N, C] input multipliers, or None.
    """


@_c_function
def hd_wino_output(mm: torch.Tensor, y: torch.Tensor, O: int, H: int, W: int, OH: int, OW: int, n0: int, n1: int,
                   t0: int, t1: int, tw: int, stride: int, A: int, nthreads: int) -> None:
    """The Winograd output transform of the same chunk: mm [A*A, O * stride^2, tiles] into
    y [N, O, H, W] (phase p of channel o at stride)."""


@_c_function
def hd_wino_phase_weight(w: torch.Tensor, K: torch.Tensor, u: torch.Tensor, O: int, C: int, adjoint: int,
                         nthreads: int) -> None:
    """The stride-2 convs' transformed weight: u [25, 4 O, C] (adjoint 0) or [25, C, 4 O]
    (adjoint 1) from w [O, C, 3, 3] and K = kron(G, G) [25, 4]."""


@_c_function
def hd_wino_matrices(A: int, bt: torch.Tensor, at: torch.Tensor) -> None:
    """B^T [A, A] and A^T [4, A] as compiled in, for A = 6 or 5."""


@_c_function
def hd_fir_separable(x: torch.Tensor, y: torch.Tensor, planes: int, H: int, W: int, fy: torch.Tensor, fh: int,
                     fx: torch.Tensor, fw: int, px0: int, px1: int, py0: int, py1: int, nthreads: int) -> None:
    """y [planes, H + py0 + py1 - fh + 1, W + px0 + px1 - fw + 1]: x [planes, H, W] zero-padded
    (negative pads crop), correlated with fy [fh] down and fx [fw] across (up to 64 taps each)."""


@_c_function
def hd_demod_bias_lrelu(x: torch.Tensor, dc: torch.Tensor, add: torch.Tensor | None, add_stride: int,
                        bias: torch.Tensor, y: torch.Tensor, N: int, O: int, HW: int, alpha: float, gain: float,
                        nthreads: int) -> None:
    """y [N, O, HW] = lrelu(x [N, O, HW] * dc [N, O] + add + bias [O], alpha) * gain; add: planes
    of HW floats, add_stride apart per image (0: one plane for all), or None. y may be x."""


@_c_function
def hd_demod_bias_lrelu_grad(gy: torch.Tensor, y: torch.Tensor, dc: torch.Tensor, gx: torch.Tensor, N: int, O: int,
                             HW: int, alpha: float, gain: float, nthreads: int) -> None:
    """gx [N, O, HW] = gy * dc [N, O] * (y > 0 ? gain : alpha * gain), from the output y [N, O, HW]
    of hd_demod_bias_lrelu."""
