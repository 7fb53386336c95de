"""Build, cache and load the one CUDA extension holding every stylegan2_ops kernel.

The extension is compiled lazily, the first time a CUDA tensor reaches an op with
``impl="auto"`` or ``"cuda"``; ``import stylegan2_ops`` needs neither nvcc nor ninja.
The outcome of that first attempt is remembered for the life of the process: on failure
``impl="auto"`` warns once (one line) and uses the reference ops, unless the environment
variable ``HYPERDOMAIN_OPS_STRICT=1`` asks for an error instead (GPU CI).

Builds are cached under ``$HYPERDOMAIN_OPS_CACHE/<hash>`` (default
``~/.cache/hyperdomain/ops/<hash>``); the hash covers the sources' bytes, the torch and
CUDA versions, the Python ABI, the target archs and the compiler flags. A build runs in a
temporary directory next to its final place and is renamed into place when complete, so a
crashed or concurrent build never leaves a half-written cache entry behind; a lock file
(``build_lock``) makes concurrent processes build once.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import torch

try:
    import fcntl
except ImportError:  # Windows: build_lock falls back to an exclusively created lock file
    fcntl = None

logger = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ops.cpp", "bias_act.cu", "upfirdn2d.cu", "modulation.cu")
HEADERS = ("ops.h", "common.cuh")
EMULATION_FILES = ("host_emulation.cpp", "host_emulation.h")  # the CPU test build only
FUNCTIONS = ("bias_act_fwd", "bias_act_grad", "upfirdn2d", "modulate", "rowdot",
             "demod_wsq", "demod_fwd", "demod_grad_styles", "demod_grad_weight")
STRICT_ENV = "HYPERDOMAIN_OPS_STRICT"
CACHE_ENV = "HYPERDOMAIN_OPS_CACHE"

_CFLAGS = ("-O3",)
# No --use_fast_math: the kernels must match the reference ops to float tolerance.
_CUDA_CFLAGS = ("-O3", "-lineinfo")
_ARCH_RE = re.compile(r"^(\d+)\.(\d+)([a-z]?)(\+PTX)?$")


def strict() -> bool:
    """True when ``HYPERDOMAIN_OPS_STRICT`` asks for build failures to raise instead of falling back."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hyperdomain" / "ops"


def visible_arch_list() -> tuple[str, ...]:
    """Compute capabilities ("8.6", ...) of the visible GPUs, sorted and de-duplicated."""
    if not torch.cuda.is_available():
        return ()
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return tuple(f"{major}.{minor}" for major, minor in sorted(caps))


def arch_flags(arch_list: Sequence[str]) -> list[str]:
    """nvcc ``-gencode`` flags for archs like "9.0", "9.0a" or "8.6+PTX" (the last also embeds PTX)."""
    flags = []
    for arch in arch_list:
        m = _ARCH_RE.match(arch.strip())
        if m is None:
            raise ValueError(f"arch {arch!r} is not of the form '9.0', '9.0a' or '8.6+PTX'")
        num = f"{m.group(1)}{m.group(2)}{m.group(3)}"
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if m.group(4):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    if not flags:
        raise ValueError("arch_list is empty")
    return flags


def find_cuda_home() -> Path | None:
    """The CUDA toolkit root: the first candidate holding both bin/nvcc and include/cuda_runtime.h.

    torch's own guess (``cpp_extension.CUDA_HOME``) can be a directory with only an nvcc wrapper
    (here ``/usr/local`` from ``/usr/local/bin/nvcc``), so its include/ and lib64/ are checked
    and the real ones passed explicitly as build arguments.
    """
    from torch.utils import cpp_extension

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").exists() and (Path(c) / "include" / "cuda_runtime.h").exists():
            return Path(c).resolve()
    return None


def _toolkit_args(cuda_home: Path | None) -> tuple[list[str], list[str]]:
    includes, ldflags = [], []
    if cuda_home is not None:
        includes.append(str(cuda_home / "include"))
        for lib in ("lib64", "lib"):
            if (cuda_home / lib / "libcudart.so").exists():
                ldflags.append(f"-L{cuda_home / lib}")
    return includes, ldflags


