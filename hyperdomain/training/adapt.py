"""Text-driven adaptation: train one domain vector of a frozen generator against CLIP losses.

``adapt(G, target="3D render in the style of Pixar")`` returns a :class:`Domain`. With ``out_dir``
the run also writes sample grids, a log, resumable checkpoints (every ``checkpoint_every`` steps
and on Ctrl-C) and the final domain file; ``adapt(G, resume=out_dir)`` continues such a run and,
on the CPU, gives exactly the result of an uninterrupted one.

Faithful to the paper's single-domain trainer (Adam lr 0.1, 300 steps, batch 4, style mixing
with probability 0.9 and one crossover per batch, truncation 1, random noise, source images
without grad, losses summed over the CLIP ensemble; the source and adapted passes share z but
draw their own crossover and noise, see :func:`sample_training_latents`). One deliberate
difference: a run takes exactly ``iters`` steps (the paper's loop takes ``iters + 1``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from .._version import __version__
from ..guidance.clip import DEFAULT_CLIP, ClipEncoder, check_models, load_clip, run_spec, templates
from ..model.config import DEFAULT_SOURCE_PROMPT
from ..model.domain import Domain, generator_meta
from ..errors import HyperdomainError
from ..files.run_checkpoints import CHECKPOINT, read_checkpoint_meta
from ..media.grids import save_grid
from ..guidance.losses import Embeddings, LossWeights, StepImages, compute_losses
from .latents import TrainingBatch, sample_training_latents, training_seed
from .dashboards import require
from .loop import StopFlag, TrainingRun, open_resume
from .run_config import RunConfig
from .run_dir import refuse_existing_run

__all__ = ["AdaptConfig", "adapt", "read_adapt_config", "adapt_step", "DOMAIN_FILE"]

DOMAIN_FILE = "domain.safetensors"
Callback = Callable[[int, Mapping[str, float], torch.Tensor], Any]


@dataclass(frozen=True, kw_only=True)
class AdaptConfig(RunConfig):
    """Everything that defines a single-domain run (stored in its checkpoint and domain file).

    The defaults are the paper's FFHQ settings (:class:`RunConfig`'s); a generator's manifest recipe
    (LSUN cat, car, church) replaces those it names, see :func:`adapt`.
    """

    command: ClassVar[str] = "adapt"
    run: ClassVar[str] = "adapt"
    loss_scope: ClassVar[str] = ("text adaptation (the reference-image losses need --image; tt_direction needs "
                                 "several domains per batch: train-hyper)")

    target: str
    source: str = DEFAULT_SOURCE_PROMPT
    clip_antialias: bool = False
    clip_precision: str = "auto"  # autocast for CLIP: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.losses.direction or self.losses.global_):
            raise HyperdomainError("--loss: direction or global must be > 0, or the target prompt plays no part "
                                   "(e.g. --loss direction=1 --loss indomain=0.5)")
        for what, prompt in (("--target", self.target), ("--source", self.source)):
            if not isinstance(prompt, str) or not prompt.strip():
                raise HyperdomainError(f"{what}: empty prompt")
        if self.target.strip() == self.source.strip():
            raise HyperdomainError(f"--target and --source are the same prompt ({self.target!r}): no direction to learn")


# ------------------------------------------------------------------------------------------ a step
def adapt_step(G, encoders: Sequence[ClipEncoder], domain: torch.Tensor, batch: TrainingBatch,
               texts: Sequence[Mapping[str, torch.Tensor]], weights: LossWeights) -> dict[str, torch.Tensor]:
    """The losses of one step (``"total"`` and each active loss summed over the encoders).

    ``texts[i]`` holds encoder ``i``'s ``"target"`` embedding and ``"direction"`` (target minus
    source). Source images and their embeddings are computed without grad.
    """
    with torch.no_grad():
        src_img = G.synthesis(batch.ws_src, noise=batch.noise_src)
        src_emb = [enc.encode_images(src_img) for enc in encoders]
    trg_img = G.synthesis(batch.ws_trg, domain=domain, noise=batch.noise_trg)
    per_encoder = (Embeddings(se, enc.encode_images(trg_img), direction=t["direction"], target=t["target"])
                   for enc, se, t in zip(encoders, src_emb, texts))
    return compute_losses(weights.as_dict(), per_encoder, StepImages(domain, G.domain_dims))


# ------------------------------------------------------------------------------------------ the run
def adapt(G, target: str | None = None, source: str | None = None, *,
          clip: Sequence[str | ClipEncoder] | None = None, iters: int | None = None, batch: int | None = None,
          lr: float | None = None, losses: LossWeights | Mapping[str, float] | None = None, mixing: float | None = None,
          seed: int | None = None, out_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
          callback: Callback | None = None, progress: bool = True, config: AdaptConfig | None = None,
          stop: StopFlag | None = None, **options: Any) -> Domain:
    """Adapt frozen generator ``G`` to the domain ``target`` describes; returns the trained Domain.

    ``clip`` takes spec strings (``"ViT-B-32"``, ``"ViT-B/16=weights.safetensors"``) or loaded
    :class:`ClipEncoder` objects (default: ViT-B/32 + ViT-B/16). ``losses`` maps loss names to
    weights (default ``{"direction": 1}``). ``callback(step, losses, domain_vector)`` runs after
    every step. Further :class:`AdaptConfig` fields (``sample_every``, ``checkpoint_every``,
    ``templates``, ``betas``, ...) go in ``options``, or pass a whole ``config``.

    ``resume=DIR`` continues the run saved in ``DIR`` (its config is used; ``iters`` may extend it).
    ``stop``: a ``threading.Event`` (or anything with ``is_set()``); once set, the run ends at the
    next step boundary, saves, and returns the domain as trained so far (a run in a thread of a
    server stops this way: Ctrl-C reaches only the main thread).

    Settings left as ``None`` come from the generator's manifest recipe (``G.adapt_defaults``: the
    paper's settings for that dataset, e.g. LSUN cat: batch 8, lr 0.02, 400 steps, direction +
    0.5 l2), else from :class:`AdaptConfig`'s defaults (the paper's FFHQ settings).
    """
    if resume is not None:
        return _resume(G, Path(resume), clip, iters, callback, progress, stop)
    if config is None:
        if target is None:
            raise HyperdomainError("adapt: give a target prompt (or resume=DIR)")
        config = _config(G, target, source, clip, seed, options,
                         dict(iters=iters, batch=batch, lr=lr, losses=losses, mixing=mixing))
    out = Path(out_dir) if out_dir is not None else None
    refuse_existing_run(out, _AdaptRun.kind)  # before the encoders load
    require(config.dashboards)
    run = _AdaptRun(G, _encoders(clip, config, G.device), config, out)
    return run.train(callback, progress, stop)


def _config(G, target: str, source: str | None, clip, seed: int | None, options: Mapping[str, Any],
            given: Mapping[str, Any]) -> AdaptConfig:
    """A new run's config: what is given, else the generator's recipe, else the dataclass default."""
    unknown = set(options) - {f.name for f in fields(AdaptConfig)}
    if unknown:
        raise HyperdomainError(f"adapt: unknown options {sorted(unknown)}")
    recipe = dict(getattr(G, "adapt_defaults", None) or {})
    given = {k: v for k, v in {**given, **options}.items() if v is not None}
    from_recipe = {k: v for k, v in recipe.items() if k not in given}  # named in errors
    settings = {**from_recipe, **given}
    if seed is not None:
        settings["seed"] = seed
    clip_specs = tuple(run_spec(c) for c in (clip or DEFAULT_CLIP))
    try:
        return AdaptConfig(target=target, source=source or getattr(G, "source_prompt", None) or AdaptConfig.source,
                           clip=clip_specs, **settings)
    except HyperdomainError as e:
        if not from_recipe:
            raise
        raise HyperdomainError(f"{e} (generator {G.name!r} brings the paper's recipe {from_recipe}; "
                               f"options you give override it)") from None


def _encoders(clip, config: AdaptConfig, device) -> list[ClipEncoder]:
    encoders = load_clip(clip if clip is not None else config.clip, device=device,
                         antialias=config.clip_antialias, precision=config.clip_precision)
    check_models(encoders, config.clip)
    return encoders


def read_adapt_config(run_dir: str | os.PathLike) -> AdaptConfig:
    """The config of the run saved in ``run_dir`` (its checkpoint)."""
    return AdaptConfig.from_dict(read_checkpoint_meta(Path(run_dir) / CHECKPOINT, "adapt")["config"])


def _resume(G, run_dir: Path, clip, iters, callback, progress, stop) -> Domain:
    tensors, meta, config = open_resume(run_dir, "adapt", AdaptConfig, G, iters)
    require(config.dashboards)  # before the encoders load
    run = _AdaptRun(G, _encoders(clip, config, G.device), config, run_dir)
    run.restore(tensors, meta)
    return run.train(callback, progress, stop)


class _AdaptRun(TrainingRun):
    """A single-domain run: one domain vector, Adam, the training RNG in every checkpoint."""

    kind = "adapt"

    def __init__(self, G, encoders: list[ClipEncoder], config: AdaptConfig, out_dir: Path | None):
        G.eval().requires_grad_(False)  # frozen: the domain vector is the only trained tensor
        super().__init__(G, config, out_dir, rng=torch.Generator().manual_seed(training_seed(config.seed)))
        self.encoders = encoders
        self.desc = f"adapt {config.target[:30]!r}"
        tpl = templates(config.templates)
        self.texts = []
        for enc in encoders:
            t_trg = enc.text(config.target, tpl, what="--target")
            t_src = enc.text(config.source, tpl, what="--source")
            self.texts.append({"target": t_trg, "direction": t_trg - t_src})
        self.domain = torch.zeros(G.num_domain_params, device=G.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.domain], lr=config.lr, betas=config.betas)
        self._source_row: torch.Tensor | None = None  # the sample grids' first row, made once
        trainable = [n for n, p in list(G.named_parameters()) + [(f"clip.{n}", p) for e in encoders
                     for n, p in e.named_parameters()] if p.requires_grad]
        assert not trainable, f"frozen models have trainable parameters: {trainable[:5]}"

    def train(self, callback: Callback | None = None, progress: bool = True, stop: StopFlag | None = None) -> Domain:
        each_step = None if callback is None else (lambda step, values: callback(step, values, self.domain.detach()))
        return super().train(each_step, progress, stop)

    def losses(self) -> dict[str, torch.Tensor]:
        c = self.config
        batch = sample_training_latents(self.G, self.rng, c.batch, c.mixing, self.G.device)
        return adapt_step(self.G, self.encoders, self.domain, batch, self.texts, c.losses)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"domain": self.domain}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        restore_domain(self.domain, tensors)

    def result(self) -> Domain:
        c = self.config
        meta = {**generator_meta(self.G), "prompt": c.target, "source_prompt": c.source,
                "clip_models": [e.label for e in self.encoders], "losses": c.losses.as_dict(),
                "iterations": self.step, "seed": c.seed, "lr": c.lr, "batch": c.batch, "mixing": c.mixing,
                "templates": c.templates, "clip_precision": c.clip_precision, "trainer": "adapt",
                "hyperdomain_version": __version__}
        return Domain(self.domain.detach().cpu().clone(), self.G.domain_dims, meta)

    def write_outputs(self, result: Domain) -> None:
        result.save(self.out_dir / DOMAIN_FILE)

    def stop_outputs(self) -> None:
        self.write_outputs(self.result())

    def save_samples(self, path: Path) -> None:
        c = self.config
        if self._source_row is None:  # the same seeds every time: the source row never changes
            self._source_row = self.G.sample(c.sample_n, truncation=c.sample_truncation, seed=c.seed)
        trg = self.G.sample(c.sample_n, domain=self.domain.detach(), truncation=c.sample_truncation, seed=c.seed)
        save_grid(torch.cat([self._source_row, trg]), path, nrow=c.sample_n)


def restore_domain(domain: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> None:
    """A single-domain run's trained vector from its checkpoint's ``tensors`` (one line if it does not fit)."""
    if tensors["domain"].shape != domain.shape:
        raise HyperdomainError(f"checkpoint domain has {tensors['domain'].numel()} numbers, generator needs "
                               f"{domain.numel()}")
    with torch.no_grad():
        domain.copy_(tensors["domain"])


def slug(prompt: str, limit: int = 40) -> str:
    """A folder name for a prompt: ``"3D render in the style of Pixar"`` -> ``3d_render_in_the_style_of_pixar``."""
    s = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    return s[:limit].rstrip("_") or "domain"
