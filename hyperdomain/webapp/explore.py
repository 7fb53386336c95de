"""The Explore panel's work: its settings (checked as the API receives them, not only as the
sliders bound them), the domain they make, the grid, and the files a user downloads."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..model.domain import Domain, mix
from ..errors import HyperdomainError
from ..media.grids import make_grid
from .models import NONE, PROMPT, SOURCE, AppModels, integer_in, number_in

STRENGTH = (0.0, 1.5)
MIX = (0.0, 1.0)
TRUNCATION = (0.0, 1.0)
COUNT = (1, 16)
SEED_MAX = 2**31 - 1
FRAMES = (2, 240)
FPS = (1.0, 50.0)
ANIMATION_MODES = ("strength", "morph", "walk")
ANIMATION_FORMATS = ("gif", "webp", "mp4")


@dataclass(frozen=True)
class ExploreSettings:
    """What the Explore panel's controls say. The grid is
    ``G.sample(count, domain=mix([first, second], [1 - mix, mix]).scaled(strength), truncation, seed)``,
    or ``first.scaled(strength)`` without a second domain, or no domain at all for the bare source."""

    domain: str = SOURCE
    prompt: str = ""
    strength: float = 1.0
    second: str = NONE
    second_prompt: str = ""
    mix: float = 0.5
    truncation: float = 0.7
    seed: int = 0
    count: int = 8

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("strength", STRENGTH), ("mix", MIX), ("truncation", TRUNCATION)):
            object.__setattr__(self, name, number_in(name, getattr(self, name), lo, hi))
        object.__setattr__(self, "seed", integer_in("seed", self.seed, 0, SEED_MAX))
        object.__setattr__(self, "count", integer_in("count", self.count, *COUNT))
        for name in ("domain", "second", "prompt", "second_prompt"):
            if not isinstance(getattr(self, name), str):
                raise HyperdomainError(f"{name}: expected text, got {type(getattr(self, name)).__name__}")


def explore_domain(models: AppModels, s: ExploreSettings) -> Domain | None:
    """The domain the settings make (``None``: the bare source generator)."""
    first = models.domain(s.domain, s.prompt, "domain")
    if s.second == NONE:
        if s.domain == SOURCE:
            return None
        return first.scaled(s.strength)
    second = models.domain(s.second, s.second_prompt, "second domain")
    return mix([first, second], [1.0 - s.mix, s.mix]).scaled(s.strength)


def _samples(models: AppModels, s: ExploreSettings, d: Domain | None):
    return models.G.sample(s.count, domain=d, truncation=s.truncation, seed=s.seed)


def render(models: AppModels, s: ExploreSettings) -> np.ndarray:
    """The grid ``[H, W, 3]`` uint8 (``hd.make_grid`` of the samples)."""
    return make_grid(_samples(models, s, explore_domain(models, s))).numpy()


def domain_name(s: ExploreSettings) -> str:
    """A readable name for the current domain (file names, labels)."""
    from ..training.adapt import slug

    def one(choice: str, prompt: str) -> str:
        return slug(prompt) if choice == PROMPT else slug(choice)

    name = one(s.domain, s.prompt)
    if s.second != NONE:
        name += f"+{one(s.second, s.second_prompt)}_{s.mix:g}"
    return f"{name}_x{s.strength:g}"


def _stem(s: ExploreSettings, what: str) -> str:
    digest = hashlib.sha256(json.dumps([what, asdict(s)], sort_keys=True).encode()).hexdigest()[:8]
    return f"{domain_name(s)}_{digest}"


def save_downloads(models: AppModels, s: ExploreSettings) -> list[Path]:
    """The grid (PNG) and the current domain (``.safetensors``) as files in the app's folder."""
    from ..media.grids import save_grid

    folder = models.work_dir / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    stem = _stem(s, "grid")
    d = explore_domain(models, s)
    files = [save_grid(_samples(models, s, d), folder / f"{stem}.png")]
    if d is None:
        d = Domain.zeros(models.G)
    meta = {**d.meta, "explore": asdict(s)}
    meta.pop("file", None)
    files.append(Domain(d.vector, d.dims, meta, d.style_latent).save(folder / f"{stem}.safetensors"))
    return files


def export_animation(models: AppModels, s: ExploreSettings, mode: str = "strength", fmt: str = "gif",
                     frames: int = 24, fps: float = 12.0, bounce: bool = False, on_frame=None) -> Path:
    """The panel's grid as an animation (``hd.animate``): ``strength``, the current domain from 0 to
    the panel's strength; ``morph``, the first domain to the second (each at the panel's strength);
    ``walk``, from the panel's seed to the next in the current domain. Its last frame of the way out
    is the grid the panel shows (for ``morph`` with the mix slider at 1)."""
    from ..media.animation import animate

    if mode not in ANIMATION_MODES:
        raise HyperdomainError(f"animation mode {mode!r}: expected one of {list(ANIMATION_MODES)}")
    if fmt not in ANIMATION_FORMATS:
        raise HyperdomainError(f"animation format {fmt!r}: expected one of {list(ANIMATION_FORMATS)}")
    frames = integer_in("frames", frames, *FRAMES)
    fps = number_in("fps", fps, *FPS)
    current = explore_domain(models, s)
    if mode == "strength":
        domains = [current if current is not None else Domain.zeros(models.G)]
    elif mode == "morph":
        if s.second == NONE:
            raise HyperdomainError("a morph needs a second domain: choose one beside the first")
        domains = [models.domain(s.domain, s.prompt, "domain").scaled(s.strength),
                   models.domain(s.second, s.second_prompt, "second domain").scaled(s.strength)]
    else:
        domains = [current] if current is not None else []
    folder = models.work_dir / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_stem(s, f'{mode}-{frames}-{fps}-{bounce}')}_{mode}.{fmt}"
    return animate(models.G, path, mode, domains, frames=frames, fps=fps, n=s.count, seed=s.seed,
                   truncation=s.truncation, bounce=bounce, on_frame=on_frame)
