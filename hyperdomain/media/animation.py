"""Animations: a grid of the same seeds changing over time, written as GIF, WebP or MP4.

Three modes, each a path through key states that the frames sample evenly:

- ``strength``: one domain's strength from 0 (the source generator) to 1 (the domain);
- ``morph``: from one domain to the next through a list (linear interpolation between neighbours);
- ``walk``: the latents of the seeds ``seed, seed + 1, ...`` in turn (spherical interpolation), in one
  domain or in the source.

With ``bounce`` the path goes back to where it started; a looping bounce then ends one frame
before its start, so the loop shows no frame twice. Every frame renders the same latents with the
generator's constant noise, so frames differ only by what the mode changes, and a key frame is
exactly what ``G.sample`` gives for it (the first frame of ``strength`` is the source's grid, the
last the domain's).

GIF and WebP are written with Pillow (always installed); MP4 with the ffmpeg binary that
``imageio-ffmpeg`` ships (``pip install 'hyperdomain[ui]'``), frame by frame, so a long video never
holds every frame in memory. GIF and WebP hold the frames until the end (Pillow writes them at
once); ``size`` keeps them small.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..model.domain import Domain
from ..errors import HyperdomainError, StorageError, one_line
from ..files.atomic import atomic_path
from ..files.kinds import ANIMATION_SUFFIXES
from .grids import grid_size, make_grid

__all__ = ["MODES", "ANIMATION_SUFFIXES", "animate", "animation_frames", "frame_count", "key_positions",
           "slerp", "write_animation"]

MODES = ("strength", "morph", "walk")
MAX_FRAMES = 100_000
MIN_FPS = 0.01  # a frame every 100 s: within every format's longest frame (GIF 655 s) and MP4's clock
MAX_FPS = {".gif": 50.0, ".webp": 120.0, ".mp4": 120.0}  # GIF delays are whole centiseconds; < 2 is slowed by browsers
MAX_SIDE = {".gif": 65535, ".webp": 16383, ".mp4": 16384}  # pixels: the formats' (and libx264's) largest frame
MP4_CRF = 18  # libx264's "visually lossless" end; quality=None gives this
UI_EXTRA = "pip install 'hyperdomain[ui]'"

DomainLike = Union[None, Domain, torch.Tensor]


# ------------------------------------------------------------------------------------------ paths
def frame_count(frames: int, bounce: bool = False, loop: bool = True) -> int:
    """How many frames an animation of ``frames`` (the way out) has: a bounce adds the way back,
    ``frames - 1`` more, one fewer when it loops (its last frame would repeat the first)."""
    if not bounce:
        return frames
    return 2 * frames - 1 - int(loop)


def key_positions(frames: int, keys: int, bounce: bool = False, loop: bool = True) -> list[tuple[int, float]]:
    """Where each frame lies on a path through ``keys`` key states: ``(k, t)`` is ``t`` of the way
    from key ``k`` to key ``k + 1`` (``t`` in ``[0, 1)``; the last key is ``(keys - 1, 0.0)``).

    The way out takes ``frames`` frames, from the first key to the last, evenly spaced; a
    ``bounce`` comes back the same way (see :func:`frame_count`).
    """
    if keys < 2 or frames < 2:
        raise HyperdomainError(f"an animation needs at least 2 frames and 2 key states, got {frames} and {keys}")
    out = []
    for i in range(frames):
        p = i * (keys - 1) / (frames - 1)
        k = min(int(math.floor(p)), keys - 1)
        out.append((k, p - k if k < keys - 1 else 0.0))
    out[-1] = (keys - 1, 0.0)  # exact, whatever the rounding
    if bounce:
        back = out[-2::-1]
        out += back[:-1] if loop else back
    return out


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between rows of ``a`` and ``b`` ``[N, z_dim]`` (angles of the
    directions, lengths interpolated linearly); ``t = 0`` is ``a`` exactly."""
    if t == 0:
        return a
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na, b / nb
    cos = (ua * ub).sum(1, keepdim=True).clamp(-1, 1)
    theta = torch.acos(cos)
    s = torch.sin(theta)
    near = s.abs() < 1e-6  # (anti)parallel: fall back to the straight line
    wa = torch.where(near, torch.full_like(s, 1 - t), torch.sin((1 - t) * theta) / torch.where(near, 1, s))
    wb = torch.where(near, torch.full_like(s, t), torch.sin(t * theta) / torch.where(near, 1, s))
    return (wa * ua + wb * ub) * ((1 - t) * na + t * nb)


def _lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a if t == 0 else (1 - t) * a + t * b


