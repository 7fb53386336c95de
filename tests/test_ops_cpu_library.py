"""The CPU library's C ABI (csrc/cpu_kernels.h), its typed wrappers (stylegan2_ops.cpu.library) and
its build targets: -march=native and the portable baseline give bit-identical results."""
from __future__ import annotations  # annotations as strings, as in cpu_library

import inspect
import os
import re
import shutil
import subprocess

import pytest
import torch

from stylegan2_ops import _build
from stylegan2_ops.cpu import library as cpu_library

HEADER_TEXT = cpu_library.HEADER.read_text()
needs_library = pytest.mark.skipif(not cpu_library.available(), reason="no C++ compiler for the CPU library")


# ---- the wrappers against the prototypes (no compiler needed) ---------------------------------

def test_every_prototype_has_one_wrapper_and_every_wrapper_a_prototype():
    protos = cpu_library.parse_header(HEADER_TEXT)
    assert set(protos) == set(cpu_library.wrappers())
    assert set(protos) == {n for n in dir(cpu_library) if n.startswith("hd_")}
    # the C definitions export exactly these (each .cpp defines what the header declares)
    defined = set()
    for src in _build.CPU_SOURCES:
        defined |= set(re.findall(r"^int (hd_\w+)\(", (_build.CSRC / src).read_text(), re.M))
    assert defined == set(protos)


def test_each_wrapper_has_the_parameters_of_its_prototype():
    """Names, order and kinds (plain positional, no defaults), annotated with the C type's
    Python type (``| None`` where the header says HD_OPTIONAL)."""
    python_type = {"const float*": "torch.Tensor", "float*": "torch.Tensor", "int64_t": "int", "int": "int",
                   "float": "float"}
    for name, proto in cpu_library.parse_header(HEADER_TEXT).items():
        sig = inspect.signature(getattr(cpu_library, name))
        params = list(sig.parameters.values())
        assert [p.name for p in params] == [c.name for c in proto.params], name
        for p, c in zip(params, proto.params):
            assert p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty, (name, p.name)
            assert p.annotation == python_type[c.ctype] + (" | None" if c.optional else ""), (name, p.name)
        assert sig.return_annotation == "None"
        assert cpu_library.wrapper_problems(proto, getattr(cpu_library, name)) == []
        assert getattr(cpu_library, name).__doc__.strip(), name
    optional = {(n, p.name) for n, proto in cpu_library.prototypes().items() for p in proto.params if p.optional}
    assert optional == {("hd_wino_input", "scale"), ("hd_demod_bias_lrelu", "add")}  # as the module docstring says


def _edited(old: str, new: str) -> dict:
    assert HEADER_TEXT.count(old) == 1, old
    return cpu_library.parse_header(HEADER_TEXT.replace(old, new))


@pytest.mark.parametrize("old,new", [
    ("int stride, int offset, int A,", "int offset, int stride, int A,"),  # two parameters swapped
    ("int64_t O, int64_t C, int adjoint", "int64_t O, int64_t C, float adjoint"),  # a type changed
    ("HD_OPTIONAL const float* add", "const float* add"),  # NULL no longer allowed
    ("int64_t HW, float alpha, float gain,\n                        int nthreads", "int64_t HW, float alpha, int nthreads"),
    ("int hd_wino_matrices(int A, float* bt, float* at);", "int hd_wino_matrices(int A, float* bt);"),
])
def test_a_prototype_edited_alone_no_longer_matches_its_wrapper(old, new):
    protos = _edited(old, new)
    problems = [p for proto in protos.values() for p in cpu_library.wrapper_problems(proto, getattr(cpu_library, proto.name))]
    assert len(problems) == 1, problems


def test_a_wrapper_edited_alone_no_longer_matches_its_prototype():
    proto = cpu_library.prototypes()["hd_wino_matrices"]

    def renamed(A: int, bt: torch.Tensor, at_: torch.Tensor) -> None: ...

    def retyped(A: int, bt: torch.Tensor | None, at: torch.Tensor) -> None: ...

    def defaulted(A: int, bt: torch.Tensor, at: torch.Tensor = None) -> None: ...

    def keyword_only(A: int, bt: torch.Tensor, *, at: torch.Tensor) -> None: ...

    def returning(A: int, bt: torch.Tensor, at: torch.Tensor) -> int: ...

    for fn in (renamed, retyped, defaulted, keyword_only, returning, None):
        assert len(cpu_library.wrapper_problems(proto, fn)) == 1, fn