def build_hash(arch_list: Sequence[str], extra_files: Sequence[str] = ()) -> str:
    h = hashlib.sha256()
    for name in sorted(SOURCES + HEADERS + tuple(extra_files)):
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    for part in (torch.__version__, str(torch.version.cuda), sys.implementation.cache_tag,
                 sys.platform, ",".join(arch_list), " ".join(_CFLAGS + _CUDA_CFLAGS)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:20]


def _import_so(name: str, path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class BuildInfo(dict):
    """Plain dict describing a build (what ``stylegan2_ops.status()`` reports)."""


def build_extension(arch_list: Sequence[str] | None = None, build_dir: str | os.PathLike | None = None,
                    verbose: bool = False) -> tuple[ModuleType, BuildInfo]:
    """Compile (or reuse from the cache) and import the extension; returns (module, info).

    arch_list: compute capabilities like ("9.0",); default: those of the visible GPUs, so it is
        required when no GPU is visible (e.g. a compile-only check on a build machine).
    build_dir: cache root (a ``<hash>`` sub-directory is used inside it); default
        ``$HYPERDOMAIN_OPS_CACHE`` or ``~/.cache/hyperdomain/ops``.
    Raises whatever the compiler, linker or import raised.
    """
    from torch.utils import cpp_extension  # not at import time: it probes for CUDA

    arch_list = tuple(arch_list) if arch_list else visible_arch_list()
    if not arch_list:
        raise RuntimeError("no GPU is visible; pass arch_list (e.g. ('9.0',)) to build without one")
    gencode = arch_flags(arch_list)
    cuda_home = find_cuda_home()
    includes, ldflags = _toolkit_args(cuda_home)
    digest = build_hash(arch_list)
    name = f"hyperdomain_ops_{digest}"
    root = Path(build_dir) if build_dir is not None else default_cache_root()
    info = BuildInfo(name=name, path=str(root / digest / f"{name}.so"), build_dir=str(root / digest),
                     arch_list=list(arch_list), extra_cuda_cflags=list(_CUDA_CFLAGS) + gencode, cuda_home=str(cuda_home),
                     torch=torch.__version__, torch_cuda=torch.version.cuda)

    def compile_into(tmp: Path):
        # torch compares nvcc's CUDA version with torch.version.cuda here and raises on a
        # major mismatch; the arch flags contain "arch", so torch adds none of its own.
        return cpp_extension.load(
            name=name,
            sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=list(_CFLAGS),
            extra_cuda_cflags=list(_CUDA_CFLAGS) + gencode,
            extra_include_paths=includes,
            extra_ldflags=ldflags,
            build_directory=str(tmp),
            verbose=verbose,
            with_cuda=True,
        )

    return _cached_build(root, digest, name, compile_into, info)


def build_host_emulation(build_dir: str | os.PathLike | None = None,
                         verbose: bool = False) -> tuple[ModuleType, BuildInfo]:
    """Compile (or reuse) the test build: the same kernels and bindings for the CPU.

    ``csrc/host_emulation.cpp`` compiles the .cu files with a C++ compiler, with
    ``host_emulation.h`` running each launch's threads as fibers (barriers and warp shuffles
    keep CUDA's semantics), and ops.cpp taking CPU tensors. The module has the functions of
    the real one plus ``set_max_blocks``. Needs the CUDA headers (for the fp16/bf16 types),
    not a GPU, nvcc or the CUDA runtime.
    """
    from torch.utils import cpp_extension

    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise RuntimeError("the host emulation needs the CUDA toolkit's headers (cuda_fp16.h); none found")
    digest = build_hash(("host-emulation",), EMULATION_FILES)
    name = f"hyperdomain_ops_emu_{digest}"
    root = Path(build_dir) if build_dir is not None else default_cache_root()
    info = BuildInfo(name=name, path=str(root / digest / f"{name}.so"), build_dir=str(root / digest),
                     emulation=True, cuda_home=str(cuda_home), torch=torch.__version__)

    def compile_into(tmp: Path):
        return cpp_extension.load(
            name=name,
            sources=[str(CSRC / "host_emulation.cpp")],
            extra_cflags=["-O2"],
            extra_include_paths=[str(cuda_home / "include")],
            build_directory=str(tmp),
            verbose=verbose,
            with_cuda=False,
        )

    return _cached_build(root, digest, name, compile_into, info)


CPU_SOURCES = ("winograd_cpu.cpp", "fir_cpu.cpp", "act_cpu.cpp")
CPU_HEADERS = ("cpu_kernels.h", "cpu_parallel.h")
CXX_ENV = "CXX"
CPU_ARCH_ENV = "HYPERDOMAIN_CPU_ARCH"
CPU_TARGETS = ("native", "portable")
# -ffp-contract=off: no fused multiply-adds (GCC contracts C++ by default where the target has
# them), and never -ffast-math: without contraction or reassociation every float32 operation is
# the one written, so the results are bit-identical whatever vector ISA -march picks
# (tests/test_ops_cpu_library.py). -Werror=missing-declarations: every exported function is
# declared in cpu_kernels.h.
_CPU_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off",
              "-Werror=missing-declarations")
