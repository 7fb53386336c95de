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

NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


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


# ---- the real compile + link (about a minute on 2 cores) ------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not found on PATH or at /usr/local/cuda/bin/nvcc: cannot compile the extension")
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
