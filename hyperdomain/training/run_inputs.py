"""What a run was made from, recorded so that a resume can refuse inputs that changed.

A run's config names its files by absolute path (CLIP model configs and weights, the reference
image, LPIPS's VGG16 weights); the checkpoint also keeps each file's sha256 as it was when the run
began. A resume hashes them again before anything loads and refuses, naming each file that
changed or went missing: a run continued on other CLIP weights or another reference image would
be a different run with the first one's name.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping

from ..guidance.clip import ClipSpec
from ..errors import HyperdomainError

log = logging.getLogger(__name__)

NAMED_BACKBONES = ("imagenet", "random")  # LPIPS backbones that are not files (the manifest's is verified)


def input_files(config: Any) -> dict[str, str]:
    """``{what: path}`` for every file the run's ``config`` reads (the fields trainers share)."""
    files: dict[str, str] = {}
    clip = list(getattr(config, "clip", ()) or ())
    if getattr(config, "input_clip", None):
        clip.append(config.input_clip)
    for text in clip:
        try:
            spec = ClipSpec.parse(text)
        except HyperdomainError:
            continue  # an encoder's label (one given as a loaded object): nothing on disk to check
        if spec.is_config_file:
            files[f"CLIP config {spec.name}"] = spec.name
        if spec.weights:
            files[f"CLIP weights {spec.weights}"] = spec.weights
    if getattr(config, "image", None):
        files[f"reference image {config.image}"] = config.image
    more = getattr(config, "more_input_files", None)  # a trainer's own files (a folder of photos)
    if callable(more):
        files.update(more())
    backbone = getattr(config, "lpips_backbone", None)
    if backbone and str(backbone) not in NAMED_BACKBONES:
        files[f"LPIPS VGG16 weights {backbone}"] = str(backbone)
    return files


def digest_inputs(config: Any) -> dict[str, str]:
    """``{what: sha256}`` of :func:`input_files` (``"missing"`` for a file that is not there)."""
    return {what: _sha256(Path(path)) for what, path in input_files(config).items()}


def check_inputs_unchanged(recorded: Mapping[str, Any] | None, config: Any, run_dir: Path) -> dict[str, str]:
    """The digests now; one line naming what changed since the run in ``run_dir`` began."""
    now = digest_inputs(config)
    if recorded is None:  # a run saved before runs recorded their inputs
        if now:
            log.warning("%s: the run did not record its input files' digests; resuming without checking them",
                        run_dir)
        return now
    changed = []
    for what, before in recorded.items():
        after = now.get(what)
        if after == before:
            continue
        if after in (None, "missing"):
            changed.append(f"{what} is missing")
        else:
            changed.append(f"{what} changed (sha256 {str(before)[:12]}... then, {after[:12]}... now)")
    if changed:
        raise HyperdomainError(f"--resume {run_dir}: the run's inputs changed since it began: {'; '.join(changed)}; "
                               f"put the original back, or start a new run")
    return now


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise HyperdomainError(f"{path}: cannot read it ({e.strerror or e})") from None
    return h.hexdigest()