# The oldest instruction set of each machine type, for a library that runs on any CPU of it
_PORTABLE_MARCH = {"x86_64": ("-march=x86-64", "-mtune=generic"), "amd64": ("-march=x86-64", "-mtune=generic"),
                   "aarch64": ("-march=armv8-a",), "arm64": ("-march=armv8-a",)}
# The instruction-set extensions worth naming in status() (the /proc/cpuinfo flag names)
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile",
              "asimd", "asimdhp", "sve", "sve2")


def cpu_target() -> str:
    """The CPU library's target from ``$HYPERDOMAIN_CPU_ARCH`` (read only): "native" (the default,
    this CPU's instructions) or "portable" (the machine type's baseline)."""
    target = os.environ.get(CPU_ARCH_ENV, "").strip().lower() or "native"
    if target not in CPU_TARGETS:
        raise ValueError(f"{CPU_ARCH_ENV} must be one of {CPU_TARGETS}, got {target!r}")
    return target


def _cpu_signature() -> str:
    """What -march=native depends on, so a cache shared between machines never serves a
    library built for other instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _cpu_description() -> str:
    """This CPU's model and notable instruction-set extensions, e.g. "AMD EPYC (avx avx2 fma avx512f)"."""
    model, flags = platform.processor() or platform.machine(), set()
    for line in _cpu_signature().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags.update(value.split())
    isa = [f for f in _ISA_FLAGS if f in flags]
    return f"{model} ({' '.join(isa)})" if isa else model


def _target_flags(target: str) -> tuple[tuple[str, ...], str]:
    """(-march flags, what they build for) for "native" or "portable"."""
    if target == "native":
        return ("-march=native",), _cpu_description()
    if target == "portable":
        machine = platform.machine().lower()
        flags = _PORTABLE_MARCH.get(machine, ())
        return flags, f"any {machine} ({' '.join(flags) or 'the compiler default'})"
    raise ValueError(f"target must be one of {CPU_TARGETS}, got {target!r}")


