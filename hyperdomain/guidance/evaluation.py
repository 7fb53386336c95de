"""How good are domains: CLIP quality and diversity over fixed seeds (the paper's protocol).

- **quality**: the mean cosine between each generated image's CLIP embedding and the target
  text embedding (the prompt in the templates, averaged);
- **diversity**: the mean of ``1 - cos`` over all distinct pairs of those image embeddings.

Over ``n`` samples (500 in the paper) from seeded latents without style mixing, the same latents
for every domain so figures compare. Prefer an encoder that was not used in training
(ViT-B/16 for the paper's notebook; ViT-L/14 with the single template "A {}" for StyleDomain);
each row records which encoder and templates were used.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from tqdm import tqdm

from .clip import ClipEncoder, load_clip, templates
from ..model.domain import Domain
from .domain_lists import prompt_key
from ..errors import HyperdomainError
from ..files.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from ..model.hypernet import HyperDomainNet

__all__ = ["EvalRow", "evaluate", "quality_and_diversity", "write_results", "format_table"]


@dataclass(frozen=True)
class EvalRow:
    name: str  # a domain file's stem, "hypernet", or "source"
    prompt: str  # the target text the images are scored against
    split: str  # "seen" / "held-out" for hypernetwork prompts, "-" otherwise
    quality: float
    diversity: float
    n: int
    clip: str
    templates: str
    truncation: float
    seed: int


def quality_and_diversity(image_emb: torch.Tensor, text: torch.Tensor) -> tuple[float, float]:
    """``image_emb [N, E]`` (unit rows), ``text [E]`` -> (mean cosine to text, mean 1-cos over pairs)."""
    e = image_emb.double()
    t = text.double() / text.double().norm()
    quality = float((e @ t).mean())
    n = e.shape[0]
    if n < 2:
        return quality, float("nan")
    gram = e @ e.T
    pairs = (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))  # mean cos over ordered distinct pairs
    return quality, float(1 - pairs)


@torch.no_grad()
def _embed_samples(G, encoder: ClipEncoder, domain, n: int, seed: int, truncation: float,
                   batch_size: int, bar: tqdm | None = None) -> torch.Tensor:
    out = []
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, G.z_dim, generator=gen)  # the same latents for every domain
    for start in range(0, n, batch_size):
        zb = z[start:start + batch_size].to(G.device)
        img = G.synthesis(G.mapping(zb, truncation), domain=domain, noise_mode="const")
        out.append(encoder.encode_images(img).cpu())
        if bar is not None:
            bar.update(len(zb))
    return torch.cat(out)


def evaluate(G, domains: Sequence[Domain] = (), hypernet: "HyperDomainNet | None" = None,
             prompts: Sequence[str] = (), source: bool = False, source_prompt: str | None = None,
             clip: str | ClipEncoder = "ViT-B-16", n: int = 500, seed: int = 0, truncation: float = 1.0,
             template_set: str = "imagenet", batch_size: int = 16, progress: bool = True) -> list[EvalRow]:
    """Quality and diversity rows for each domain, each hypernetwork prompt, and the source.

    A :class:`Domain` is scored against its own prompt (``meta["prompt"]``); hypernetwork
    prompts are marked ``seen`` when they were among its training prompts. With ``source`` the
    undadapted generator gets a row per target prompt (the baseline each domain should beat)
    and one against ``source_prompt``.
    """
    if n < 2:
        raise HyperdomainError(f"evaluate: n must be >= 2 (diversity needs pairs), got {n}")
    if hypernet is None and prompts:
        raise HyperdomainError("evaluate: prompts need a hypernetwork (--hyper FILE)")
    if hypernet is not None and not prompts:
        raise HyperdomainError("evaluate: a hypernetwork needs prompts (--prompt or --prompts FILE)")
    if not domains and hypernet is None and not source:
        raise HyperdomainError("evaluate: nothing to evaluate (give --domain, --hyper with prompts, or --source)")
    encoder = load_clip([clip], device=G.device)[0]
    tpl = templates(template_set)
    jobs: list[tuple[str, str, str, object]] = []
    for d in domains:
        prompt = d.meta.get("prompt")
        if not prompt:
            raise HyperdomainError(f"evaluate: domain {d.meta.get('file', '?')} records no prompt to score against")
        d.check_compatible(G, fingerprint=False)
        jobs.append((Path(d.meta.get("file", "domain")).stem, prompt, "-", d))
    if hypernet is not None:
        seen = {prompt_key(p) for p in hypernet.meta.get("train_prompts", [])}
        for p, d in zip(prompts, hypernet.domains(list(prompts))):
            jobs.append(("hypernet", p, "seen" if prompt_key(p) in seen else "held-out", d))
    # one bar over every image rendered and embedded: a long run moves from its first batch
    bar = tqdm(total=n * (len(jobs) + bool(source)), desc="evaluate", unit="image", disable=not progress or None)
    with bar:
        if source:
            targets = list(dict.fromkeys([j[1] for j in jobs] + [source_prompt or G.source_prompt]))
            src_emb = _embed_samples(G, encoder, None, n, seed, truncation, batch_size, bar)
        rows = []
        for name, prompt, split, dom in jobs:
            emb = _embed_samples(G, encoder, dom, n, seed, truncation, batch_size, bar)
            q, div = quality_and_diversity(emb, encoder.text(prompt, tpl).cpu())
            rows.append(EvalRow(name, prompt, split, q, div, n, encoder.label, template_set, truncation, seed))
    if source:
        for prompt in targets:
            q, div = quality_and_diversity(src_emb, encoder.text(prompt, tpl).cpu())
            rows.append(EvalRow("source", prompt, "-", q, div, n, encoder.label, template_set, truncation, seed))
    return rows


def format_table(rows: Iterable[EvalRow]) -> str:
    """A fixed-width text table of the rows, with seen/held-out means for hypernetwork rows."""
    rows = list(rows)
    width = max([len(r.prompt[:48]) for r in rows] + [6])
    lines = [f"{'name':<14} {'prompt':<{width}} {'split':<8} {'quality':>8} {'diversity':>9}"]
    for r in rows:
        lines.append(f"{r.name[:14]:<14} {r.prompt[:48]:<{width}} {r.split:<8} {r.quality:>8.4f} {r.diversity:>9.4f}")
    for split in ("seen", "held-out"):
        sub = [r for r in rows if r.split == split]
        if sub:
            q = sum(r.quality for r in sub) / len(sub)
            dv = sum(r.diversity for r in sub) / len(sub)
            lines.append(f"{'mean':<14} {f'({len(sub)} prompts)':<{width}} {split:<8} {q:>8.4f} {dv:>9.4f}")
    if rows:
        r = rows[0]
        lines.append(f"CLIP {r.clip}, templates {r.templates}, {r.n} samples, truncation {r.truncation}, seed {r.seed}")
    return "\n".join(lines)


def write_results(rows: Sequence[EvalRow], path: str | os.PathLike) -> Path:
    """Write rows as ``.json`` (a list of objects) or ``.csv``, by the file's suffix, atomically."""
    return write_table([asdict(r) for r in rows], list(EvalRow.__dataclass_fields__), path)


def write_table(data: Sequence[dict], fieldnames: Sequence[str], path: str | os.PathLike) -> Path:
    """Write ``data`` (one dict per row) as ``.json`` or ``.csv`` (columns ``fieldnames``), by the suffix, atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(list(data), indent=2) + "\n"
    elif path.suffix.lower() == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(fieldnames))
        w.writeheader()
        w.writerows(data)
        text = buf.getvalue()
    else:
        raise HyperdomainError(f"{path}: results go to a .json or .csv file")
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
