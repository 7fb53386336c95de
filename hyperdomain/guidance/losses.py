"""The paper's losses, as small pure functions of embeddings and images.

Image embeddings are L2-normalised rows ``[B, E]``. Text embeddings are template means
(see :mod:`hyperdomain.guidance.clip`): only their directions matter, every CLIP loss below is built on
cosines. Pairwise losses use each unordered pair ``i < j`` once. The one-shot (image) losses sit
beside them: the reference image's embeddings play the part of the text, and two reconstruction
losses tie the adapted generator's rendering of the reference's own latent to the reference.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..errors import HyperdomainError

__all__ = [
    "LossWeights", "clip_losses", "image_losses", "cosine", "direction_loss", "global_loss", "indomain_loss",
    "tt_direction_loss", "l2_loss", "clip_within_loss", "TEXT_LOSSES", "IMAGE_LOSSES",
]

_EPS = 1e-8


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of ``a [.., E]`` and ``b [.., E]`` (broadcast), 0 where either is zero.

    A zero image direction (the adapted generator still equals the source, as at ``d = 0``) gets a
    finite, useful gradient: ``b / (|b| eps)`` along the text direction.
    """
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(_EPS)


def direction_loss(src: torch.Tensor, trg: torch.Tensor, text_direction: torch.Tensor) -> torch.Tensor:
    """``mean_b 1 - cos(trg_b - src_b, text_direction)``; ``text_direction`` is ``[E]`` or ``[B, E]``."""
    return (1 - cosine(trg - src, text_direction)).mean()