# ------------------------------------------------------------------------------------------ frames
def animation_frames(G, mode: str = "strength", domains: Sequence[DomainLike] = (), *, frames: int = 48,
                     n: int = 4, seed: int = 0, truncation: float = 0.7, size: int | None = None,
                     nrow: int | None = None, bounce: bool = False, loop: bool = True, walk_keys: int = 2,
                     batch_size: int = 8) -> Iterator[np.ndarray]:
    """The frames ``[H, W, 3]`` uint8 (grids of ``n`` images), one at a time; see :func:`animate`."""
    _check_mode(G, mode, domains, frames, n, size, walk_keys)
    vectors = [_vector(G, d) for d in domains]
    gen = torch.Generator().manual_seed(int(seed))
    z0 = torch.randn(n, G.z_dim, generator=gen)  # the latents G.sample(n, seed=seed) draws
    if mode == "walk":
        zs = [z0] + [torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(int(seed) + m))
                     for m in range(1, walk_keys)]
        dom = vectors[0] if vectors else None
        for k, t in key_positions(frames, walk_keys, bounce, loop):
            z = zs[k] if t == 0 else slerp(zs[k], zs[k + 1], t)
            yield _frame(G, _render(G, _mapped(G, z, truncation, batch_size), dom), size, nrow)
        return
    ws = _mapped(G, z0, truncation, batch_size)  # constant over the frames
    if mode == "strength":
        zero = torch.zeros_like(vectors[0])
        keys = [zero, vectors[0]]
    else:
        keys = vectors
    for k, t in key_positions(frames, len(keys), bounce, loop):
        d = keys[k] if t == 0 else _lerp(keys[k], keys[k + 1], t)
        yield _frame(G, _render(G, ws, d), size, nrow)


def _check_mode(G, mode: str, domains: Sequence[DomainLike], frames: int, n: int, size: int | None,
                walk_keys: int) -> None:
    if mode not in MODES:
        raise HyperdomainError(f"animation mode must be one of {', '.join(MODES)}, got {mode!r}")
    need = {"strength": "exactly 1 domain", "morph": "at least 2 domains", "walk": "at most 1 domain"}[mode]
    ok = {"strength": len(domains) == 1 and domains[0] is not None, "morph": len(domains) >= 2,
          "walk": len(domains) <= 1}[mode]
    if not ok:
        got = "only the source (None)" if mode == "strength" and domains == [None] else len(domains)
        raise HyperdomainError(f"mode {mode} needs {need}, got {got}")
    if not 2 <= frames <= MAX_FRAMES:
        raise HyperdomainError(f"frames must be in [2, {MAX_FRAMES}], got {frames}")
    if n < 1:
        raise HyperdomainError(f"n (images per frame) must be >= 1, got {n}")
    if size is not None and not 1 <= size <= G.resolution:
        raise HyperdomainError(f"size {size}: must be in [1, {G.resolution}] (images are only made smaller)")
    if mode == "walk" and walk_keys < 2:
        raise HyperdomainError(f"a walk needs at least 2 key seeds, got walk_keys={walk_keys}")


def _vector(G, d: DomainLike) -> torch.Tensor:
    """A domain as a ``(D,)`` float32 CPU vector (None: the source, zeros), checked against ``G``."""
    if d is None:
        return torch.zeros(G.num_domain_params)
    m = G._domain_matrix(d, 1, torch.device("cpu"), torch.float32)  # the generator's own checks
    return m[0].detach().clone()


@torch.no_grad()
def _mapped(G, z: torch.Tensor, truncation: float, batch_size: int) -> list[torch.Tensor]:
    """W per batch, as ``G.sample`` maps them (the same batches, so key frames match it bit for bit)."""
    return [G.mapping(z[i:i + batch_size].to(G.device), truncation) for i in range(0, len(z), batch_size)]


@torch.no_grad()
def _render(G, ws: list[torch.Tensor], domain: torch.Tensor | None) -> torch.Tensor:
    d = None if domain is None else domain.to(G.device)
    return torch.cat([G.synthesis(w, d, noise_mode="const").float().cpu() for w in ws])


def _frame(G, images: torch.Tensor, size: int | None, nrow: int | None) -> np.ndarray:
    if size is not None and size != G.resolution:
        images = F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return make_grid(images, nrow=nrow).numpy()


