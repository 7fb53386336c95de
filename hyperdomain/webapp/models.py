"""What a running app holds: the generator, its named domains, the hypernetwork, and how to load
the heavier models (CLIP for training, LPIPS and a face detector for photos) on first use."""
from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..model.domain import Domain
from ..errors import HyperdomainError
from ..image.inversion import InversionConfig

SOURCE = "source"  # the generator as it is (no domain)
PROMPT = "prompt (hypernetwork)"  # the domain the hypernetwork predicts for the typed prompt
NONE = "none"
MAX_PROMPT = 1000


def number_in(name: str, value, lo: float, hi: float) -> float:
    """``value`` as a finite float in ``[lo, hi]``, or one line naming ``name`` (values a page sends
    are checked as received: an API call can send what no slider allows)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise HyperdomainError(f"{name}: expected a number in [{lo:g}, {hi:g}], got {value!r}"[:200]) from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise HyperdomainError(f"{name} {value!r}: must be a number in [{lo:g}, {hi:g}]"[:200])
    return x


def integer_in(name: str, value, lo: int, hi: int) -> int:
    x = number_in(name, value, lo, hi)
    if x != int(x):
        raise HyperdomainError(f"{name} {value!r}: must be a whole number in [{lo}, {hi}]")
    return int(x)


def check_prompt(text: str, what: str) -> str:
    """A prompt typed in the page: one line of at most ``MAX_PROMPT`` characters, stripped."""
    text = (text or "").strip()
    if len(text) > MAX_PROMPT or any(ord(c) < 32 for c in text):
        raise HyperdomainError(f"{what}: a prompt is one line of at most {MAX_PROMPT} characters")
    return text


@dataclass
class AppModels:
    """The models of one server. ``domains`` grows as files are uploaded and runs finish."""

    G: Any
    work_dir: Path
    generator_spec: str | None = None  # the name or absolute path G was loaded from (runs record it to resume)
    domains: dict[str, Domain] = field(default_factory=dict)
    hyper: Any = None  # a HyperDomainNet
    clip: tuple[str, ...] | None = None  # CLIP specs for adaptation runs (None: the trainers' default)
    lpips_backbone: str = "imagenet"
    align: bool | None = None  # photos: None aligns for face generators
    detector: Callable[[], Any] | None = None  # makes the face detector when a photo is aligned
    inversion: InversionConfig = field(default_factory=InversionConfig)
    encoder: Any = None  # a PhotoEncoder: photos in one pass (ReStyle: a few); None: II2S only
    restyle_steps: int | None = None  # a ReStyle encoder's passes (None: its own)
    refine: int = 0  # II2S steps after the encoder by default (0: the encoder alone)
    translators: dict[str, Any] = field(default_factory=dict)  # name -> Translator (a photo into one domain)
    check: bool = True  # refuse domains made for another generator's weights
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)
    _gates: dict[str, threading.Lock] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ choices
    def choices(self) -> list[str]:
        """The domains a panel offers: the source, the hypernetwork's prompt, then named domains."""
        with self._lock:
            names = list(self.domains)
        return [SOURCE] + ([PROMPT] if self.hyper is not None else []) + names

    def domain(self, choice: str, prompt: str = "", what: str = "domain") -> Domain:
        """The Domain a panel's choice names (``SOURCE`` is all zeros)."""
        if choice == SOURCE:
            return Domain.zeros(self.G)
        if choice == PROMPT:
            if self.hyper is None:
                raise HyperdomainError(f"{what}: no hypernetwork was loaded (hyperdomain serve --hyper FILE)")
            prompt = check_prompt(prompt, what)
            if not prompt:
                raise HyperdomainError(f"{what}: type a prompt for the hypernetwork")
            return self.hyper.domain(prompt)
        with self._lock:
            found = self.domains.get(choice)
        if found is None:
            raise HyperdomainError(f"{what}: no domain named {choice!r} (choose one of {self.choices()})"[:300])
        return found

    def add_domain_file(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Load a domain file for this generator and name it (its file's stem, made unique)."""
        return self.add_domain(Domain.load(path), name or Path(path).stem)

    def add_domain(self, d: Domain, name: str) -> str:
        """Offer ``d`` in the panels under ``name`` (made unique); refused when it does not fit ``G``."""
        d.check_compatible(self.G, fingerprint=self.check)
        base = re.sub(r"\s+", " ", str(name)).strip()[:60] or "domain"
        with self._lock:
            unique, k = base, 2
            while unique in self.domains or unique in (SOURCE, PROMPT, NONE):
                unique, k = f"{base}_{k}", k + 1
            self.domains[unique] = d
        return unique

    # ------------------------------------------------------------------ heavy models, once
    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` the first time ``key`` is asked for (CLIP, LPIPS, the detector), then the same object;
        two panels asking at once wait for one load."""
        with self._lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            if key not in self._loaded:
                self._loaded[key] = make()
            return self._loaded[key]

    def clip_encoders(self) -> list:
        from ..guidance.clip import DEFAULT_CLIP, load_clip

        return self.once("clip", lambda: load_clip(list(self.clip or DEFAULT_CLIP), device=self.G.device))

    def lpips(self):
        from ..image.perceptual import load_lpips

        return self.once("lpips", lambda: load_lpips(self.G.device, self.lpips_backbone))

    def aligns(self) -> bool:
        """Whether photos are aligned: as asked, else for face generators (as ``invert`` decides)."""
        from ..image.alignment import aligns

        return aligns(self.G, self.align)

    def add_translator_file(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Load a translator file made for this generator and offer it under ``name`` (its file's stem, made unique)."""
        from ..image.translators import load_translator

        t = load_translator(path, generator=self.G, check=self.check).to(self.G.device)
        base = re.sub(r"\s+", " ", str(name or Path(path).stem)).strip()[:60] or "translator"
        with self._lock:
            unique, k = base, 2
            while unique in self.translators:
                unique, k = f"{base}_{k}", k + 1
            self.translators[unique] = t
        return unique

    def translator(self, name: str):
        with self._lock:
            found = self.translators.get(name)
        if found is None:
            raise HyperdomainError(f"translator: no translator named {name!r} (choose one of "
                                   f"{sorted(self.translators) or 'none: hyperdomain serve --translator FILE'})"[:300])
        return found

    def face_detector(self):
        """The detector for aligning photos (``None``: the library's default one)."""
        if self.detector is None:
            return None
        return self.once("detector", self.detector)


def load_models(generator: str | os.PathLike = "ffhq", domains: Sequence[str | os.PathLike] = (), *,
                hyper: str | os.PathLike | None = None, hyper_clip: str | None = None,
                clip: Sequence[str] | None = None, lpips_backbone: str | os.PathLike = "imagenet",
                align: bool | None = None, detector: Callable[[], Any] | None = None,
                inversion: InversionConfig | None = None, encoder: Any = "auto", restyle_steps: int | None = None,
                refine: int = 0, translators: Sequence[str | os.PathLike] = (), work_dir: str | os.PathLike = "hyperdomain-app",
                device: str = "cpu", check: bool = True) -> AppModels:
    """Load what ``hyperdomain serve`` shows: the generator (a manifest name or a file), domain
    files, a hypernetwork, the photo encoder (``encoder``: as :func:`hyperdomain.encoder_for` takes it;
    ``"auto"``: the generator's release if already downloaded, else none and photos are inverted by
    II2S) and translator files for it. CLIP, LPIPS and the detector load when first needed."""
    from ..image.encoders.choice import encoder_for
    from ..model.generator import load_generator
    from ..model.hypernet import HyperDomainNet

    G = load_generator(generator, device=device)
    spec = str(generator) if not Path(generator).exists() else str(Path(generator).resolve())
    models = AppModels(G=G, work_dir=Path(work_dir), generator_spec=spec, clip=tuple(clip) if clip else None,
                       lpips_backbone=str(lpips_backbone), align=align, detector=detector,
                       inversion=inversion or InversionConfig(), restyle_steps=restyle_steps, refine=refine,
                       check=check)
    for path in domains:
        models.add_domain_file(path)
    for path in translators:
        models.add_translator_file(path)
    models.encoder = encoder_for(G, encoder, check=check, what="encoder")
    if models.encoder is not None:
        models.encoder.to(G.device)
        if restyle_steps is not None and not models.encoder.config.iterative:
            raise HyperdomainError(f"restyle steps (--restyle-steps) are for ReStyle encoders; the "
                                   f"{models.encoder.config.kind} encoder makes one pass")
    if hyper is not None:
        net = HyperDomainNet.load(hyper, generator=G, check=check).to(G.device)
        net.text_encoder(hyper_clip)  # loaded now: the first prompt in the page answers at once
        models.hyper = net
    return models
