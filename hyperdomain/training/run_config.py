"""What the trainers' config dataclasses share: checks of the common fields, and plain-data form."""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Mapping

from ..guidance.clip import templates
from ..model.config import check_config_keys
from ..errors import HyperdomainError
from ..guidance.losses import LossWeights
from .dashboards import parse_dashboards


def check_run_config(cfg: Any, what: str, checks: list[tuple[bool, str, str]]) -> None:
    """A frozen trainer config's ``__post_init__``: normalise the shared fields and check them all.

    ``clip`` and ``betas`` become tuples and ``losses`` a LossWeights; the fields every trainer has
    and the trainer's own ``checks`` (``(ok, field, expected)``) are checked in one place, so a bad
    value is one line: ``{what}: {field} must be {expected}, got {value}``.
    """
    object.__setattr__(cfg, "clip", tuple(cfg.clip))
    object.__setattr__(cfg, "betas", tuple(float(b) for b in cfg.betas))
    if isinstance(cfg.losses, Mapping):
        object.__setattr__(cfg, "losses", LossWeights.from_mapping(cfg.losses))
    if hasattr(cfg, "dashboards"):
        object.__setattr__(cfg, "dashboards", parse_dashboards(cfg.dashboards))  # refuses an unknown name
    shared = [
        (cfg.iters >= 1, "iters", "an integer >= 1"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), "lr", "a finite number > 0"),
        (len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), "betas", "two numbers in [0, 1)"),
        (0 <= cfg.mixing <= 1, "mixing", "a probability in [0, 1]"),
        (cfg.sample_every >= 0 and cfg.checkpoint_every >= 0, "sample_every/checkpoint_every", ">= 0 (0: off)"),
        (cfg.sample_n >= 1, "sample_n", ">= 1"),
        (0 <= cfg.seed < 2**63, "seed", "in [0, 2^63)"),
        (bool(cfg.clip), "clip", "at least one CLIP model"),
    ]
    for ok, name, expected in shared + checks:
        if not ok:
            raise HyperdomainError(f"{what}: {name} must be {expected}, got {getattr(cfg, name.split('/')[0])!r}")
    templates(cfg.templates)  # refuses an unknown template set by name


def run_config_to_dict(cfg: Any) -> dict[str, Any]:
    """A trainer config as plain JSON data (losses by their public names)."""
    d = asdict(cfg)
    d["losses"] = cfg.losses.as_dict()
    d["clip"], d["betas"] = list(cfg.clip), list(cfg.betas)
    if "dashboards" in d:
        d["dashboards"] = list(cfg.dashboards)
    return d


def run_config_from_dict(cls: type, d: Mapping[str, Any], what: str) -> Any:
    """Inverse of :func:`run_config_to_dict`; unknown keys are refused by name."""
    check_config_keys(cls, d, what)
    return cls(**{**d, "losses": LossWeights.from_mapping(d.get("losses", {}))})
