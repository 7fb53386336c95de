"""The paper's losses, as small pure functions of embeddings and images, and their registry.

Image embeddings are L2-normalised rows ``[B, E]``. Text embeddings are template means
(see :mod:`hyperdomain.guidance.clip`): only their directions matter, every CLIP loss below is built on
cosines. Pairwise losses use each unordered pair ``i < j`` once. The one-shot (image) losses sit
beside them: the reference image's embeddings play the part of the text, and two reconstruction
losses tie the adapted generator's rendering of the reference's own latent to the reference.

``LOSSES`` names each loss once, with what it computes, its help and its default weight in each
trainer (the paper's code keeps such a registry too); trainers compute, default and check their
losses from it, and the command line prints its help from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch

from ..errors import HyperdomainError

__all__ = [
    "LOSSES", "Loss", "LossWeights", "Embeddings", "StepImages", "compute_losses", "default_weights", "losses_of",
    "losses_help", "cosine", "direction_loss", "global_loss", "indomain_loss", "tt_direction_loss", "l2_loss",
    "clip_within_loss",
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


# ------------------------------------------------------------------------------------- the registry
@dataclass
class Embeddings:
    """One CLIP encoder's view of a training step (image embeddings L2-normalised, ``[B, E]``).

    ``direction``: what ``direction`` aligns the image change with (the text direction T_trg - T_src,
    or the reference's image direction E(ref) - E(G(w_ref)) in one-shot runs); ``target``: what
    ``global`` and ``tt_direction`` compare with (the target text, per sample ``[B, E]`` for a
    hypernetwork, or the reference's embedding). The one-shot fields are None in text runs.
    """

    src: torch.Tensor
    trg: torch.Tensor
    direction: torch.Tensor | None = None
    target: torch.Tensor | None = None
    ref: torch.Tensor | None = None  # E(ref) [E]
    ref_src: torch.Tensor | None = None  # E(G(w_ref)) [E]
    rec: torch.Tensor | None = None  # E(G_d(w_ref)) [1, E]
    text_direction: torch.Tensor | None = None  # a one-shot run's optional prompt direction [E]


@dataclass
class StepImages:
    """What the losses computed once per step see: the domain vector(s) and, in one-shot runs, the
    adapted rendering of the reference's latent and the reference at the loss size (``[1, 3, S, S]``)."""

    domain: torch.Tensor
    domain_dims: Sequence[int]
    rec: torch.Tensor | None = None
    ref: torch.Tensor | None = None
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # per-image distances


def _text_direction(e: Embeddings) -> torch.Tensor:
    if e.text_direction is None:
        raise HyperdomainError("--loss text_direction needs a target prompt (--target) beside --image")
    return direction_loss(e.src, e.trg, e.text_direction)


@dataclass(frozen=True)
class Loss:
    """A loss of the registry: computed per CLIP encoder (``per_encoder``, summed over the ensemble,
    or averaged with ``average``) or once per step (``once``); ``weights``: the trainers that can use
    it (``adapt``, ``image``, ``hyper``) and its default weight in each (0: off unless asked)."""

    help: str
    weights: Mapping[str, float]
    per_encoder: Callable[[Embeddings], torch.Tensor] | None = None
    once: Callable[[StepImages], torch.Tensor] | None = None
    average: bool = False


# Every loss, declared once: the trainers compute and check them from here, the CLI prints their help.
LOSSES: dict[str, Loss] = {
    "direction": Loss("1 - cos of the image change with the target's direction (text, or the reference's image)",
                      {"adapt": 1.0, "image": 1.0, "hyper": 1.0, "translator": 0.0},
                      per_encoder=lambda e: direction_loss(e.src, e.trg, e.direction)),
    "global": Loss("1 - cos of the adapted image with the target (text, or the reference)",
                   {"adapt": 0.0, "image": 0.0, "hyper": 0.0}, per_encoder=lambda e: global_loss(e.trg, e.target)),
    "indomain": Loss("angle consistency: pairwise cosines of the batch kept as in the source domain",
                     {"adapt": 0.0, "image": 0.0, "hyper": 0.0}, per_encoder=lambda e: indomain_loss(e.src, e.trg)),
    "tt_direction": Loss("pairs of domains in a batch: image differences aligned with their text differences",
                         {"hyper": 0.4}, per_encoder=lambda e: tt_direction_loss(e.trg, e.target)),
    "clip_within": Loss("each adapted image stands to the reference as its source to the reference's source",
                        {"image": 0.5}, per_encoder=lambda e: clip_within_loss(e.src, e.trg, e.ref, e.ref_src)),
    "clip_ref": Loss("1 - cos of the adapted reference latent's image with the reference (mean over the ensemble)",
                     {"image": 30.0}, per_encoder=lambda e: global_loss(e.rec, e.ref), average=True),
    "text_direction": Loss("a one-shot run steered by --target too: the text direction loss",
                           {"image": 0.0}, per_encoder=_text_direction),
    "l2_rec": Loss("MSE of the adapted reference latent's image to the reference, at the loss size",
                   {"image": 10.0}, once=lambda i: (i.rec - i.ref).square().mean()),
    "lpips_rec": Loss("LPIPS of the adapted reference latent's image to the reference, at the loss size",
                      {"image": 10.0}, once=lambda i: i.lpips(i.rec, i.ref).mean()),
    "l1": Loss("a paired translator: mean absolute difference of its output to the domain's rendering",
               {"translator": 1.0}, once=lambda i: (i.rec - i.ref).abs().mean()),
    "lpips": Loss("a paired translator: LPIPS of its output to the domain's rendering",
                  {"translator": 1.0}, once=lambda i: i.lpips(i.rec, i.ref).mean()),
    "l2": Loss("mean of d^2 per conv, summed over convs (keeps the domain near the source)",
               {"adapt": 0.0, "image": 0.0, "hyper": 0.0}, once=lambda i: l2_loss(i.domain, i.domain_dims)),
}


def losses_of(run: str) -> tuple[str, ...]:
    """The losses trainer ``run`` (``adapt``, ``image``, ``hyper``) can use, in registry order."""
    return tuple(name for name, loss in LOSSES.items() if run in loss.weights)


def default_weights(run: str) -> "LossWeights":
    """Trainer ``run``'s default weights (the paper's)."""
    return LossWeights({name: loss.weights[run] for name, loss in LOSSES.items() if loss.weights.get(run)})


def losses_help(run: str) -> str:
    """The ``--loss`` option's help for trainer ``run``: every usable loss with what it does."""
    return "; ".join(f"{name}: {LOSSES[name].help}" for name in losses_of(run))


def compute_losses(weights: Mapping[str, float], per_encoder: Iterable[Embeddings],
                   images: StepImages) -> dict[str, torch.Tensor]:
    """Each active loss of ``weights`` (``LossWeights.as_dict()``): per-encoder losses summed over
    the ensemble (``clip_ref`` averaged), the others once; and ``"total"``, the weighted sum."""
    parts: dict[str, torch.Tensor] = {}
    active = [(name, LOSSES[name]) for name in weights]
    n = 0
    for e in per_encoder:
        n += 1
        for name, loss in active:
            if loss.per_encoder is not None:
                value = loss.per_encoder(e)
                parts[name] = parts[name] + value if name in parts else value
    for name, loss in active:
        if loss.average and name in parts:
            parts[name] = parts[name] / n
        if loss.once is not None:
            parts[name] = loss.once(images)
    parts["total"] = sum(weights[name] * value for name, value in parts.items())
    return parts


class LossWeights:
    """Weights of the registry's losses in the total; 0 (or absent) switches a loss off.

    ``LossWeights(direction=1, indomain=0.5)`` or ``LossWeights({"global": 2})`` (``global`` is a
    keyword, so its keyword spelling is ``global_``); read as attributes (``w.indomain``, ``w.global_``)
    or as :meth:`as_dict`. With nothing given: ``direction`` 1.
    """

    __slots__ = ("_w",)

    def __init__(self, weights: Mapping[str, float] | None = None, **by_name: float):
        given = {**(weights or {}), **{k.rstrip("_"): v for k, v in by_name.items()}}
        if not given:
            given = {"direction": 1.0}
        values = {}
        for name, w in given.items():
            if name not in LOSSES:
                raise HyperdomainError(f"--loss: unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
            try:
                w = float(w)
            except (TypeError, ValueError):
                raise HyperdomainError(f"--loss {name}: weight must be a number, got {w!r}") from None
            if not (w >= 0 and w < float("inf")):
                raise HyperdomainError(f"--loss {name}: weight must be a finite number >= 0, got {w}")
            if w > 0:
                values[name] = w
        if not values:
            raise HyperdomainError("--loss: every loss weight is 0; nothing to train")
        object.__setattr__(self, "_w", {n: values[n] for n in LOSSES if n in values})  # registry order

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(LOSSES)

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float]) -> "LossWeights":
        """From ``{"direction": 1, "indomain": 0.5}``; names not given are 0."""
        if not weights:
            raise HyperdomainError("--loss: every loss weight is 0; nothing to train")
        return cls(dict(weights))

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

    def __getattr__(self, name: str) -> float:
        loss = name.rstrip("_")
        if loss in LOSSES:
            return self._w.get(loss, 0.0)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        raise AttributeError("LossWeights is immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, LossWeights) and self._w == other._w

    def __hash__(self) -> int:
        return hash(tuple(self._w.items()))

    def __repr__(self) -> str:
        return f"LossWeights({self._w})"

    def __deepcopy__(self, memo) -> "LossWeights":
        return self  # immutable

    def __reduce__(self):
        return (LossWeights, (dict(self._w),))

    def as_dict(self) -> dict[str, float]:
        """Only the active losses, by their public names."""
        return dict(self._w)

    def check_usable(self, run: str, what: str) -> None:
        """One line when an active loss is not one trainer ``run`` can compute."""
        usable = losses_of(run)
        extra = [n for n in self._w if n not in usable]
        if extra:
            raise HyperdomainError(f"--loss {extra[0]}: not a loss of {what}; it uses {', '.join(usable)}")
