"""A person's own photo in any domain: align, invert (or reuse a latent), render in each domain.

The inverted latent is the photo's place in the generator; a domain vector changes the generator,
not the latent, so the same latent rendered with each domain shows the same person in each.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..model.domain import Domain
from ..errors import HyperdomainError
from .inversion import EncoderLike, InversionConfig, PhotoLike, invert, prepare_photos
from ..model.latent import Latent


@dataclass
class Stylized:
    """One photo's row: the photo as the generator sees it, its reconstruction, and one image per
    domain (each ``[3, H, W]`` in ``[-1, 1]``), with the latent they were rendered from."""

    name: str
    photo: torch.Tensor
    reconstruction: torch.Tensor
    styled: list[torch.Tensor]
    latent: Latent

    def row(self) -> torch.Tensor:
        """``[2 + domains, 3, H, W]``: photo, reconstruction, then each domain."""
        return torch.stack([self.photo, self.reconstruction, *self.styled])


def stylize(G, photos: Sequence[PhotoLike] = (), domains: Sequence[Domain] = (), *,
            latents: Sequence[Latent] = (), config: InversionConfig | None = None, encoder: EncoderLike = None,
            restyle_steps: int | None = None, refine: int = 0, batch: int = 8, check: bool = True,
            align: bool | None = None,
            detector=None, lpips: torch.nn.Module | None = None, lpips_backbone: str | os.PathLike = "imagenet",
            noise_mode: str = "const", progress: bool = True,
            callback: Callable[[int, dict[str, float]], None] | None = None) -> list[Stylized]:
    """Each photo (inverted now, in one batch) and each given latent (an earlier inversion),
    rendered in every domain. A latent carries no photo: its row shows the reconstruction twice.
    ``encoder``, ``restyle_steps``, ``refine``, ``check``: how photos are inverted, as for
    :func:`~.inversion.invert`. ``callback(step, losses)`` runs after each II2S step (a page's progress bar)."""
    if not photos and not latents:
        raise HyperdomainError("stylize: give photos or latent files")
    for d in domains:
        d.check_compatible(G, fingerprint=False)
    for lat in latents:
        lat.check_compatible(G, fingerprint=False)
    out: list[Stylized] = []
    if photos:
        prepared = prepare_photos(G, photos, align, detector)
        inverted = invert(G, prepared, config, encoder=encoder, restyle_steps=restyle_steps, refine=refine,
                          batch=batch, check=check, lpips=lpips, lpips_backbone=lpips_backbone, progress=progress,
                          callback=callback)
        for photo, lat in zip(prepared, inverted):
            out.append(_render(G, Path(photo.name).stem, photo.tensor()[0], lat, domains, noise_mode))
    for lat in latents:
        name = Path(lat.meta.get("file", "latent")).stem
        out.append(_render(G, name, None, lat, domains, noise_mode))
    return out


@torch.no_grad()
def _render(G, name: str, photo: torch.Tensor | None, latent: Latent, domains: Sequence[Domain],
            noise_mode: str) -> Stylized:
    # one batch: the source and every domain, the same latent in each row
    vectors = torch.stack([torch.zeros(G.num_domain_params)] + [d.vector for d in domains]).to(G.device)
    ws = latent.ws[None].expand(len(vectors), -1, -1).to(G.device)
    images = G.synthesis(ws, domain=vectors, noise_mode=noise_mode).float().cpu()
    return Stylized(name, images[0] if photo is None else photo, images[0], list(images[1:]), latent)