# ------------------------------------------------------------------------------------------ files
def check_animation_file(path: str | os.PathLike, fps: float, quality: int | None = None) -> None:
    """Refuse, before any work, an output this module cannot write: its type, fps, quality, and
    for MP4 the ``imageio-ffmpeg`` package."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ANIMATION_SUFFIXES:
        raise HyperdomainError(f"{path}: unknown animation type {path.suffix!r}; use one of "
                               f"{', '.join(ANIMATION_SUFFIXES)}")
    if not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS[suffix]):
        raise HyperdomainError(f"fps {fps:g}: must be in [{MIN_FPS:g}, {MAX_FPS[suffix]:g}] for {suffix}"
                               + (" (GIF stores delays in whole centiseconds)" if suffix == ".gif" else ""))
    if quality is not None:
        if suffix == ".gif":
            raise HyperdomainError(f"{path}: GIF has no quality setting (256-colour frames); leave quality unset")
        if not 1 <= quality <= 100:
            raise HyperdomainError(f"quality must be in [1, 100], got {quality}")
    if suffix == ".mp4":
        _ffmpeg()


def check_frame_size(path: str | os.PathLike, height: int, width: int) -> None:
    """Refuse frames larger than ``path``'s format holds (WebP 16383 px a side, MP4 16384, GIF 65535)."""
    path = Path(path)
    most = MAX_SIDE.get(path.suffix.lower())
    if most is not None and max(height, width) > most:
        raise HyperdomainError(f"{path}: frames of {width}x{height} px are larger than {path.suffix.lower()} holds "
                               f"({most} px a side); use fewer images (-n), smaller ones (--size) or another --nrow")


def _ffmpeg():
    """imageio-ffmpeg, an optional dependency (the ``ui`` extra): imported only to write MP4."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise HyperdomainError(f"writing .mp4 needs the imageio-ffmpeg package: {UI_EXTRA}") from None
    return imageio_ffmpeg


def write_animation(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 24.0, loop: bool = True,
                    quality: int | None = None) -> Path:
    """Write ``frames`` (``[H, W, 3]`` uint8, all one size) to ``path`` (.gif, .webp, .mp4), atomically.

    GIF: each frame quantised to its own 256-colour palette (median cut, no dithering); frames equal
    to the one before are merged into it (same total time). WebP: lossless, or lossy at ``quality``.
    MP4: H.264 (yuv420p, so odd sizes are padded with white to even), CRF 18 or ``(100 - quality)
    * 51 / 100``; streamed to ffmpeg frame by frame. ``loop``: GIF and WebP repeat for ever, else
    play once (MP4 players decide for themselves).
    """
    path = Path(path)
    check_animation_file(path, fps, quality)
    suffix = path.suffix.lower()
    frames = _size_checked(frames, path)
    if suffix == ".mp4":
        return _write_mp4(frames, path, fps, quality)
    images = [gif_frame(f) if suffix == ".gif" else Image.fromarray(f) for f in frames]
    if len(images) < 2:
        raise HyperdomainError(f"{path}: an animation needs at least 2 frames, got {len(images)}")
    duration = 1000.0 / fps
    options = {"save_all": True, "append_images": images[1:], "duration": duration}
    if loop:
        options["loop"] = 0  # 0: for ever
    if suffix == ".gif":
        options.update(format="GIF", disposal=1, optimize=False)
        if not loop:  # no NETSCAPE block at all: played once
            options.pop("loop", None)
    else:
        options.update(format="WEBP", lossless=quality is None, quality=100 if quality is None else quality,
                       method=4 if quality is None else 6, loop=0 if loop else 1)
    with atomic_path(path) as tmp:
        images[0].save(tmp, **options)
    return path


def _size_checked(frames: Iterable[np.ndarray], path: Path) -> Iterator[np.ndarray]:
    for i, f in enumerate(frames):
        if i == 0:
            check_frame_size(path, *_even(f).shape[:2])
        yield f


def gif_frame(frame: np.ndarray) -> Image.Image:
    """The palette image a GIF frame is stored as (what a reader decodes it back to)."""
    return Image.fromarray(frame).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def _write_mp4(frames: Iterable[np.ndarray], path: Path, fps: float, quality: int | None) -> Path:
    """Stream ``frames`` to imageio-ffmpeg's ffmpeg binary, its messages kept (not printed): a failure
    is one line with ffmpeg's reason, and a file ffmpeg could not finish is never renamed into place."""
    exe = _ffmpeg().get_ffmpeg_exe()
    crf = MP4_CRF if quality is None else round((100 - quality) * 51 / 100)
    rate = Fraction(fps).limit_denominator(1001)  # a small exact rate (24000/1001) for the container's clock
    count, size, proc, stopped = 0, None, None, False
    with atomic_path(path) as tmp, tempfile.TemporaryFile() as log:
        try:
            for f in frames:
                f = _even(f)
                if proc is None:
                    size = (f.shape[1], f.shape[0])
                    proc = subprocess.Popen(
                        [exe, "-y", "-v", "error", "-f", "rawvideo", "-vcodec", "rawvideo",
                         "-s", f"{size[0]}x{size[1]}", "-pix_fmt", "rgb24", "-r", str(rate), "-i", "-", "-an",
                         "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf), "-movflags", "+faststart",
                         "-f", "mp4", str(tmp)],
                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log,
                        start_new_session=True)  # Ctrl-C reaches this process only, which stops ffmpeg
                elif (f.shape[1], f.shape[0]) != size:
                    raise HyperdomainError(f"{path}: frame {count} is {f.shape[1]}x{f.shape[0]}, the first was "
                                           f"{size[0]}x{size[1]}")
                try:
                    proc.stdin.write(np.ascontiguousarray(f, dtype=np.uint8).tobytes())
                except BrokenPipeError:  # ffmpeg stopped: its messages say why
                    stopped = True
                    break
                count += 1
            if count < 2 and not stopped:
                raise HyperdomainError(f"{path}: an animation needs at least 2 frames, got {count}")
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            if proc.wait() != 0 or stopped:
                raise _ffmpeg_error(path, log, proc.returncode)
        finally:
            if proc is not None and proc.poll() is None:  # interrupted or failed: ffmpeg stops at once
                proc.kill()
                proc.wait()
    return path


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad a frame with white to even sides (yuv420p halves the colour resolution)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


