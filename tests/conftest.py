import argparse
import contextlib
import os
import shutil
import threading

# Huge pages for large CPU tensors, as the `hyperdomain` command runs; torch reads this once, at its
# first allocation, so it is set here, before torch is imported.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
# OpenMP's idle threads sleep at once instead of spinning. The tests run thousands of tiny
# parallel regions (the CPU library splits even small tensors over torch.get_num_threads()
# threads); on a machine busy with other work a spinning or descheduled worker stalls each of
# them, which made gradcheck tests up to 20 times slower. libgomp reads this when torch loads it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from hyperdomain.model.config import GeneratorConfig  # noqa: E402
from hyperdomain.model.generator import Generator  # noqa: E402

TINY = GeneratorConfig(resolution=32, style_dim=32, n_mlp=2, channels=(32, 32, 32, 32))


def make_tiny_generator(seed: int = 0, config: GeneratorConfig = TINY) -> Generator:
    """A random 32 px generator with non-zero noise strengths and biases (so every path matters)."""
    torch.manual_seed(seed)
    G = Generator(config, name="tiny")
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias") or name.endswith("to_rgb1.bias") \
                    or (name.startswith("to_rgbs") and name.endswith(".bias")):
                p.normal_(0, 0.3)
    G.requires_grad_(False)
    return G.eval()


def nan_on_call(fn, n: int):
    """``fn`` whose ``n``-th call (1-based) returns NaN times its value: a loss that blows up at one step."""
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = fn(*args, **kwargs)
        return value * float("nan") if calls["n"] == n else value

    return poisoned


@contextlib.contextmanager
def local_http_server(handler, **attrs):
    """A threaded HTTP server on a free loopback port with ``handler``; ``attrs`` set on the server
    (the handler reads them as ``self.server.X``); ``.url`` is its address."""
    from http.server import ThreadingHTTPServer

    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    for k, v in attrs.items():
        setattr(srv, k, v)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: tiny models' many small ops run fastest so, and the test
    machine's cores are shared (``pytestmark = pytest.mark.usefixtures("one_thread")`` for a file)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def tiny_G() -> Generator:
    return make_tiny_generator()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_G):
    """A port-format checkpoint file of the tiny generator, with an argparse Namespace like the port's."""
    path = tmp_path / "tiny.pt"
    latent_avg = torch.randn(tiny_G.w_dim)
    torch.save({"g_ema": tiny_G.state_dict(), "latent_avg": latent_avg,
                "args": argparse.Namespace(size=32, channel_multiplier=2)}, path)
    return path, latent_avg


# A tiny open_clip config: 32 px images, 32-d embeddings, the real tokenizer and context length.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory):
    """The tiny CLIP config as a JSON file (the CLI's --clip accepts such a path)."""
    import json

    path = tmp_path_factory.mktemp("clip") / "tiny_clip.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return path


def make_tiny_clip(config_path, seed: int = 0):
    """A frozen tiny CLIP encoder with random weights; seed 0 equals ``load_clip([config_path])``."""
    import json

    import open_clip

    from hyperdomain.guidance.clip import ClipEncoder

    cfg = json.loads(open(config_path).read())
    cfg = cfg.get("model_cfg", cfg)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    return ClipEncoder(model, open_clip.SimpleTokenizer(), f"tiny{seed}")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_config):
    return make_tiny_clip(tiny_clip_config)


# ---- the compiled kernels: on a GPU, or their host emulation on the CPU ----------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)

# A build run by a helper process: prints its BuildInfo as JSON on its last line.
_BUILD_SCRIPT = """
import json, sys
from stylegan2_ops import _build
kind, root = sys.argv[1], sys.argv[2]
if kind == "extension":
    _, info = _build.build_extension(arch_list=("9.0",), build_dir=root)  # explicit arch: no GPU needed
else:
    _, info = _build.build_host_emulation(build_dir=root)
print(json.dumps(info))
"""


class BackgroundBuild:
    """One compiled build (``kind``: "extension", the CUDA extension for sm_90, or "emulation",
    its host emulation) made by a helper process at the lowest CPU priority into ``root``, a
    cache root of its own, so the tests running meanwhile keep their CPU. ``info()`` waits for
    it (at full speed then: the tests wait too) and returns its BuildInfo; loading the module
    from ``root`` afterwards hits the cache."""

    def __init__(self, kind: str, root):
        import subprocess
        import sys

        self.kind, self.root = kind, root
        self._proc = subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, kind, str(root)], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      start_new_session=True, preexec_fn=lambda: os.nice(19))
        self._info = None

    def info(self) -> dict:
        import json

        if self._info is None:
            out, err = self._proc.communicate()
            if self._proc.returncode != 0:
                raise RuntimeError(f"the {self.kind} build failed (exit {self._proc.returncode}):\n{err[-6000:]}")
            self._info = json.loads(out.strip().splitlines()[-1])
        return self._info

    def stop(self):
        """Ends the helper and its compilers if the session ends before the build was needed."""
        import signal

        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.communicate()


