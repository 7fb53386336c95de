import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import pytest
import torch

import stylegan2_ops as ops
from stylegan2_ops import _build
from stylegan2_ops.bias_act import _bias_act_ref

from conftest import NVCC


# ---- dispatch and fallback (no compiler needed) ----------------------------------------------

@pytest.fixture
def failing_build(monkeypatch):
    """A loader whose build raises, and every tensor treated as a CUDA tensor."""
    calls = []

    def builder():
        calls.append(1)
        raise RuntimeError("nvcc exploded\nsecond line of the compiler log")

    monkeypatch.setattr(_build, "LOADER", _build.ExtensionLoader(builder))
    monkeypatch.setattr(_build, "is_cuda", lambda t: True)
    monkeypatch.delenv(_build.STRICT_ENV, raising=False)
    return calls


def test_failed_build_warns_once_and_falls_back(failing_build):
    x, b = torch.randn(2, 3, 4, 4), torch.randn(3)
    with pytest.warns(RuntimeWarning, match="nvcc exploded") as record:
        y = ops.bias_act(x, b, act="lrelu")
    assert len(record) == 1 and "\n" not in str(record[0].message)
    torch.testing.assert_close(y, _bias_act_ref(x, b, act="lrelu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, from any op
        ops.upfirdn2d(x, ops.setup_filter([1, 3, 3, 1]), up=2, padding=[2, 1, 2, 1])
        ops.modulated_input(x, torch.randn(2, 3))
        ops.demod_coefficients(torch.randn(5, 3, 3, 3), torch.randn(2, 3))
    assert failing_build == [1]  # tried once per process
    st = ops.status()
    assert st["state"] == "failed" and "nvcc exploded" in st["error"] and "second line" not in st["error"]
    json.dumps(st)


def test_failed_build_with_impl_cuda_or_strict_raises(failing_build, monkeypatch):
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="nvcc exploded"):
        ops.bias_act(x, impl="cuda")
    monkeypatch.setenv(_build.STRICT_ENV, "1")
    with pytest.raises(RuntimeError, match=_build.STRICT_ENV):
        ops.bias_act(x)
    assert ops.status()["strict"] is True
    assert failing_build == [1]


def test_cpu_tensors_never_build(monkeypatch):
    calls = []
    monkeypatch.setattr(_build, "LOADER", _build.ExtensionLoader(lambda: calls.append(1)))
    x = torch.randn(2, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.bias_act(x, act="lrelu")
        ops.upfirdn2d(x, None)
        ops.modulated_input(x, torch.randn(2, 3))
    assert calls == [] and ops.status()["state"] == "not_attempted"
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.bias_act(x, impl="triton")


def test_import_needs_no_compiler_tooling():
    code = ("import sys, stylegan2_ops; "
            "assert 'torch.utils.cpp_extension' not in sys.modules; "
            "assert stylegan2_ops.status()['state'] == 'not_attempted'")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no nvcc, no ninja on PATH
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_arch_flags_and_hash():
    assert _build.arch_flags(["9.0"]) == ["-gencode=arch=compute_90,code=sm_90"]
    assert _build.arch_flags(["8.6+PTX"]) == ["-gencode=arch=compute_86,code=sm_86",
                                               "-gencode=arch=compute_86,code=compute_86"]
    assert _build.arch_flags(["9.0a"]) == ["-gencode=arch=compute_90a,code=sm_90a"]
    with pytest.raises(ValueError, match="sm_90"):
        _build.arch_flags(["sm_90"])
    assert _build.build_hash(["9.0"]) != _build.build_hash(["8.0"])
    assert _build.build_hash(["9.0"]) == _build.build_hash(["9.0"])


def test_cache_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(_build.CACHE_ENV, str(tmp_path))
    assert _build.default_cache_root() == tmp_path


def test_an_optional_loader_warns_once_and_never_raises_in_strict_mode(monkeypatch):
    calls = []

    def builder():
        calls.append(1)
        raise RuntimeError("no compiler\nsecond line")

    loader = _build.ExtensionLoader(builder, functions=(), what="CPU kernel library", fallback="using the torch paths",
                                    honours_strict=False)
    monkeypatch.setenv(_build.STRICT_ENV, "1")
    with pytest.warns(RuntimeWarning) as record:
        assert loader.get() is None and loader.get() is None
    assert [str(r.message) for r in record] == [
        "stylegan2_ops: CPU kernel library unavailable (RuntimeError: no compiler); using the torch paths"]
    with pytest.raises(RuntimeError, match="CPU kernel library unavailable"):
        loader.get(required=True)
    assert calls == [1] and loader.status()["state"] == "failed"


# ---- without fcntl (Windows): the import, the lock file, the CPU library's fallback -----------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_FCNTL = "import sys; sys.modules['fcntl'] = None  # as on Windows: import fcntl raises ImportError\n"


def _run_without_fcntl(code: str, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", NO_FCNTL + code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_import_works_without_fcntl():
    _run_without_fcntl("import hyperdomain, stylegan2_ops\n"
                       "from stylegan2_ops import _build\n"
                       "assert _build.fcntl is None\n"
                       "assert stylegan2_ops.status()['state'] == 'not_attempted'\n")


BUILDER = """
import json, os, time
from pathlib import Path
from stylegan2_ops import _build
root, me = Path(sys.argv[1]), sys.argv[2]
(root / f"ready-{me}").touch()
while len(list(root.glob("ready-*"))) < 2:  # both processes start building together
    time.sleep(0.01)
spans = []

def compile_into(tmp):
    spans.append(time.time())
    time.sleep(1.0)
    (tmp / "lib.so").write_text(me)
    spans.append(time.time())
    return me

_, info = _build._cached_build(root, "digest", "lib", compile_into, _build.BuildInfo(),
                               load=lambda name, path: path.read_text())
print(json.dumps({"source": info["source"], "spans": spans, "done": time.time()}))
"""


def test_the_lock_file_without_fcntl_makes_two_concurrent_builders_build_once(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", NO_FCNTL + BUILDER, str(tmp_path), str(i)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["source"] for r in results) == ["built", "cache"]
    built = next(r for r in results if r["source"] == "built")
    cached = next(r for r in results if r["source"] == "cache")
    assert cached["done"] >= built["spans"][1]  # it waited for the build, then loaded it
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ready-")) == ["digest"]  # no lock left


def test_the_lock_file_is_taken_over_when_stale_and_kept_while_its_holder_lives(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(_build, "fcntl", None)
    monkeypatch.setattr(_build, "LOCK_STALE_S", 0.6)
    lock = tmp_path / "x.lock"
    excl = tmp_path / "x.excl"
    excl.touch()
    with pytest.raises(TimeoutError, match="waited 0 s for the build lock .*x.excl"):
        with _build.build_lock(lock, timeout=0.2):
            pass
    os.utime(excl, (time.time() - 10, time.time() - 10))  # left by a process that died
    start = time.monotonic()
    with _build.build_lock(lock, timeout=5):
        assert excl.exists()
    assert not excl.exists() and time.monotonic() - start < 1
    # a live holder refreshes its lock file: a waiter past LOCK_STALE_S does not take it over
    held, released = threading.Event(), []

    def hold():
        with _build.build_lock(lock):
            held.set()
            time.sleep(2.0)
            released.append(time.monotonic())

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    with _build.build_lock(lock, timeout=30):
        acquired = time.monotonic()
    t.join()
    assert acquired >= released[0]


def test_a_failed_cpu_library_build_without_fcntl_warns_once_and_stays_right(tmp_path):
    """A compiler that fails (here /bin/false, after the lock file was taken): one one-line
    warning, strict mode or not, and the convs, filters and conv tails on their torch paths."""
    code = """
import warnings
import torch
import torch.nn.functional as F
import hyperdomain
import stylegan2_ops
from stylegan2_ops import modulated_conv
from stylegan2_ops.cpu import library as cpu_library, demod_act, winograd_native
x, w = torch.randn(4, 8, 16, 16), torch.randn(8, 8, 3, 3) / 8
f = stylegan2_ops.setup_filter([1, 3, 3, 1])
with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    y = modulated_conv._conv(x, w, None, 1, "auto")
    blurred = stylegan2_ops.upfirdn2d(x, f, padding=1)
    assert not winograd_native.applies(x, w) and not cpu_library.available()
    assert not demod_act.applies(x, torch.ones(4, 8, 1, 1), None, torch.zeros(8))
messages = [str(r.message) for r in record]
assert len(messages) == 1 and "\\n" not in messages[0], messages
assert messages[0].startswith("stylegan2_ops: CPU kernel library unavailable (RuntimeError: false failed"), messages
torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
torch.testing.assert_close(blurred, stylegan2_ops.upfirdn2d(x, f, padding=1, impl="ref"))
st = stylegan2_ops.status()["cpu_library"]
assert st["state"] == "failed" and st["strict"] is True, st
"""
    _run_without_fcntl(code, CXX=shutil.which("false") or "/bin/false", **{_build.STRICT_ENV: "1",
                                                                         _build.CACHE_ENV: str(tmp_path)})
    assert not list(tmp_path.glob("*.excl"))  # the lock file went with the failed build


# ---- the real compile + link (about a minute on 2 cores) ------------------------------------

@pytest.fixture(scope="module")
def built(ops_builds, tmp_path_factory):
    """(module, BuildInfo of the build, cache root, seconds): the extension for sm_90, compiled
    and linked in this session (by conftest's ``ops_builds``, together with the host emulation),
    then loaded here from its cache root."""
    if NVCC is None:
        pytest.skip("nvcc not found on PATH or at /usr/local/cuda/bin/nvcc: cannot compile the extension")
    build = ops_builds.get("extension")
    if build is not None:
        info, root = build.info(), build.root
        module, _ = _build.build_extension(arch_list=("9.0",), build_dir=root)
        return module, info, root, info["build_seconds"]
    root = tmp_path_factory.mktemp("ops_cache")
    start = time.perf_counter()
    module, info = _build.build_extension(arch_list=("9.0",), build_dir=root)  # explicit arch: no GPU needed
    return module, info, root, time.perf_counter() - start


@pytest.mark.slow
def test_build_compiles_links_and_imports(built):
    module, info, root, seconds = built
    print(f"\nbuilt {info['path']} in {seconds:.0f} s")
    so = info["path"]
    assert os.path.isfile(so) and info["source"] == "built"
    assert f"PyInit_{info['name']}".encode() in open(so, "rb").read()
    assert all(callable(getattr(module, f)) for f in _build.FUNCTIONS)
    assert "-gencode=arch=compute_90,code=sm_90" in info["extra_cuda_cflags"]
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == [os.path.basename(info["build_dir"])]  # no temp dirs left
    json.dumps(info)


@pytest.mark.slow
def test_build_is_reused_from_cache(built):
    _, info, root, _ = built
    module, again = _build.build_extension(arch_list=("9.0",), build_dir=root)
    assert again["source"] == "cache" and again["path"] == info["path"]
    assert all(callable(getattr(module, f)) for f in _build.FUNCTIONS)


@pytest.mark.slow
def test_bound_signatures_match_python_callers(built):
    """Each binding accepts the argument list the autograd Functions pass, then refuses CPU tensors
    (a wrong count or type would raise TypeError from pybind instead)."""
    module = built[0]
    x, s, w = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3), torch.zeros(5, 3, 3, 3)
    calls = {
        "bias_act_fwd": (x, None, 16, 1, 0.2, 1.4, -1.0),
        "bias_act_grad": (x, x, torch.zeros(3), 16, 1, 0.2, 1.4, 256.0),
        "upfirdn2d": (x, torch.ones(2, 2), 2, 2, 1, 1, 1, 0, 1, 0, 1.0),
        "modulate": (x, s, None),
        "rowdot": (x, x),
        "demod_wsq": (w,),
        "demod_fwd": (torch.zeros(5, 3), s, 1e-8),
        "demod_grad_styles": (torch.zeros(2, 5), torch.zeros(5, 3), s),
        "demod_grad_weight": (torch.zeros(2, 5), s, w),
    }
    assert sorted(calls) == sorted(_build.FUNCTIONS)
    for name, args in calls.items():
        with pytest.raises(RuntimeError, match="CUDA tensor"):
            getattr(module, name)(*args)


@pytest.mark.slow
def test_find_cuda_home(built):
    home = _build.find_cuda_home()
    assert home is not None and (home / "include" / "cuda_runtime.h").exists()


# ---- the host-emulated test build (runs the kernels on the CPU) -----------------------------

@pytest.mark.slow
def test_host_emulation_covers_everything_with_one_block(emulated_ops):
    """With every launch cut to one block, the grid-stride loops alone must cover all items
    (rowdot: rows, demod: (b, o) warps), and still match the plain definitions."""
    x0, s = torch.randn(3, 700, 5, 2), torch.randn(3, 700) + 1
    w = torch.randn(9, 700, 3, 3)
    try:
        for cap in (0, 1):
            emulated_ops.set_max_blocks(cap)
            x = x0 * (cap + 2)  # other values each round: a reused output buffer cannot hide skipped items
            torch.testing.assert_close(emulated_ops.bias_act_fwd(x, None, 1, 1, 0.2, 2.0, -1.0),
                                       torch.nn.functional.leaky_relu(x, 0.2) * 2.0)
            torch.testing.assert_close(emulated_ops.rowdot(x, x), x.square().sum(dim=(2, 3)))
            q = emulated_ops.demod_fwd(emulated_ops.demod_wsq(w), s, 1e-8)
            torch.testing.assert_close(q, ((w[None] * s[:, None, :, None, None]).square().sum(dim=(2, 3, 4)) + 1e-8).rsqrt())
        with pytest.raises(RuntimeError, match="max_blocks must be >= 0"):
            emulated_ops.set_max_blocks(-1)
    finally:
        emulated_ops.set_max_blocks(0)