def build_cpu_library(build_dir: str | os.PathLike | None = None,
                      target: str | None = None) -> tuple["ctypes.CDLL", BuildInfo]:
    """Compile (or reuse) the CPU kernels (``csrc/*_cpu.cpp``, see ``CPU_SOURCES``) as one
    plain shared library for ctypes: no torch headers, so it builds in seconds with any C++17
    compiler (``$CXX``, else c++ or g++). Raises if there is none or it fails.

    target: "native" (-march=native: this CPU's vector instructions, cached per CPU) or
        "portable" (the machine type's baseline, e.g. -march=x86-64); default
        ``$HYPERDOMAIN_CPU_ARCH``, else "native". Both give bit-identical results (no FMA
        contraction, no fast-math), so the choice only trades speed for a library that runs
        on any CPU (a cache shared between different machines).
    """
    target = cpu_target() if target is None else target
    arch, built_for = _target_flags(target)
    flags = (*_CPU_FLAGS, *arch)
    cxx = os.environ.get(CXX_ENV) or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (set $CXX)")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as e:
        raise RuntimeError(f"C++ compiler {cxx!r} does not run: {e}") from None
    h = hashlib.sha256()
    # a portable build does not depend on this CPU, so machines sharing a cache share it
    cpu = _cpu_signature() if target == "native" else ""
    for part in (*((CSRC / f).read_bytes() for f in CPU_SOURCES + CPU_HEADERS), cxx.encode(), version.encode(),
                 " ".join(flags).encode(), cpu.encode(), sys.platform.encode()):
        h.update(part + b"\0")
    digest = f"cpu-{target}-" + h.hexdigest()[:20]
    name = "hyperdomain_cpu_kernels"
    root = Path(build_dir) if build_dir is not None else default_cache_root()
    info = BuildInfo(name=name, path=str(root / digest / f"{name}.so"), compiler=cxx, flags=list(flags),
                     target=target, built_for=built_for)

    def compile_into(tmp: Path):
        out = tmp / f"{name}.so"
        proc = subprocess.run([cxx, *flags, *(str(CSRC / f) for f in CPU_SOURCES), "-o", str(out)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["(no output)"])
            raise RuntimeError(f"{Path(cxx).name} failed on {', '.join(CPU_SOURCES)}: {err[0]}")
        return ctypes.CDLL(str(out))

    return _cached_build(root, digest, name, compile_into, info, load=lambda _n, p: ctypes.CDLL(str(p)))


def _cached_build(root: Path, digest: str, name: str, compile_into: Callable[[Path], ModuleType],
                  info: BuildInfo, load: Callable[[str, Path], ModuleType] = _import_so) -> tuple[ModuleType, BuildInfo]:
    """Load ``root/digest/name.so`` if present, else compile into a temp dir and rename it
    into place, under a file lock so concurrent processes (torchrun ranks) build once."""
    final = root / digest
    so_path = final / f"{name}.so"
    if so_path.exists():
        info.update(source="cache", build_seconds=0.0)
        return load(name, so_path), info

    root.mkdir(parents=True, exist_ok=True)
    with build_lock(root / f"{digest}.lock"):
        if so_path.exists():  # another process built it while we waited
            info.update(source="cache", build_seconds=0.0)
            return load(name, so_path), info
        if final.exists():  # a stale entry without its .so would block the rename forever
            shutil.rmtree(final, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
        start = time.perf_counter()
        try:
            module = compile_into(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.perf_counter() - start
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache entry is shared read-only
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not so_path.exists():
                raise
        info.update(source="built", build_seconds=round(seconds, 1))
        logger.info("stylegan2_ops: built %s in %.0f s", so_path, seconds)
        return module, info


LOCK_STALE_S = 30.0  # an exclusive lock file not refreshed for this long was left by a dead process
LOCK_TIMEOUT_S = 3600.0


@contextlib.contextmanager
def build_lock(path: Path, timeout: float = LOCK_TIMEOUT_S):
    """Holds an exclusive lock named by ``path`` across processes, so that concurrent builders
    (torchrun ranks) build once; correctness does not depend on it (builds are renamed into
    place atomically), only the duplicated work.

    With fcntl, ``flock`` on ``path`` (released by the OS if the holder dies). Without it
    (Windows), ``path`` with the suffix ".excl", created with O_CREAT | O_EXCL and removed on
    release; its holder refreshes its mtime every few seconds, so one not refreshed for
    LOCK_STALE_S (its process died) is taken over. Waits up to ``timeout`` seconds for it, then
    raises TimeoutError.
    """
    if fcntl is not None:
        with open(path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
        return
    path = path.with_suffix(".excl")
    _create_lock_file(path, timeout)
    stop = threading.Event()
    heartbeat = threading.Thread(target=_keep_fresh, args=(path, stop), name="stylegan2_ops build lock", daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _create_lock_file(path: Path, timeout: float) -> None:
    """Creates ``path`` exclusively, waiting while another process holds it and taking it over
    once it is stale."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return
        except FileExistsError:
            pass
        try:
            if time.time() - path.stat().st_mtime > LOCK_STALE_S:
                path.unlink()
                logger.info("stylegan2_ops: removed the stale lock file %s", path)
                continue
        except FileNotFoundError:  # released meanwhile
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for the build lock {path} (delete it if no build runs)")
        time.sleep(0.05)


def _keep_fresh(path: Path, stop: threading.Event) -> None:
    """Refreshes the lock file's mtime until ``stop``, so that waiters know its holder lives."""
    while not stop.wait(LOCK_STALE_S / 6):
        with contextlib.suppress(OSError):
            os.utime(path)


Builder = Callable[[], "tuple[ModuleType, BuildInfo]"]


class ExtensionLoader:
    """Tries the build once per process and remembers the outcome (module or error).

    ``functions`` must all be attributes of what the builder returns. ``what`` names it in
    messages, ``fallback`` says what runs instead. A failure warns once, in one line, and raises
    when ``required`` or in strict mode; a loader that does not ``honours_strict`` is for an
    optional speed-up with a fallback that is just as right (the CPU library), never an error
    in strict mode (that is for GPU CI).
    """

    def __init__(self, builder: Builder | None = None, functions: Sequence[str] = FUNCTIONS,
                 what: str = "CUDA extension",
                 fallback: str = f"using the reference PyTorch ops (set {STRICT_ENV}=1 to make this an error)",
                 honours_strict: bool = True):
        self._builder = builder or build_extension
        self._functions, self._what, self._fallback = tuple(functions), what, fallback
        self._honours_strict = honours_strict
        self._lock = threading.Lock()
        self._attempted = False
        self._module: ModuleType | None = None
        self._status: dict = {"state": "not_attempted"}
        self._error: BaseException | None = None
        self._warned = False

    def status(self) -> dict:
        return dict(self._status, strict=strict())

    def get(self, required: bool = False) -> ModuleType | None:
        """The extension module, or None after a failed build (warned once).

        Raises on failure when ``required`` (``impl="cuda"``) or in strict mode.
        """
        with self._lock:
            if not self._attempted:
                try:
                    self._module, info = self._builder()
                    missing = [f for f in self._functions if not hasattr(self._module, f)]
                    if missing:
                        raise RuntimeError(f"extension lacks {missing}")
                    self._status = {"state": "ok", **info}
                except Exception as e:  # any compiler/linker/import failure means: use the reference
                    self._module, self._error = None, e
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    self._status = {"state": "failed", "error": f"{type(e).__name__}: {first}"}
                    logger.info("stylegan2_ops: %s unavailable (%s)", self._what, self._status["error"])
                # set only now: a Ctrl-C during the first build leaves the next call to retry
                self._attempted = True
            if self._module is not None:
                return self._module
            if required or (strict() and self._honours_strict):
                raise RuntimeError(f"stylegan2_ops: {self._what} unavailable ({self._status['error']})"
                                   + ("" if required else f" and {STRICT_ENV}=1")) from self._error
            if not self._warned:
                self._warned = True
                warnings.warn(f"stylegan2_ops: {self._what} unavailable ({self._status['error']}); {self._fallback}",
                              RuntimeWarning, stacklevel=4)
            return None


LOADER = ExtensionLoader()

IMPLS = ("auto", "cuda", "ref")


def is_cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def kernels(op: str, impl: str, x: torch.Tensor) -> ModuleType | None:
    """The extension module if ``op`` should run its CUDA kernels on ``x``, else None (reference)."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "ref":
        return None
    if impl == "cuda" and not is_cuda(x):
        raise ValueError(f"{op}: impl='cuda' needs CUDA tensors, got a tensor on {x.device}")
    if not is_cuda(x):
        return None
    return LOADER.get(required=(impl == "cuda"))