def _ffmpeg_error(path: Path, log, returncode: int) -> HyperdomainError:
    """One line from ffmpeg's messages: its first, without the ``[muxer @ 0x...]`` prefix; a
    :class:`StorageError` when the storage failed it."""
    log.seek(0)
    text = log.read().decode("utf-8", "replace")
    lines = [re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", line.strip()) for line in text.splitlines() if line.strip()]
    reason = one_line(lines[0][:200]) if lines else f"exit status {returncode}"
    storage = any(s in text for s in ("No space left", "Input/output error", "Disk quota", "Read-only file system",
                                      "File too large"))
    return (StorageError if storage else HyperdomainError)(f"{path}: ffmpeg could not write the video ({reason})")


# ------------------------------------------------------------------------------------------ the call
def animate(G, path: str | os.PathLike, mode: str = "strength", domains: Sequence[DomainLike] | DomainLike = (),
            *, frames: int = 48, fps: float = 24.0, n: int = 4, seed: int = 0, truncation: float = 0.7,
            size: int | None = None, nrow: int | None = None, loop: bool = True, bounce: bool = False,
            walk_keys: int = 2, quality: int | None = None, batch_size: int = 8,
            on_frame: Callable[[], object] | None = None) -> Path:
    """Render an animation of a grid of ``n`` seeded images and write it to ``path`` (.gif, .webp, .mp4).

    ``mode``: ``"strength"`` (``domains``: one domain, strength 0 to 1), ``"morph"`` (two or more
    domains, in order; ``None`` stands for the source generator) or ``"walk"`` (in the one domain
    given, or the source: the latents of seeds ``seed`` ... ``seed + walk_keys - 1`` in turn).
    ``frames``: frames of the way out; ``bounce`` adds the way back (:func:`frame_count`). The
    grid's images are ``size`` px (downscaled; default the generator's), ``nrow`` per row.
    ``on_frame()`` is called after each frame (a progress bar's ``update``). Returns ``path``.

    Everything is checked before the first frame renders; the file is written atomically.
    """
    if domains is None:
        domains = []
    elif isinstance(domains, (Domain, torch.Tensor)):
        domains = [domains]
    domains = list(domains)
    check_animation_file(path, fps, quality)
    _check_mode(G, mode, domains, frames, n, size, walk_keys)
    for d in domains:
        if d is not None:
            _vector(G, d)  # a domain of another layout fails here, before any rendering
    side = size or G.resolution
    check_frame_size(path, *(x + x % 2 for x in grid_size(n, side, side, nrow)))  # MP4 pads to even sides
    stream = animation_frames(G, mode, domains, frames=frames, n=n, seed=seed, truncation=truncation, size=size,
                              nrow=nrow, bounce=bounce, loop=loop, walk_keys=walk_keys, batch_size=batch_size)
    if on_frame is not None:
        stream = _counted(stream, on_frame)
    return write_animation(stream, path, fps=fps, loop=loop, quality=quality)


def _counted(frames: Iterator[np.ndarray], on_frame: Callable[[], object]) -> Iterator[np.ndarray]:
    for f in frames:
        yield f
        on_frame()
