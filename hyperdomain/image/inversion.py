"""Putting a photo into the generator: the paper's II2S-style optimisation of a W+ latent.

Each photo gets one ``w`` per synthesis layer, all starting at the generator's mean latent, and
Adam (lr 0.01, 1000 steps) minimises, per photo,

    l2 * MSE(G(w), x) + lpips * LPIPS(down(G(w)), x_256) + p_norm * P(w)

with ``x`` the photo at the generator's size, ``down`` the antialiased bicubic downsampling to
256 px, and ``P`` the P-norm prior: ``LeakyReLU(5)`` of each ``w`` (undoing the mapping network's
last activation, where latents are roughly Gaussian), minus its mean, in the PCA basis of many
mapped latents, divided by the components' standard deviations, squared and averaged. It keeps
the latent where the generator's latents live, so the photo edits and stylises like a sample.

As in the paper's II2S (``randomize_noise=False``), the generator renders with its constant noise
buffers (``noise_mode="const"``), so a latent reproduces its photo exactly wherever it is
rendered again. Deliberate differences from the paper's code: a photo that is not aligned is
centre-cropped to a square rather than squeezed; the PCA is computed in closed form (the
covariance's eigenvectors, what IncrementalPCA converges to) and cached by generator fingerprint
as safetensors.

With an encoder (e4e, ReStyle: :mod:`hyperdomain.image.encoders`), a photo's W+ comes from one pass
(or a few) instead, in batches; ``refine`` steps of the same II2S optimisation may then start from
it rather than from the mean latent. Each latent's ``meta["method"]`` says how it was made
(``ii2s``, ``e4e``, ``restyle-e4e + ii2s refine 100``, ...).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .._version import __version__
from .alignment import Detector, align_face, aligns
from .encoders import PhotoEncoder, encode, photo_input
from .encoders.choice import encoder_digest, encoder_for
from ..model.domain import generator_meta
from ..errors import HyperdomainError, one_line
from .face_detectors import detector as default_detector
from ..files.pretrained import weights_home
from ..files.safetensors_files import PCA, read_own_file, write_own_file
from ..media.grids import downsample_bicubic
from ..model.latent import Latent
from .perceptual import load_lpips, lpips_distance
from .photos import Photo, check_side, image_digest, min_photo_side, to_tensor

log = logging.getLogger(__name__)

PCA_FORMAT_VERSION = 1
INVERSION_NOISE_MODES = ("const", "random")


@dataclass(frozen=True)
class InversionConfig:
    """The inversion's settings (the paper's II2S defaults); stored in every latent it makes."""

    steps: int = 1000
    lr: float = 0.01
    l2: float = 1.0
    lpips: float = 1.0
    p_norm: float = 1e-3
    pca_samples: int = 1_000_000  # the paper's; fewer compute faster and estimate the prior less well
    loss_size: int = 256  # LPIPS's resolution
    noise_mode: str = "const"
    seed: int = 0  # the PCA's latents (and the noise with noise_mode="random")

    def __post_init__(self) -> None:
        checks = [(self.steps >= 1, "steps", "an integer >= 1"), (0 < self.lr < math.inf, "lr", "a finite number > 0"),
                  (all(0 <= w < math.inf for w in (self.l2, self.lpips, self.p_norm)), "l2/lpips/p_norm",
                   "finite weights >= 0"),
                  (self.l2 + self.lpips > 0, "l2/lpips", "not both 0 (nothing would tie the latent to the photo)"),
                  (self.pca_samples >= 2, "pca_samples", ">= 2"), (self.loss_size >= 8, "loss_size", ">= 8"),
                  (self.noise_mode in INVERSION_NOISE_MODES, "noise_mode", f"one of {INVERSION_NOISE_MODES}"), (self.seed >= 0, "seed", ">= 0")]
        for ok, name, expected in checks:
            if not ok:
                raise HyperdomainError(f"invert: {name} must be {expected}, got {getattr(self, name.split('/')[0])!r}")


# ------------------------------------------------------------------------------------ the P-norm prior
@dataclass(frozen=True)
class LatentPCA:
    """The PCA of ``LeakyReLU(5)(mapping(z))``: mean [w], components [k, w] (rows, by variance), std [k]."""

    mean: torch.Tensor
    components: torch.Tensor
    std: torch.Tensor


def latent_pca(G, samples: int = InversionConfig.pca_samples, seed: int = 0, cache: bool = True,
               chunk: int = 10_000) -> LatentPCA:
    """The PCA of many mapped latents of ``G``, computed once per (fingerprint, samples, seed) and
    cached under ``$HYPERDOMAIN_HOME/pca`` (safetensors)."""
    path = weights_home() / "pca" / f"{G.fingerprint}-{samples}-{seed}.safetensors"
    if cache and path.is_file():
        cached = _cached_pca(path, G.w_dim)
        if cached is not None:
            return cached
    gen = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(G.w_dim, dtype=torch.float64, device=G.device)
    outer = torch.zeros(G.w_dim, G.w_dim, dtype=torch.float64, device=G.device)
    with torch.no_grad():
        for start in range(0, samples, chunk):
            z = torch.randn(min(chunk, samples - start), G.z_dim, generator=gen).to(G.device)
            x = F.leaky_relu(G.mapping(z), 5.0).double()
            total += x.sum(0)
            outer += x.T @ x
    mean = total / samples
    cov = (outer - samples * torch.outer(mean, mean)) / (samples - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)
    pca = LatentPCA(mean.float().cpu(), evecs[:, order].T.contiguous().float().cpu(),
                    evals[order].clamp_min(1e-12).sqrt().float().cpu())
    if cache:
        try:
            write_own_file(path, PCA, PCA_FORMAT_VERSION, {"mean": pca.mean, "components": pca.components,
                                                            "std": pca.std},
                           {"generator_fingerprint": G.fingerprint, "samples": str(samples), "seed": str(seed)})
        except HyperdomainError:
            pass  # a read-only weights folder: the PCA is computed again next time
    return pca


def _cached_pca(path: Path, w_dim: int) -> LatentPCA | None:
    """The PCA cached at ``path``, or None (with a warning) when the file is not a sound one for
    ``w_dim``: damaged, of another shape, non-finite or with a zero deviation. It is a cache: the
    caller computes the PCA again and replaces it."""
    try:
        _, t = read_own_file(path, PCA, PCA_FORMAT_VERSION, "latent PCA")
        problem = _pca_problem(t, w_dim)
    except HyperdomainError as e:
        problem = str(e).removeprefix(f"{path}: ")
    if problem is None:
        return LatentPCA(t["mean"].float(), t["components"].float(), t["std"].float())
    log.warning("%s: %s; computing the latent PCA again", one_line(path), one_line(problem))
    return None


def _pca_problem(t: dict[str, torch.Tensor], w_dim: int) -> str | None:
    if set(t) != {"mean", "components", "std"}:
        return f"holds tensors {sorted(t)[:4]}, not mean, components, std"
    k = t["components"].shape[0] if t["components"].ndim == 2 else -1
    shapes = {name: list(x.shape) for name, x in t.items()}
    if not 1 <= k <= w_dim or shapes != {"mean": [w_dim], "components": [k, w_dim], "std": [k]}:
        return f"shapes {shapes} do not fit latents of {w_dim} numbers"
    if not all(x.is_floating_point() and bool(torch.isfinite(x).all()) for x in t.values()):
        return "holds numbers that are not finite floats (NaN or inf)"
    if not bool((t["std"] > 0).all()):
        return "holds a standard deviation <= 0"
    return None


def p_norm(ws: torch.Tensor, pca: LatentPCA) -> torch.Tensor:
    """The P-norm prior of W+ ``ws`` ``[B, L, w]``, per latent ``[B]``."""
    v = F.leaky_relu(ws, 5.0) - pca.mean.to(ws)
    return ((v @ pca.components.to(ws).T) / pca.std.to(ws)).square().mean(dim=(1, 2))


# ------------------------------------------------------------------------------------ photos
PhotoLike = Union[str, os.PathLike, Image.Image, Photo, "PreparedPhoto"]


@dataclass
class PreparedPhoto:
    """A photo as the generator sees it: its name, the image at the generator's size (aligned as its
    training images were, or centre-cropped) and whether it was aligned; its tensors are made once."""

    name: str
    image: Image.Image
    aligned: bool
    _tensors: dict = field(default_factory=dict, repr=False)

    def tensor(self, size: int | None = None) -> torch.Tensor:
        """``[1, 3, S, S]`` in ``[-1, 1]``, at ``size`` (Lanczos, as the paper's code) or the image's own."""
        if size not in self._tensors:
            self._tensors[size] = to_tensor(self.image, size)
        return self._tensors[size]

    @property
    def digest(self) -> str:
        return image_digest(self.image)


def prepare_photo(G, photo: PhotoLike, align: bool | None = None,
                  detector: Detector | Callable[[], Detector] | None = None, index: int = 0) -> PreparedPhoto:
    """The photo as the generator sees it: read once (a path), checked for the generator's smallest
    side, aligned (``align``: by default for face generators, :func:`~.alignment.aligns`) or
    centre-cropped, at the generator's size."""
    if isinstance(photo, PreparedPhoto):
        return photo
    photo = Photo.of(photo, index)
    check_side(photo.image, photo.name, min_photo_side(G.resolution))
    aligned = aligns(G, align)
    if aligned:
        img = align_face(photo.image, G.resolution, detector if detector is not None else default_detector(),
                         what=photo.name)
    else:
        side = min(photo.image.size)
        left, top = (photo.image.size[0] - side) // 2, (photo.image.size[1] - side) // 2
        img = photo.image.crop((left, top, left + side, top + side)).resize((G.resolution, G.resolution),
                                                                             Image.LANCZOS)
    return PreparedPhoto(photo.name, img, aligned)


def prepare_photos(G, photos: Sequence[PhotoLike], align: bool | None = None,
                   detector: Detector | Callable[[], Detector] | None = None) -> list[PreparedPhoto]:
    """:func:`prepare_photo` for each (a PIL image without a name is ``image{i}``)."""
    return [prepare_photo(G, p, align, detector, i) for i, p in enumerate(photos)]


# ------------------------------------------------------------------------------------ inversion
EncoderLike = Union[PhotoEncoder, str, os.PathLike, None]


def invert(G, photos: Sequence[PhotoLike], config: InversionConfig | None = None, *,
           encoder: EncoderLike = None, restyle_steps: int | None = None, refine: int = 0, batch: int = 8,
           check: bool = True, align: bool | None = None, detector: Detector | None = None,
           lpips: torch.nn.Module | None = None, lpips_backbone: str | os.PathLike = "imagenet",
           pca: LatentPCA | None = None, progress: bool = True,
           callback: Callable[[int, dict[str, float]], None] | None = None) -> list[Latent]:
    """Invert ``photos`` into W+ latents of ``G``: prepared photos as they are
    (:func:`prepare_photos`: named, at the generator's size), else paths, PIL images or
    :class:`~.photos.Photo` s, prepared here (``align``, ``detector``).

    Without ``encoder`` (or ``"ii2s"``): II2S, all photos in one batch, ``config.steps`` steps from
    the mean latent. With one (a :class:`PhotoEncoder`, ``"auto"``, ``"e4e"``, ``"restyle-e4e"``,
    ``"restyle-psp"`` or a file; see :func:`~.encoders.choice.encoder_for`, ``check``: its generator
    fingerprint too): photos go through it ``batch`` at a time (ReStyle: ``restyle_steps`` passes,
    default its own), then ``refine`` II2S steps (``config``'s other settings) start from its W+.

    Each :class:`Latent`'s ``meta`` holds the image's name and digest, whether it was aligned, the
    ``method``, the settings, the final losses and the reconstruction's PSNR (dB, 8-bit pixels) and
    LPIPS. ``lpips``: a loaded LPIPS module (else one is loaded with ``lpips_backbone``); ``pca``: a
    precomputed prior.
    """
    config = config or InversionConfig()
    if not photos:
        raise HyperdomainError("invert: no photos given")
    if type(refine) is not int or refine < 0 or type(batch) is not int or batch < 1:
        raise HyperdomainError(f"invert: refine must be an integer >= 0 and batch >= 1, got {refine!r}, {batch!r}")
    if restyle_steps is not None and (type(restyle_steps) is not int or restyle_steps < 1):
        raise HyperdomainError(f"invert: restyle_steps must be an integer >= 1, got {restyle_steps!r}")
    encoder = encoder_for(G, encoder, check=check, what="invert: encoder")
    if encoder is not None and restyle_steps is not None and not encoder.config.iterative:
        raise HyperdomainError(f"invert: restyle_steps is for ReStyle encoders; this one is {encoder.config.kind}, "
                               f"one pass")
    backbone = "given" if lpips is not None else str(lpips_backbone)
    lpips = lpips if lpips is not None else load_lpips(G.device, lpips_backbone)
    if encoder is None:
        return _ii2s(G, prepare_photos(G, photos, align, detector), config, lpips, backbone, pca, progress, callback)
    refine_config = replace(config, steps=refine) if refine else None
    if refine_config is not None and pca is None:
        pca = latent_pca(G, config.pca_samples, config.seed)
    out: list[Latent] = []
    bar = tqdm(total=len(photos), desc=f"{encoder.config.kind} {len(photos)} photo{'s' * (len(photos) > 1)}",
               unit="photo", disable=not progress or None, dynamic_ncols=True)
    for start in range(0, len(photos), batch):  # a folder of photos: only a batch held at a time
        chunk = [prepare_photo(G, p, align, detector, start + i) for i, p in enumerate(photos[start:start + batch])]
        ws = _encode(G, encoder, chunk, restyle_steps)
        bar.update(len(chunk))
        out += _finish(G, chunk, ws, encoder, restyle_steps, config, refine_config, lpips, backbone, pca, progress,
                       callback)
    bar.close()
    return out


def _ii2s(G, prepared: list[PreparedPhoto], config: InversionConfig, lpips, backbone: str, pca, progress,
          callback) -> list[Latent]:
    pca = pca if pca is not None else latent_pca(G, config.pca_samples, config.seed)
    size = _loss_size(G, config)
    target = torch.cat([p.tensor() for p in prepared]).to(G.device)  # [B, 3, R, R]
    target_small = torch.cat([p.tensor(size) for p in prepared]).to(G.device)  # Lanczos, as the paper's
    ws, losses = _optimise(G, target, target_small, config, lpips, pca, progress, callback)
    with torch.no_grad():
        recon = G.synthesis(ws, noise_mode=config.noise_mode).float()
        quality = _quality(recon, target, target_small, lpips)
    out = []
    for i, photo in enumerate(prepared):
        meta = {**generator_meta(G), "image": photo.name, "image_digest": photo.digest, "aligned": photo.aligned,
                "method": "ii2s", "inversion": asdict(config), "losses": {k: v[i] for k, v in losses.items()},
                "psnr": quality["psnr"][i], "lpips": quality["lpips"][i],
                "lpips_backbone": backbone,
                "hyperdomain_version": __version__}
        out.append(Latent(ws[i].detach().cpu(), meta))
    return out


@torch.no_grad()
def _encode(G, encoder: PhotoEncoder, prepared: list[PreparedPhoto], restyle_steps: int | None) -> torch.Tensor:
    """W+ ``[B, num_ws, w_dim]`` on ``G``'s device: the photos as the official transforms make them
    (the aligned image resized to the encoder's input), ReStyle rendering its guesses with ``G``'s
    constant noise (as its official inference, ``randomize_noise=False``)."""
    encoder.to(G.device)
    x = torch.cat([photo_input(p.image, encoder.config.input_size) for p in prepared]).to(G.device)

    def render(ws: torch.Tensor) -> torch.Tensor:
        return G.synthesis(ws, noise_mode="const").float()

    n_iters = restyle_steps if encoder.config.iterative else None
    ws = encode(encoder, x, render=render if encoder.config.iterative else None, n_iters=n_iters).float()
    if not bool(torch.isfinite(ws).all()):
        bad = [p.name for p, ok in zip(prepared, torch.isfinite(ws).flatten(1).all(1)) if not ok]
        raise HyperdomainError(f"invert: the {encoder.config.kind} encoder gave a latent that is not finite for "
                               f"{bad[0]} (its weights are broken: {encoder.meta.get('file') or 'given encoder'})")
    return ws


def _finish(G, prepared: list[PreparedPhoto], ws: torch.Tensor, encoder: PhotoEncoder, restyle_steps: int | None,
            config: InversionConfig, refine: InversionConfig | None, lpips, backbone: str, pca, progress,
            callback) -> list[Latent]:
    """The encoded batch, refined by II2S (``refine``: ``config`` with its steps) when asked, measured
    at ``config``'s loss size, with its record."""
    size = _loss_size(G, config)
    target = torch.cat([p.tensor() for p in prepared]).to(G.device)
    target_small = torch.cat([p.tensor(size) for p in prepared]).to(G.device)
    losses: dict[str, list[float]] = {}
    if refine is not None:
        ws, losses = _optimise(G, target, target_small, refine, lpips, pca, progress, callback, start=ws)
    with torch.no_grad():
        recon = G.synthesis(ws, noise_mode=refine.noise_mode if refine else "const").float()
        quality = _quality(recon, target, target_small, lpips)
    kind = encoder.config.kind
    passes = (restyle_steps or encoder.config.n_iters) if encoder.config.iterative else 1
    record = {"kind": kind, "file": str(encoder.meta.get("file", "")), "source": str(encoder.meta.get("source", "")),
              "digest": encoder_digest(encoder), "generator_fingerprint": encoder.meta.get("generator_fingerprint"),
              "passes": passes}
    method = kind + (f" + ii2s refine {refine.steps}" if refine is not None else "")
    out = []
    for i, photo in enumerate(prepared):
        meta = {**generator_meta(G), "image": photo.name, "image_digest": photo.digest, "aligned": photo.aligned,
                "method": method, "encoder": record}
        if refine is not None:
            meta.update(inversion=asdict(refine), losses={k: v[i] for k, v in losses.items()})
        meta.update(psnr=quality["psnr"][i], lpips=quality["lpips"][i], lpips_backbone=backbone,
                    hyperdomain_version=__version__)
        out.append(Latent(ws[i].detach().cpu(), meta))
    return out


def _loss_size(G, config: InversionConfig) -> int:
    size = min(config.loss_size, G.resolution)
    if G.resolution % size:
        raise HyperdomainError(f"invert: loss_size {size} does not divide the generator's {G.resolution} px")
    return size


def _optimise(G, target: torch.Tensor, target_small: torch.Tensor, config: InversionConfig, lpips,
              pca: LatentPCA, progress: bool, callback,
              start: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Adam on W+ from ``start`` (an encoder's guess) or the mean latent."""
    factor = G.resolution // target_small.shape[-1]
    b = len(target)
    if start is None:
        ws = G.mean_latent().detach().clone()[None, None].repeat(b, G.num_ws, 1).requires_grad_(True)
    else:
        ws = start.detach().clone().to(G.device, torch.float32).requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.steps), desc=f"{'refine' if start is not None else 'invert'} {b} photo{'s' * (b > 1)}",
               unit="step", disable=not progress or None,
               dynamic_ncols=True)
    parts: dict[str, torch.Tensor] = {}
    for step in bar:
        noise = None if config.noise_mode == "const" else G.draw_noise(b, gen)
        img = G.synthesis(ws, noise=noise) if noise is not None else G.synthesis(ws, noise_mode="const")
        parts = {"l2": (img - target).square().mean(dim=(1, 2, 3)),
                 "lpips": lpips_distance(lpips, downsample_bicubic(img, factor), target_small),
                 "p_norm": p_norm(ws, pca)}
        total = config.l2 * parts["l2"] + config.lpips * parts["lpips"] + config.p_norm * parts["p_norm"]
        if not bool(torch.isfinite(total).all()):
            raise HyperdomainError(f"invert: step {step + 1}: the loss is not finite; try a lower --lr")
        opt.zero_grad(set_to_none=True)
        total.sum().backward()  # a sum: each photo's latent gets its own loss's gradient
        try:
            opt.step()
        except RuntimeError as e:  # Adam's step overflows float32 itself (a learning rate past ~3e37)
            if "overflow" not in str(e):
                raise
            raise HyperdomainError(f"invert: step {step + 1}: the optimiser's step overflowed; try a lower --lr "
                                   f"(got {config.lr:g})") from None
        if not bool(torch.isfinite(ws).all()):
            raise HyperdomainError(f"invert: step {step + 1}: the latent is not finite; try a lower --lr "
                                   f"(got {config.lr:g})")
        values = {k: float(v.detach().mean()) for k, v in parts.items()}
        bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
        if callback is not None:
            callback(step + 1, values)
    bar.close()
    return ws.detach(), {k: [float(x) for x in v.detach().cpu()] for k, v in parts.items()}


def _quality(recon: torch.Tensor, target: torch.Tensor, target_small: torch.Tensor, lpips) -> dict[str, list[float]]:
    """PSNR of the 8-bit reconstruction against the photo, and LPIPS at the loss size."""
    pix = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731 - the pixels save_grid writes
    mse = (pix(recon) - pix(target)).square().mean(dim=(1, 2, 3))
    psnr = [float(10 * math.log10(255.0**2 / max(float(m), 1e-10))) for m in mse]
    d = lpips_distance(lpips, downsample_bicubic(recon, recon.shape[-1] // target_small.shape[-1]), target_small)
    return {"psnr": psnr, "lpips": [float(x) for x in d.cpu()]}


# ------------------------------------------------------------------------------------ a cache
def invert_cached(G, photo: PhotoLike, config: InversionConfig | None = None, *,
                  align: bool | None = None, detector: Detector | None = None, lpips: torch.nn.Module | None = None,
                  lpips_backbone: str | os.PathLike = "imagenet", progress: bool = True) -> Latent:
    """:func:`invert` for one photo, remembered under ``$HYPERDOMAIN_HOME/inversions`` by generator
    fingerprint, the prepared image's digest and the settings: the same reference is inverted once."""
    config = config or InversionConfig()
    prepared = prepare_photo(G, photo, align, detector)
    settings = json.dumps({**asdict(config), "lpips": str(lpips_backbone)}, sort_keys=True)
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    path = weights_home() / "inversions" / f"{G.fingerprint}-{prepared.digest}-{key}.safetensors"
    if path.is_file():
        try:
            return Latent.load(path, generator=G)
        except HyperdomainError:
            pass  # a damaged cache entry is made again
    latent = invert(G, [prepared], config, lpips=lpips, lpips_backbone=lpips_backbone, progress=progress)[0]
    try:
        latent.save(path)
    except HyperdomainError:
        pass  # a read-only weights folder: inverted again next time
    return latent
