"""What an existing file is, read cheaply from its first bytes, so that no command replaces a file
of another kind (a hypernetwork by a domain, a generator by a grid image).

Nothing here loads tensors or unpickles: our safetensors files are told apart by the ``format``
string in their JSON header, torch and pickle checkpoints by their magic bytes, images by theirs,
evaluation results by their columns.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .safetensors_files import DOMAIN, ENCODER, GENERATOR, HYPERNET, LATENT, PCA, TRANSLATOR, checkpoint_kind

DOMAIN_KIND = "domain file"
HYPERNET_KIND = "hypernetwork file"
LATENT_KIND = "latent file"
GENERATOR_KIND = "generator file"
ENCODER_KIND = "encoder file"
TRANSLATOR_KIND = "translator file"
IMAGE = "image"
ANIMATION = "animation"  # what `hyperdomain animate` writes: a GIF or WebP (IMAGE when read back) or a VIDEO
VIDEO = "video"
RESULTS = "evaluation results"
TORCH_CHECKPOINT = "PyTorch checkpoint (a generator or another model's)"
EMPTY = "empty file"
FOLDER = "folder"
OTHER = "file of unknown kind"

# the suffixes hyperdomain.media.grids writes (a test keeps the two lists equal)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
ANIMATION_SUFFIXES = (".gif", ".webp", ".mp4")  # the suffixes hyperdomain.media.animation writes

_OWN = {DOMAIN: DOMAIN_KIND, HYPERNET: HYPERNET_KIND, LATENT: LATENT_KIND, PCA: "cached latent PCA",
        GENERATOR: GENERATOR_KIND, ENCODER: ENCODER_KIND, TRANSLATOR: TRANSLATOR_KIND}
# the command whose runs each trainer's checkpoint belongs to
_RUNS = {"adapt": "adapt", "image": "adapt --image", "hyper": "train-hyper", "encoder": "train-encoder",
         "translator": "translator train"}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"GIF87a", b"GIF89a")
_HEADER_LIMIT = 100 << 20  # a safetensors header is a few kB; a larger length means another file
_TEXT_LIMIT = 64 << 20  # evaluation results beyond this are not ours


def run_description(kind: str) -> str:
    """A run of trainer ``kind`` ("adapt", "image", "hyper") named by its command: ``"adapt --image run"``."""
    return f"{_RUNS.get(kind, kind)} run"


def run_checkpoint(kind: str) -> str:
    """What :func:`file_kind` calls trainer ``kind``'s checkpoint."""
    return f"{run_description(kind)} checkpoint"


def file_kind(path: str | os.PathLike) -> str:
    """What the existing ``path`` holds, as a short phrase (one of this module's constants, a run
    checkpoint's ``"adapt run checkpoint"``, or ``"safetensors file (format ...)"``)."""
    path = Path(path)
    if path.is_dir():
        return FOLDER
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if not head:
                return EMPTY
            fmt = _safetensors_format(f, head)
    except OSError:
        return OTHER
    if fmt is not None:
        return _format_kind(fmt)
    if head.startswith(b"PK\x03\x04") or (head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5):
        return TORCH_CHECKPOINT  # torch.save's zip, or a pickle (the legacy torch.save format starts as one)
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return IMAGE
    if head[4:8] == b"ftyp":  # ISO base media (MP4, MOV): a box of type ftyp first
        return VIDEO
    if path.suffix.lower() in (".json", ".csv") and _is_results(path):
        return RESULTS
    return OTHER


def _safetensors_format(f, head: bytes) -> str | None:
    """The ``format`` metadata of a safetensors file ("" when it names none), None for another file.

    A safetensors file starts with the header's length (8 bytes, little endian) and the header, a
    JSON object.
    """
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n > _HEADER_LIMIT:
        return None
    f.seek(8)
    try:
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__")
    return str(meta.get("format", "")) if isinstance(meta, dict) else ""


def _format_kind(fmt: str) -> str:
    if fmt in _OWN:
        return _OWN[fmt]
    run = checkpoint_kind(fmt)
    if run is not None:
        return run_checkpoint(run)
    return f"safetensors file (format {fmt!r})" if fmt else "safetensors file"


def _is_results(path: Path) -> bool:
    """Whether a .json or .csv file holds ``hyperdomain evaluate`` rows (they have quality and
    diversity columns; see ``hyperdomain.guidance.evaluation.write_results``)."""
    if path.stat().st_size > _TEXT_LIMIT:
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    columns = {"quality", "diversity"}
    if path.suffix.lower() == ".csv":
        return columns <= set(text.partition("\n")[0].strip().split(","))
    try:
        rows = json.loads(text)
    except ValueError:
        return False
    return isinstance(rows, list) and all(isinstance(r, dict) and columns <= set(r) for r in rows)