def global_loss(trg: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``mean_b 1 - cos(trg_b, text)``; ``text`` is ``[E]`` or ``[B, E]``."""
    return (1 - cosine(trg, text)).mean()


def _pairs(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


def indomain_loss(src: torch.Tensor, trg: torch.Tensor) -> torch.Tensor:
    """Angle consistency: mean over ``i < j`` of ``(cos(src_i, src_j) - cos(trg_i, trg_j))^2``."""
    b = src.shape[0]
    if b < 2:
        raise HyperdomainError("the indomain loss needs a batch of at least 2")
    i, j = _pairs(b, src.device)
    return ((cosine(src[i], src[j]) - cosine(trg[i], trg[j])) ** 2).mean()


def tt_direction_loss(trg: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Mean over ``i < j`` of ``1 - cos(trg_i - trg_j, T_i - T_j)``, one text per sample ``[B, E]``.

    Pairs whose image and text deltas are both zero (the same domain and image twice, e.g. after
    convex mixing made two identical rows) carry no direction and are left out, as in the paper's
    code; a batch of only such pairs gives 0.
    """
    b = trg.shape[0]
    if texts.shape[0] != b:
        raise HyperdomainError(f"tt_direction: {b} images but {texts.shape[0]} text embeddings")
    if b < 2:
        raise HyperdomainError("the tt_direction loss needs a batch of at least 2")
    i, j = _pairs(b, trg.device)
    d_img, d_txt = trg[i] - trg[j], texts[i] - texts[j]
    keep = (d_img.norm(dim=-1) > _EPS) | (d_txt.norm(dim=-1) > _EPS)
    if not bool(keep.any()):
        return trg.sum() * 0
    return (1 - cosine(d_img[keep], d_txt[keep])).mean()


def clip_within_loss(src: torch.Tensor, trg: torch.Tensor, ref: torch.Tensor, ref_src: torch.Tensor) -> torch.Tensor:
    """``mean_b 1 - cos(trg_b - ref, src_b - ref_src)``: each adapted image stands to the reference
    as its source image stands to the source rendering of the reference's latent (``[E]`` each)."""
    return (1 - cosine(trg - ref, src - ref_src)).mean()


def l2_loss(domain: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Sum over convs of the mean of ``d_k^2`` (mean over the batch too for ``[B, D]``)."""
    d = domain if domain.ndim == 2 else domain[None]
    return sum((blk**2).mean() for blk in torch.split(d, list(dims), dim=1))


def clip_losses(active: Mapping[str, float],
                per_encoder: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                domain: torch.Tensor, domain_dims: Sequence[int]) -> dict[str, torch.Tensor]:
    """Each active loss summed over the CLIP encoders, ``l2`` of the domain vector(s), and
    ``"total"``, the sum weighted by ``active`` (``LossWeights.as_dict()``).

    ``per_encoder`` yields, per encoder: source image embeddings, target image embeddings, the
    direction text embedding(s) and the target text embedding(s) (``[E]``, or ``[B, E]`` for one
    domain per sample).
    """
    parts: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        parts[name] = parts[name] + value if name in parts else value

    for src, trg, direction, target in per_encoder:
        if "direction" in active:
            add("direction", direction_loss(src, trg, direction))
        if "tt_direction" in active:
            add("tt_direction", tt_direction_loss(trg, target))
        if "global" in active:
            add("global", global_loss(trg, target))
        if "indomain" in active:
            add("indomain", indomain_loss(src, trg))
    if "l2" in active:
        parts["l2"] = l2_loss(domain, domain_dims)
    parts["total"] = sum(active[name] * value for name, value in parts.items())
    return parts


def image_losses(active: Mapping[str, float],
                 per_encoder: Iterable[tuple[torch.Tensor, ...]], rec: torch.Tensor, ref: torch.Tensor,
                 lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                 domain: torch.Tensor, domain_dims: Sequence[int]) -> dict[str, torch.Tensor]:
    """The one-shot (image-guided) losses, and ``"total"`` weighted by ``active``.

    ``per_encoder`` yields, per encoder: source and adapted image embeddings ``[B, E]``, the
    reference's ``[E]``, the source rendering of the reference's latent ``[E]``, the adapted one
    ``[1, E]``, and the text direction ``[E]`` (or None without a target prompt). ``rec``/``ref``:
    the adapted rendering of the reference's latent and the reference, at the loss size;
    ``lpips(a, b)`` gives per-image distances. ``direction``, ``clip_within``, ``global``,
    ``indomain`` and ``text_direction`` are summed over the encoders, ``clip_ref`` averaged (as
    the paper's code does).
    """
    parts: dict[str, torch.Tensor] = {}
    n = 0

    def add(name: str, value: torch.Tensor) -> None:
        parts[name] = parts[name] + value if name in parts else value

    for src, trg, ref_emb, ref_src, rec_emb, text_direction in per_encoder:
        n += 1
        if "direction" in active:
            add("direction", direction_loss(src, trg, ref_emb - ref_src))
        if "clip_within" in active:
            add("clip_within", clip_within_loss(src, trg, ref_emb, ref_src))
        if "clip_ref" in active:
            add("clip_ref", global_loss(rec_emb, ref_emb))
        if "global" in active:
            add("global", global_loss(trg, ref_emb))
        if "indomain" in active:
            add("indomain", indomain_loss(src, trg))
        if "text_direction" in active:
            if text_direction is None:
                raise HyperdomainError("--loss text_direction needs a target prompt (--target) beside --image")
            add("text_direction", direction_loss(src, trg, text_direction))
    if "clip_ref" in parts:
        parts["clip_ref"] = parts["clip_ref"] / n
    if "l2_rec" in active:
        parts["l2_rec"] = (rec - ref).square().mean()
    if "lpips_rec" in active:
        parts["lpips_rec"] = lpips(rec, ref).mean()
    if "l2" in active:
        parts["l2"] = l2_loss(domain, domain_dims)
    parts["total"] = sum(active[name] * value for name, value in parts.items())
    return parts


# What each kind of run can weigh: a text run cannot use the reference-image losses and the other way
# round; tt_direction needs one domain per sample (the hypernetwork).
TEXT_LOSSES = ("direction", "global", "indomain", "tt_direction", "l2")
IMAGE_LOSSES = ("direction", "clip_within", "clip_ref", "l2_rec", "lpips_rec", "global", "indomain", "text_direction",
                "l2")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the losses in the total; 0 switches a loss off. ``global`` is spelled ``global_``."""

    direction: float = 1.0
    global_: float = 0.0
    indomain: float = 0.0
    tt_direction: float = 0.0
    l2: float = 0.0
    clip_within: float = 0.0
    clip_ref: float = 0.0
    l2_rec: float = 0.0
    lpips_rec: float = 0.0
    text_direction: float = 0.0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name.rstrip("_") for f in fields(cls))

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float]) -> "LossWeights":
        """From ``{"direction": 1, "indomain": 0.5}``; names not given are 0."""
        values = dict.fromkeys(cls.names(), 0.0)
        for name, w in weights.items():
            if name not in values:
                raise HyperdomainError(f"--loss: unknown loss {name!r}; expected one of {', '.join(cls.names())}")
            try:
                w = float(w)
            except (TypeError, ValueError):
                raise HyperdomainError(f"--loss {name}: weight must be a number, got {w!r}") from None
            if not (w >= 0 and w < float("inf")):
                raise HyperdomainError(f"--loss {name}: weight must be a finite number >= 0, got {w}")
            values[name] = w
        out = cls(**{_field(n): v for n, v in values.items()})
        if not any(out.as_dict().values()):
            raise HyperdomainError("--loss: every loss weight is 0; nothing to train")
        return out

    @classmethod
    def parse(cls, items: Iterable[str]) -> "LossWeights":
        """From CLI items ``["direction=1", "indomain=0.5"]``; with none given, the default."""
        pairs = {}
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep or not name.strip():
                raise HyperdomainError(f"--loss {item!r}: expected NAME=WEIGHT, e.g. direction=1 or indomain=0.5")
            pairs[name.strip()] = value.strip()
        return cls.from_mapping(pairs) if pairs else cls()

    def as_dict(self) -> dict[str, float]:
        """Only the active losses, by their public names."""
        return {n: w for n in self.names() if (w := getattr(self, _field(n))) > 0}

    def check_usable(self, usable: Sequence[str], what: str) -> None:
        """One line when an active loss is not one ``what`` can compute."""
        extra = [n for n in self.as_dict() if n not in usable]
        if extra:
            raise HyperdomainError(f"--loss {extra[0]}: not a loss of {what}; it uses {', '.join(usable)}")


def _field(name: str) -> str:
    """The dataclass field of a loss name (``global`` is a keyword, so its field is ``global_``)."""
    return name + "_" if name == "global" else name
