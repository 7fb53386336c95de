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
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from .._version import __version__
from .alignment import Detector, align_face
from ..model.domain import generator_meta
from ..errors import HyperdomainError, one_line
from .face_detectors import detector as default_detector
from ..files.pretrained import weights_home
from ..files.safetensors_files import PCA, read_own_file, write_own_file
from ..media.grids import downsample_bicubic
from ..model.latent import Latent
from .perceptual import load_lpips, lpips_distance
from .photos import image_digest, min_photo_side, read_photo, to_tensor

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
def prepare_photo(G, photo: str | os.PathLike | Image.Image, align: bool | None = None,
                  detector: Detector | Callable[[], Detector] | None = None, what: str | None = None) -> Image.Image:
    """The photo as the generator sees it: aligned as its training images were (``align``: default
    on for face generators, ``G.alignment``) or centre-cropped, at the generator's size."""
    img = photo if isinstance(photo, Image.Image) else read_photo(photo, min_photo_side(G.resolution))
    what = what or (one_line(photo) if not isinstance(photo, Image.Image) else "photo")
    if align is None:
        align = getattr(G, "alignment", None) == "ffhq"
    if align:
        if detector is None:
            detector = default_detector()
        return align_face(img, G.resolution, detector, what=what)
    side = min(img.size)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((G.resolution, G.resolution), Image.LANCZOS)


# ------------------------------------------------------------------------------------ inversion
def invert(G, photos: Sequence[str | os.PathLike | Image.Image], config: InversionConfig | None = None, *,
           align: bool | None = None, detector: Detector | None = None, lpips: torch.nn.Module | None = None,
           lpips_backbone: str | os.PathLike = "imagenet", pca: LatentPCA | None = None, progress: bool = True,
           callback: Callable[[int, dict[str, float]], None] | None = None) -> list[Latent]:
    """Invert ``photos`` (paths or PIL images) into W+ latents of ``G``, all in one batch.

    Each :class:`Latent`'s ``meta`` holds the image's name and digest, the settings, the final
    losses and the reconstruction's PSNR (dB, 8-bit pixels) and LPIPS. ``lpips``: a loaded LPIPS
    module (else one is loaded with ``lpips_backbone``); ``pca``: a precomputed prior.
    """
    config = config or InversionConfig()
    if not photos:
        raise HyperdomainError("invert: no photos given")
    names = [Path(p).name if not isinstance(p, Image.Image) else f"image{i}" for i, p in enumerate(photos)]
    prepared = [prepare_photo(G, p, align, detector) for p in photos]
    aligned = bool(getattr(G, "alignment", None) == "ffhq") if align is None else bool(align)
    backbone = "given" if lpips is not None else str(lpips_backbone)
    lpips = lpips if lpips is not None else load_lpips(G.device, lpips_backbone)
    pca = pca if pca is not None else latent_pca(G, config.pca_samples, config.seed)
    ws, losses = _optimise(G, prepared, config, lpips, pca, progress, callback)
    with torch.no_grad():
        recon = G.synthesis(ws, noise_mode=config.noise_mode).float()
        quality = _quality(recon, prepared, lpips, _loss_size(G, config))
    out = []
    for i, name in enumerate(names):
        meta = {**generator_meta(G), "image": name, "image_digest": image_digest(prepared[i]), "aligned": aligned,
                "inversion": asdict(config), "losses": {k: v[i] for k, v in losses.items()},
                "psnr": quality["psnr"][i], "lpips": quality["lpips"][i],
                "lpips_backbone": backbone,
                "hyperdomain_version": __version__}
        out.append(Latent(ws[i].detach().cpu(), meta))
    return out


def _loss_size(G, config: InversionConfig) -> int:
    size = min(config.loss_size, G.resolution)
    if G.resolution % size:
        raise HyperdomainError(f"invert: loss_size {size} does not divide the generator's {G.resolution} px")
    return size


def _optimise(G, photos: list[Image.Image], config: InversionConfig, lpips, pca: LatentPCA, progress: bool,
              callback) -> tuple[torch.Tensor, dict[str, list[float]]]:
    size = _loss_size(G, config)
    factor = G.resolution // size
    target = torch.cat([to_tensor(p) for p in photos]).to(G.device)  # [B, 3, R, R]
    target_small = torch.cat([to_tensor(p, size) for p in photos]).to(G.device)  # Lanczos, as the paper's
    b = len(photos)
    ws = G.mean_latent().detach().clone()[None, None].repeat(b, G.num_ws, 1).requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.steps), desc=f"invert {b} photo{'s' * (b > 1)}", unit="step", disable=not progress or None,
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


def _quality(recon: torch.Tensor, photos: list[Image.Image], lpips, size: int) -> dict[str, list[float]]:
    """PSNR of the 8-bit reconstruction against the photo, and LPIPS at the loss size."""
    target = torch.cat([to_tensor(p) for p in photos]).to(recon.device)
    pix = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731 - the pixels save_grid writes
    mse = (pix(recon) - pix(target)).square().mean(dim=(1, 2, 3))
    psnr = [float(10 * math.log10(255.0**2 / max(float(m), 1e-10))) for m in mse]
    small = torch.cat([to_tensor(p, size) for p in photos]).to(recon.device)
    d = lpips_distance(lpips, downsample_bicubic(recon, recon.shape[-1] // size), small)
    return {"psnr": psnr, "lpips": [float(x) for x in d.cpu()]}


# ------------------------------------------------------------------------------------ a cache
def invert_cached(G, photo: str | os.PathLike | Image.Image, config: InversionConfig | None = None, *,
                  align: bool | None = None, detector: Detector | None = None, lpips: torch.nn.Module | None = None,
                  lpips_backbone: str | os.PathLike = "imagenet", progress: bool = True) -> Latent:
    """:func:`invert` for one photo, remembered under ``$HYPERDOMAIN_HOME/inversions`` by generator
    fingerprint, the prepared image's digest and the settings: the same reference is inverted once."""
    config = config or InversionConfig()
    prepared = prepare_photo(G, photo, align, detector)
    settings = json.dumps({**asdict(config), "lpips": str(lpips_backbone)}, sort_keys=True)
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    path = weights_home() / "inversions" / f"{G.fingerprint}-{image_digest(prepared)}-{key}.safetensors"
    if path.is_file():
        try:
            return Latent.load(path, generator=G)
        except HyperdomainError:
            pass  # a damaged cache entry is made again
    latent = invert(G, [prepared], config, align=False, lpips=lpips, lpips_backbone=lpips_backbone,
                    progress=progress)[0]
    latent.meta["image"] = Path(photo).name if not isinstance(photo, Image.Image) else latent.meta["image"]
    latent.meta["aligned"] = bool(getattr(G, "alignment", None) == "ffhq") if align is None else bool(align)
    try:
        latent.save(path)
    except HyperdomainError:
        pass  # a read-only weights folder: inverted again next time
    return latent