def test_loading_refuses_a_header_its_wrappers_disagree_with(monkeypatch):
    """bind() (run when the library loads) checks every wrapper, so an inconsistent edit makes the
    library unavailable (one warning) instead of calling C with wrong arguments."""
    lib = object()  # never reached
    monkeypatch.setattr(cpu_library, "prototypes", lambda: _edited("int A, float* bt", "float A, float* bt"))
    with pytest.raises(RuntimeError, match=r"disagrees with cpu_kernels.h: hd_wino_matrices: parameter A \(float\) "
                                           r"is annotated 'int', expected 'float'"):
        cpu_library.bind(lib)
    monkeypatch.setattr(cpu_library, "prototypes",
                        lambda: {**cpu_library.parse_header(HEADER_TEXT),
                                 **cpu_library.parse_header('extern "C" { int hd_new(int n); }')})
    with pytest.raises(RuntimeError, match="hd_new has no wrapper"):
        cpu_library.bind(lib)


@pytest.mark.parametrize("text,error", [
    ('extern "C" { void hd_f(int n); }', "cannot parse"),  # only int returns
    ('extern "C" { int hd_f(double x); }', "cannot parse parameter 'double x'"),
    ('extern "C" { int hd_f(const float*); }', "cannot parse parameter"),  # unnamed
    ('extern "C" { int hd_f(HD_OPTIONAL int n); }', "HD_OPTIONAL before a pointer"),
    ('extern "C" { int hd_f(const float* x[]); }', "cannot parse parameter"),
    ('extern "C" { int hd_f(int n, int n); }', "two parameters of one name"),
    ('extern "C" { int hd_f(int n); int hd_f(int m); }', "declared twice"),
    ('extern "C" { int hd_f(int n) }', "does not end with ';'"),
    ('extern "C" { int hd_f(int n /* a */); }', "cannot parse parameter"),
    ('int hd_f(int n);', 'extern "C"'),
    ('#define N 3\nextern "C" { int hd_f(int n); }', "unsupported preprocessor line '#define N 3'"),
    ('extern "C" { }', "no declarations"),
])
def test_the_header_parser_refuses_what_it_does_not_understand(text, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        cpu_library.parse_header(text)


# ---- the arguments of each call -------------------------------------------------------------

@needs_library
def test_arguments_are_checked_against_the_prototype():
    bt, at = torch.empty(6, 6), torch.empty(4, 6)
    cpu_library.hd_wino_matrices(6, bt, at)
    cpu_library.hd_wino_matrices(A=6, bt=bt, at=at)
    cases = [
        ((6, bt.double(), at), r"hd_wino_matrices: bt \(float\*\) needs a contiguous float32 CPU tensor, got torch.float64"),
        ((6, bt, torch.empty(6, 4).t()), r"hd_wino_matrices: at \(float\*\) .* got torch.float32 \[4, 6\] on cpu, not contiguous"),
        ((6, None, at), r"hd_wino_matrices: bt \(float\*\) needs a contiguous float32 CPU tensor, got NoneType None"),
        ((6, bt.numpy(), at), r"hd_wino_matrices: bt .* got ndarray"),
        ((6.0, bt, at), r"hd_wino_matrices: A \(int\) needs a Python int that fits 32 bits, got float 6.0"),
        ((True, bt, at), r"hd_wino_matrices: A \(int\) needs a Python int"),
        ((2**31, bt, at), r"hd_wino_matrices: A \(int\) needs a Python int that fits 32 bits, got int 2147483648"),
        ((torch.tensor(6), bt, at), r"hd_wino_matrices: A \(int\) needs a Python int"),
        ((6, bt), r"hd_wino_matrices: missing a required argument: 'at' \(its prototype has 3 parameters\)"),
        ((6, bt, at, 1), r"hd_wino_matrices: too many positional arguments"),
    ]
    for args, error in cases:
        with pytest.raises(ValueError, match=error):
            cpu_library.hd_wino_matrices(*args)
    with pytest.raises(ValueError, match="hd_wino_matrices: missing a required argument: 'A'"):
        cpu_library.hd_wino_matrices(a=6, bt=bt, at=at)
    with pytest.raises(RuntimeError, match=r"hd_wino_matrices returned -1: arguments outside what it supports \(A=7\)"):
        cpu_library.hd_wino_matrices(7, torch.empty(7, 7), torch.empty(4, 7))


@needs_library
def test_float_and_optional_parameters():
    x, dc, bias = torch.randn(2, 3, 5), torch.rand(2, 3), torch.randn(3)
    y = torch.empty_like(x)
    cpu_library.hd_demod_bias_lrelu(x, dc, None, 0, bias, y, 2, 3, 5, 0.2, 2.0, 1)  # add may be NULL
    torch.testing.assert_close(y, torch.nn.functional.leaky_relu(x * dc[..., None] + bias[:, None], 0.2) * 2)
    with pytest.raises(ValueError, match=r"hd_demod_bias_lrelu: alpha \(float\) needs a Python float, got int 0"):
        cpu_library.hd_demod_bias_lrelu(x, dc, None, 0, bias, y, 2, 3, 5, 0, 2.0, 1)
    with pytest.raises(ValueError, match=r"hd_demod_bias_lrelu: bias \(const float\*\) needs a contiguous float32 "
                                         r"CPU tensor, got NoneType None"):
        cpu_library.hd_demod_bias_lrelu(x, dc, None, 0, None, y, 2, 3, 5, 0.2, 2.0, 1)
    with pytest.raises(ValueError, match=r"hd_demod_bias_lrelu: add \(HD_OPTIONAL const float\*\) needs a contiguous "
                                         r"float32 CPU tensor or None, got torch.int64"):
        cpu_library.hd_demod_bias_lrelu(x, dc, torch.zeros(5, dtype=torch.long), 0, bias, y, 2, 3, 5, 0.2, 2.0, 1)


# ---- the C++ compiler checks the definitions against the header ---------------------------------

CXX = os.environ.get(_build.CXX_ENV) or shutil.which("c++") or shutil.which("g++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler")
@pytest.mark.parametrize("source,old,new,error", [
    (None, None, None, None),  # the sources as they are compile
    ("winograd_cpu.cpp", "int64_t tw, int stride, int offset, int A,", "int64_t tw, int64_t stride, int offset, int A,",
     "conflicting declaration of C function"),
    ("winograd_cpu.cpp", "int hd_wino_matrices(int A, float* bt, float* at);", "", "no previous declaration"),
    ("act_cpu.cpp", "HD_OPTIONAL const float* add, int64_t add_stride", "HD_OPTIONAL float* add, int64_t add_stride",
     "conflicting declaration of C function"),
])
def test_the_compiler_refuses_a_definition_the_header_disagrees_with(tmp_path, source, old, new, error):
    for f in _build.CPU_SOURCES + _build.CPU_HEADERS:
        shutil.copy(_build.CSRC / f, tmp_path / f)
    if old is not None:
        assert HEADER_TEXT.count(old) == 1
        (tmp_path / "cpu_kernels.h").write_text(HEADER_TEXT.replace(old, new))
    flags = [f for f in _build._CPU_FLAGS if f not in ("-shared", "-fPIC")] + ["-fsyntax-only"]
    for src in [source] if source else _build.CPU_SOURCES:
        proc = subprocess.run([CXX, *flags, src], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        if error is None:
            assert proc.returncode == 0, proc.stderr
        else:
            assert proc.returncode != 0 and error in proc.stderr, proc.stderr


# ---- native and portable builds --------------------------------------------------------------

def test_the_target_comes_from_an_argument_or_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(_build.CPU_ARCH_ENV, raising=False)
    assert _build.cpu_target() == "native"
    monkeypatch.setenv(_build.CPU_ARCH_ENV, "portable")
    assert _build.cpu_target() == "portable"
    monkeypatch.setenv(_build.CPU_ARCH_ENV, "avx512")
    with pytest.raises(ValueError, match="HYPERDOMAIN_CPU_ARCH must be one of .*'native', 'portable'.*got 'avx512'"):
        _build.cpu_target()
    with pytest.raises(ValueError, match="target must be one of"):
        _build.build_cpu_library(tmp_path, target="avx512")


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The library built for this CPU and for the machine type's baseline, each bound to the wrappers."""
    if CXX is None:
        pytest.skip("no C++ compiler")
    env = dict(os.environ)
    out = {}
    for target in _build.CPU_TARGETS:
        lib, info = _build.build_cpu_library(tmp_path_factory.mktemp(target), target=target)
        out[target] = (cpu_library.bind(lib), info)
    assert dict(os.environ) == env  # the build only reads the environment
    return out


def test_the_two_targets_are_built_apart_and_say_what_for(two_builds):
    (native, n_info), (portable, p_info) = two_builds["native"], two_builds["portable"]
    assert n_info["target"] == "native" and "-march=native" in n_info["flags"]
    assert p_info["target"] == "portable" and "-march=native" not in p_info["flags"]
    assert os.path.basename(os.path.dirname(n_info["path"])).startswith("cpu-native-")
    assert os.path.basename(os.path.dirname(p_info["path"])).startswith("cpu-portable-")
    for info in (n_info, p_info):
        assert "-ffp-contract=off" in info["flags"] and not any("fast-math" in f for f in info["flags"])
        assert info["built_for"]


def test_only_the_native_build_is_keyed_by_the_cpu(two_builds, monkeypatch):
    """A cache shared with another CPU rebuilds the native library but reuses the portable one."""
    from pathlib import Path

    monkeypatch.setattr(_build, "_cpu_signature", lambda: "model name : another machine\nflags : sse2\n")
    for target, source in (("portable", "cache"), ("native", "built")):
        root = Path(two_builds[target][1]["path"]).parents[1]
        lib, info = _build.build_cpu_library(root, target=target)
        assert info["source"] == source, target
    assert info["built_for"] == "another machine"


def _run_every_function(lib, info) -> dict[str, torch.Tensor]:
    """The outputs of every C function on fixed random inputs (several sizes and variants), through
    the wrappers with ``lib`` as the loaded library."""
    import unittest.mock

    g = torch.Generator().manual_seed(11)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    out = {}
    loader = _build.ExtensionLoader(lambda: (lib, info), functions=())
    with unittest.mock.patch.object(cpu_library, "LIBRARY", loader):
        for a in (6, 5):
            bt, at = torch.empty(a, a), torch.empty(4, a)
            cpu_library.hd_wino_matrices(a, bt, at)
            out[f"matrices{a}"] = torch.cat([bt, at])
        # the input and output transforms: stride 1 (3x3) and the stride-2 phases (2x2), ragged sizes
        for a, stride, offset, (n, c, h, w), (oh, ow) in ((6, 1, -1, (2, 5, 13, 11), (13, 11)),
                                                          (5, 1, -1, (3, 4, 9, 7), (9, 7)),
                                                          (5, 2, 0, (2, 3, 19, 23), (9, 11))):
            th, tw = -(-oh // 4), -(-ow // 4)
            x, scale = rand(n, c, h, w), rand(n, c)
            for s in (scale, None):
                v = torch.full((a * a, c * stride ** 2, n * th * tw), float("nan"))
                cpu_library.hd_wino_input(x, v, c, h, w, oh, ow, 0, n, 0, th, tw, stride, offset, a, s, 2)
                out[f"input{a}/{stride}/{s is None}"] = v
            o = 6
            mm = rand(a * a, o * stride ** 2, n * th * tw)
            y = torch.zeros(n, o, stride * oh + stride - 1, stride * ow + stride - 1)
            cpu_library.hd_wino_output(mm, y, o, y.shape[2], y.shape[3], oh, ow, 0, n, 0, th, tw, stride, a, 2)
            out[f"output{a}/{stride}"] = y
        k = rand(25, 4)
        w = rand(7, 6, 3, 3)
        for adjoint in (0, 1):
            u = torch.empty(25, 6, 28) if adjoint else torch.empty(25, 28, 6)
            cpu_library.hd_wino_phase_weight(w, k, u, 7, 6, adjoint, 2)
            out[f"phase_weight{adjoint}"] = u
        x = rand(6, 17, 29)
        for fy, fx, (px0, px1, py0, py1) in ((rand(4), rand(4), (2, 1, 1, 2)), (rand(3), rand(5), (-1, 3, 0, -2))):
            y = torch.empty(6, 17 + py0 + py1 - len(fy) + 1, 29 + px0 + px1 - len(fx) + 1)
            cpu_library.hd_fir_separable(x, y, 6, 17, 29, fy, len(fy), fx, len(fx), px0, px1, py0, py1, 2)
            out[f"fir{len(fy)}"] = y
        n, o, hw = 3, 5, 37
        x, dc, bias = rand(n, o, hw), rand(n, o), rand(o)
        for add, stride in ((None, 0), (rand(1, hw), 0), (rand(n, hw), hw)):
            y = torch.empty(n, o, hw)
            cpu_library.hd_demod_bias_lrelu(x, dc, add, stride, bias, y, n, o, hw, 0.2, 2 ** 0.5, 2)
            out[f"demod{stride}/{add is None}"] = y
            gx = torch.empty(n, o, hw)
            cpu_library.hd_demod_bias_lrelu_grad(rand(n, o, hw), y, dc, gx, n, o, hw, 0.2, 2 ** 0.5, 2)
            out[f"demod_grad{stride}/{add is None}"] = gx
    return out


def test_native_and_portable_builds_give_bit_identical_results(two_builds):
    """No FMA contraction, no fast-math: the vector ISA that -march picks cannot change a bit."""
    native, portable = (_run_every_function(*two_builds[t]) for t in ("native", "portable"))
    assert native.keys() == portable.keys() and len(native) == 21
    for key in native:
        assert not native[key].isnan().any(), key  # every output element was written
        assert torch.equal(native[key], portable[key]), key