def _needs_emulation(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return "emulated_ops" in item.fixturenames or (
        callspec is not None and callspec.params.get("kernel_device") == "emulated")


class OpsBuilds:
    """The compiled builds a session needs ("emulation", "extension"), all started together the
    first time a test needs one of them: the host emulation is one long compile and the
    extension's is led by one (ops.cpp), so on 2 cores they take about as long together as
    either alone, and the one needed later finishes while other tests run."""

    def __init__(self, roots: dict):
        self._roots, self._builds = roots, {}

    def get(self, kind: str) -> "BackgroundBuild | None":
        if kind not in self._roots:
            return None
        if not self._builds:
            self._builds = {k: BackgroundBuild(k, root) for k, root in self._roots.items()}
        return self._builds[kind]

    def stop(self):
        for build in self._builds.values():
            build.stop()


@pytest.fixture(scope="session")
def ops_builds(request, tmp_path_factory):
    """The session's :class:`OpsBuilds`: "emulation" if a selected test needs ``emulated_ops`` (the
    kernel tests' emulated half) and the CUDA headers are here, "extension" if one needs
    tests/test_ops_build.py's ``built`` and nvcc is here."""
    from stylegan2_ops import _build

    items = request.session.items
    roots = {}
    if any(_needs_emulation(i) for i in items) and _build.find_cuda_home() is not None:
        roots["emulation"] = tmp_path_factory.mktemp("ops_emulation")
    if NVCC is not None and any("built" in i.fixturenames for i in items):
        roots["extension"] = tmp_path_factory.mktemp("ops_cache")
    builds = OpsBuilds(roots)
    yield builds
    builds.stop()


@pytest.fixture(scope="session")
def emulated_ops(ops_builds, tmp_path_factory):
    """The extension's test build (``stylegan2_ops._build.build_host_emulation``): the .cu kernels
    and ops.cpp compiled for the CPU. Built once per session, about 40 s on 2 cores, together
    with the extension's build (``ops_builds``)."""
    from stylegan2_ops import _build

    build = ops_builds.get("emulation")
    if build is not None:
        build.info()
        root = build.root
    else:
        if _build.find_cuda_home() is None:
            pytest.skip("no CUDA toolkit headers: cannot build the kernels' host emulation")
        root = tmp_path_factory.mktemp("ops_emulation")
    module, _ = _build.build_host_emulation(build_dir=root)
    return module


# Emulated launches get at most this many blocks: small tests keep the launch as asked, large
# ones (over 64 * 256 items) run the kernels' grid-stride loops, and no test waits on millions
# of emulated threads.
EMULATED_MAX_BLOCKS = 64


# The emulated half is slow: it needs the host-emulation build (about 40 s on 2 cores).
@pytest.fixture(params=["cuda", pytest.param("emulated", marks=pytest.mark.slow)])
def kernel_device(request, monkeypatch):
    """The device for tests of the compiled kernels (``impl="cuda"``): "cuda" with the real
    extension where a GPU is present, and "cpu" with the host-emulated extension standing in."""
    from stylegan2_ops import _build

    torch.manual_seed(0)
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        return "cuda"
    module = request.getfixturevalue("emulated_ops")
    module.set_max_blocks(EMULATED_MAX_BLOCKS)
    monkeypatch.setattr(_build, "LOADER", _build.ExtensionLoader(lambda: (module, {"source": "host emulation"})))
    monkeypatch.setattr(_build, "is_cuda", lambda t: True)
    return "cpu"


# ---- the command line, in process -------------------------------------------------------------

def cli(*args):
    """``hyperdomain ARGS`` through click's runner (arguments may be paths or numbers)."""
    from click.testing import CliRunner

    from cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, *fragments):
    """Exit code 2, one line on stderr holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in result.output, err
    for f in fragments:
        assert f in err, err



def assert_storage_error(result, *fragments):
    """Exit code 1 from a handled storage fault (a full disk, an I/O error): one line on stderr
    holding every fragment, no exception escaped (click's runner would swallow its traceback)."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in result.output, err
    for f in fragments:
        assert f in err, err


# ---- a real small file system, for full disks ---------------------------------------------------

class SmallFs:
    """A mounted tmpfs of a few pages: ``path`` is its root; ``fill()`` makes it full."""

    def __init__(self, path):
        self.path = path
        self.filler = path / ".filler"

    def fill(self, leave: int = 0):
        """Fill the file system, then give back about ``leave`` bytes (tmpfs counts whole 4 KiB pages)."""
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        if leave:
            os.truncate(self.filler, max(0, self.filler.stat().st_size - leave))

    def free(self):
        """Remove the filler: the file system has its space again."""
        self.filler.unlink(missing_ok=True)

    def files(self) -> list[str]:
        """Every file under the root but the filler, as relative paths."""
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*")
                      if p.is_file() and p != self.filler)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A factory: ``small_tmpfs(size_kb)`` mounts a tmpfs of ``size_kb`` KiB and returns its :class:`SmallFs`;
    all are unmounted at teardown. Needs root (``mount -t tmpfs``) on Linux; skips where mounting fails."""
    import subprocess
    import sys

    mounted = []

    def make(size_kb: int = 64) -> SmallFs:
        if not sys.platform.startswith("linux"):
            pytest.skip("a small tmpfs needs Linux")
        root = tmp_path / f"tmpfs{len(mounted)}"
        root.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_kb)}k", "tmpfs", str(root)],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"cannot mount a tmpfs here ({e})")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); needs root")
        mounted.append(root)
        return SmallFs(root)

    yield make
    for root in reversed(mounted):
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


def sigterm_after_first_step(args, out, timeout: float = 120):
    """Run ``python -m cli.main ARGS`` from the repository, send it a real SIGTERM once its run folder
    ``out`` logs a step, and return (returncode, stdout, stderr)."""
    log = out / "log.jsonl"
    return sigterm_when(args, lambda: log.is_file() and bool(log.read_text().strip()), timeout)


def sigterm_when(args, ready, timeout: float = 120):
    """Run ``python -m cli.main ARGS`` from the repository, send it a real SIGTERM once ``ready()`` is
    true, and return (returncode, stdout, stderr)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *map(str, args)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr
