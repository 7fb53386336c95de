"""One-shot adaptation: a domain vector from one reference image (the paper's ``im2im_single``).

The reference is inverted first (II2S, :mod:`hyperdomain.image.inversion`; cached, so a second run
with the same image and settings reuses it). Then the domain vector trains, summed over the CLIP
ensemble (image embeddings L2-normalised), on

- ``direction`` (1): ``1 - cos(E(G_d(w)) - E(G(w)), E(ref) - E(G(w_ref)))``: the image direction of
  the reference against its own source rendering replaces the text direction;
- ``clip_within`` (0.5): ``1 - cos(E(G_d(w)) - E(ref), E(G(w)) - E(G(w_ref)))``;
- ``clip_ref`` (30): ``1 - cos(E(G_d(w_ref)), E(ref))``, averaged over the encoders as the paper's code does;
- ``l2_rec`` (10) and ``lpips_rec`` (10): MSE and LPIPS between ``G_d(w_ref)`` and the reference at
  256 px;
- optionally ``text_direction`` (given ``target``): the text adaptation's direction loss, so a
  prompt and an image can steer one run together.

Paper defaults: 100 steps, batch 4, Adam lr 0.01, style mixing 0.9. One deliberate difference from
the paper's trainer, which renders ``G(w_ref)`` and ``G_d(w_ref)`` with fresh random noise at every
step: both render here with the constant noise the reference was inverted with (the reconstruction
losses then compare the render the inversion fitted) and ``E(G(w_ref))`` is encoded once, saving a
generator and a CLIP pass per step. Everything else (run folder,
resume, Ctrl-C, non-finite stops, files) is the shared loop's. The domain file carries the
reference's latent (``style_latent``), which the paper's one-shot grids mix into layers 7 and up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from .._version import __version__
from ..guidance.clip import DEFAULT_CLIP, ClipEncoder, check_models, load_clip, run_spec, templates
from ..model.config import DEFAULT_SOURCE_PROMPT
from ..model.domain import Domain, generator_meta
from ..errors import HyperdomainError
from ..files.run_checkpoints import CHECKPOINT, read_checkpoint_meta
from ..media.grids import downsample_bicubic, save_grid
from ..image.inversion import InversionConfig, invert, invert_cached, prepare_photo
from ..model.latent import Latent
from ..guidance.losses import Embeddings, LossWeights, StepImages, compute_losses, default_weights
from ..image.perceptual import load_lpips, lpips_distance
from .adapt import DOMAIN_FILE, restore_domain
from .latents import sample_training_latents, training_seed
from .dashboards import require
from .loop import StopFlag, TrainingRun, open_resume
from .run_config import RunConfig
from .run_dir import refuse_existing_run

__all__ = ["ImageAdaptConfig", "adapt_image", "read_image_adapt_config", "REFERENCE_LATENT_FILE"]

REFERENCE_LATENT_FILE = "reference_latent.safetensors"
Callback = Callable[[int, Mapping[str, float], torch.Tensor], Any]


@dataclass(frozen=True, kw_only=True)
class ImageAdaptConfig(RunConfig):
    """Everything that defines a one-shot run (stored in its checkpoint and domain file)."""

    command: ClassVar[str] = "adapt --image"
    run: ClassVar[str] = "image"
    loss_scope: ClassVar[str] = "one-shot adaptation"

    image: str  # the reference image's path
    target: str | None = None  # an optional prompt that steers the run too (text_direction)
    source: str = DEFAULT_SOURCE_PROMPT  # the text direction's source prompt
    iters: int = 100
    lr: float = 0.01
    losses: LossWeights = field(default_factory=lambda: default_weights("image"))
    sample_every: int = 20
    checkpoint_every: int = 20
    mix_from: int = 7  # the paper's one-shot grids take W+ layers 7 and up from the reference's latent
    align: bool = False  # the paper's references are used as they are; --align for a raw face photo
    loss_size: int = 256
    lpips_backbone: str = "imagenet"  # LPIPS's VGG16: "imagenet" (downloaded once), its weights file, or "random" (tests)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    encoder: str | None = None  # the reference through an encoder (a kind or file, as invert's) instead of II2S
    restyle_steps: int | None = None  # a ReStyle encoder's passes (None: its own)
    refine: int = 0  # II2S steps from the encoder's latent
    clip_antialias: bool = False
    clip_precision: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.inversion, Mapping):
            object.__setattr__(self, "inversion", InversionConfig(**self.inversion))
        super().__post_init__()
        if not isinstance(self.image, str) or not self.image.strip():
            raise HyperdomainError("--image: no reference image given")
        if self.losses.text_direction and not self.target:
            raise HyperdomainError("--loss text_direction needs a target prompt (--target) beside --image")
        if self.target is not None and (not self.target.strip() or self.target.strip() == self.source.strip()):
            raise HyperdomainError(f"--target {self.target!r}: an empty prompt or the source prompt itself")

    def checks(self) -> list[tuple[bool, str, str]]:
        return [(self.mix_from >= 1, "mix_from", ">= 1"), (self.loss_size >= 8, "loss_size", ">= 8"),
                (self.encoder is None or (isinstance(self.encoder, str) and bool(self.encoder)), "encoder",
                 "a kind or an encoder file"),
                (self.restyle_steps is None or (type(self.restyle_steps) is int and self.restyle_steps >= 1),
                 "restyle_steps", "an integer >= 1"),
                (type(self.refine) is int and self.refine >= 0, "refine", "an integer >= 0")]


# ------------------------------------------------------------------------------------------ the run
def adapt_image(G, image: str | os.PathLike | None = None, target: str | None = None, *,
                clip: Sequence[str | ClipEncoder] | None = None, out_dir: str | os.PathLike | None = None,
                resume: str | os.PathLike | None = None, callback: Callback | None = None, progress: bool = True,
                config: ImageAdaptConfig | None = None, lpips: torch.nn.Module | None = None,
                detector=None, stop: StopFlag | None = None, **options: Any) -> Domain:
    """Adapt frozen ``G`` to the domain of one reference ``image`` (optionally steered by a
    ``target`` prompt too); returns the trained Domain, which carries the reference's latent.

    ``options`` are :class:`ImageAdaptConfig` fields (``iters``, ``batch``, ``lr``, ``losses``,
    ``align``, ``inversion``, ``lpips_backbone``, ...). ``lpips``: a loaded LPIPS module (else
    loaded from the config's ``lpips_backbone``). ``detector``: the face detector when ``align`` is on. ``resume=DIR``
    continues a saved run (``iters`` may extend it). ``stop``: as for :func:`~hyperdomain.adapt`.
    """
    if resume is not None:
        unknown = set(options) - {"iters"}
        if unknown:
            raise HyperdomainError(f"resume keeps the run's settings; drop {sorted(unknown)}")
        tensors, meta, config = open_resume(Path(resume), "image", ImageAdaptConfig, G, options.get("iters"))
        require(config.dashboards)  # before the encoders load
        run = _ImageRun(G, _encoders(clip, config, G.device), config, Path(resume), lpips, detector)
        run.restore(tensors, meta)
        return run.train(callback, progress, stop)
    if config is None:
        if image is None:
            raise HyperdomainError("adapt --image: give a reference image (or resume=DIR)")
        unknown = set(options) - {f.name for f in fields(ImageAdaptConfig)}
        if unknown:
            raise HyperdomainError(f"adapt --image: unknown options {sorted(unknown)}")
        options = {k: v for k, v in options.items() if v is not None}
        if target is not None and "losses" not in options:
            options["losses"] = LossWeights({**default_weights("image").as_dict(), "text_direction": 1.0})
        clip_specs = tuple(run_spec(c) for c in (clip or DEFAULT_CLIP))
        config = ImageAdaptConfig(image=str(Path(image).resolve()) if Path(image).exists() else str(image),
                                  target=target, source=options.pop("source", None) or G.source_prompt,
                                  clip=clip_specs, **options)
    out = Path(out_dir) if out_dir is not None else None
    refuse_existing_run(out, _ImageRun.kind)  # before the encoders load
    require(config.dashboards)
    run = _ImageRun(G, _encoders(clip, config, G.device), config, out, lpips, detector)
    return run.train(callback, progress, stop)


def read_image_adapt_config(run_dir: str | os.PathLike) -> ImageAdaptConfig:
    """The config of the one-shot run saved in ``run_dir``."""
    return ImageAdaptConfig.from_dict(read_checkpoint_meta(Path(run_dir) / CHECKPOINT, "image")["config"])


def _encoders(clip, config: ImageAdaptConfig, device) -> list[ClipEncoder]:
    encoders = load_clip(clip if clip is not None else config.clip, device=device,
                         antialias=config.clip_antialias, precision=config.clip_precision)
    check_models(encoders, config.clip)
    return encoders


class _ImageRun(TrainingRun):
    """A one-shot run: one domain vector, the reference and its inverted latent fixed."""

    kind = "image"

    def __init__(self, G, encoders: list[ClipEncoder], config: ImageAdaptConfig, out_dir: Path | None,
                 lpips: torch.nn.Module | None, detector):
        G.eval().requires_grad_(False)
        super().__init__(G, config, out_dir, rng=torch.Generator().manual_seed(training_seed(config.seed)))
        c = config
        self.encoders = encoders
        self.desc = f"adapt {Path(c.image).name[:30]!r}"
        self.lpips = lpips if lpips is not None else load_lpips(G.device, c.lpips_backbone)
        photo = prepare_photo(G, c.image, align=c.align, detector=detector)
        self.reference_digest = photo.digest
        if c.encoder is not None:  # quick: not cached (a resumed run restores its own latent anyway)
            self.latent = invert(G, [photo], c.inversion, encoder=c.encoder, restyle_steps=c.restyle_steps,
                                 refine=c.refine, lpips=self.lpips, lpips_backbone=c.lpips_backbone,
                                 progress=self.dist.is_main)[0]
        else:
            self.latent = invert_cached(G, photo, c.inversion, lpips=self.lpips, lpips_backbone=c.lpips_backbone,
                                        progress=self.dist.is_main)
        self.latent.meta.update(image=Path(c.image).name, aligned=c.align)
        self.w_ref = self.latent.ws[None].to(G.device)  # [1, num_ws, w_dim]
        size = min(c.loss_size, G.resolution)
        self.factor = G.resolution // size
        self.ref_full = photo.tensor().to(G.device)
        self.ref_small = photo.tensor(size).to(G.device)
        tpl = templates(c.templates)
        with torch.no_grad():
            ref_src_img = G.synthesis(self.w_ref, noise_mode="const")
            self.embeddings = []
            for enc in encoders:
                text = None
                if c.target:
                    text = enc.text(c.target, tpl, what="--target") - enc.text(c.source, tpl, what="--source")
                self.embeddings.append({"ref": enc.encode_images(self.ref_full)[0],
                                        "ref_src": enc.encode_images(ref_src_img)[0], "text": text})
        self.domain = torch.zeros(G.num_domain_params, device=G.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.domain], lr=c.lr, betas=c.betas)
        self._source_rows: torch.Tensor | None = None

    def train(self, callback: Callback | None = None, progress: bool = True, stop: StopFlag | None = None) -> Domain:
        each_step = None if callback is None else (lambda step, values: callback(step, values, self.domain.detach()))
        return super().train(each_step, progress, stop)

    # ------------------------------------------------------------------ a step
    def losses(self) -> dict[str, torch.Tensor]:
        c, G = self.config, self.G
        batch = sample_training_latents(G, self.rng, c.batch, c.mixing, G.device)
        with torch.no_grad():
            src_img = G.synthesis(batch.ws_src, noise=batch.noise_src)
        trg_img = G.synthesis(batch.ws_trg, domain=self.domain, noise=batch.noise_trg)
        rec = G.synthesis(self.w_ref, domain=self.domain, noise_mode="const")  # G_d(w_ref)

        def per_encoder():
            for enc, e in zip(self.encoders, self.embeddings):
                with torch.no_grad():
                    src = enc.encode_images(src_img)
                yield Embeddings(src, enc.encode_images(trg_img), direction=e["ref"] - e["ref_src"], target=e["ref"],
                                 ref=e["ref"], ref_src=e["ref_src"], rec=enc.encode_images(rec),
                                 text_direction=e["text"])

        images = StepImages(self.domain, G.domain_dims, rec=downsample_bicubic(rec, self.factor), ref=self.ref_small,
                            lpips=lambda a, b: lpips_distance(self.lpips, a, b))
        return compute_losses(c.losses.as_dict(), per_encoder(), images)

    # ------------------------------------------------------------------ state and files
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"domain": self.domain, "reference_latent": self.w_ref[0]}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        restore_domain(self.domain, tensors)
        with torch.no_grad():
            self.w_ref.copy_(tensors["reference_latent"][None])  # the run's own latent, whatever the cache holds

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"reference_digest": self.reference_digest}

    def result(self) -> Domain:
        c = self.config
        meta = {**generator_meta(self.G), "prompt": c.target, "source_prompt": c.source,
                "reference_image": Path(c.image).name, "reference_digest": self.reference_digest,
                "reference_latent": REFERENCE_LATENT_FILE, "mix_from": c.mix_from,
                "clip_models": [e.label for e in self.encoders], "losses": c.losses.as_dict(), "iterations": self.step,
                "seed": c.seed, "lr": c.lr, "batch": c.batch, "mixing": c.mixing, "trainer": "adapt --image",
                "hyperdomain_version": __version__}
        return Domain(self.domain.detach().cpu().clone(), self.G.domain_dims, meta, style_latent=self.w_ref[0].cpu())

    def write_outputs(self, result: Domain) -> None:
        result.save(self.out_dir / DOMAIN_FILE)
        Latent(self.w_ref[0].cpu(), {**self.latent.meta, "reference_digest": self.reference_digest}).save(
            self.out_dir / REFERENCE_LATENT_FILE)

    def stop_outputs(self) -> None:
        self.write_outputs(self.result())

    def save_samples(self, path: Path) -> None:
        """Rows: the source, the adapted samples, and the adapted samples with the reference's
        latent in layers ``mix_from`` and up (the paper's one-shot grid)."""
        c, G = self.config, self.G
        d = self.domain.detach()
        if self._source_rows is None:
            self._source_rows = G.sample(c.sample_n, truncation=c.sample_truncation, seed=c.seed)
        adapted = G.sample(c.sample_n, domain=d, truncation=c.sample_truncation, seed=c.seed)
        mixed = G.sample(c.sample_n, domain=d, truncation=c.sample_truncation, seed=c.seed, style=self.w_ref[0],
                         mix_from=c.mix_from)
        save_grid(torch.cat([self._source_rows, adapted, mixed]), path, nrow=c.sample_n)
