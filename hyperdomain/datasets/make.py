"""``make_dataset``: latent indices ``0..n-1`` rendered in the source and in each domain, as shards.

Shards are the unit of work. Rank ``r`` of ``W`` (``torchrun``) takes shards ``r, r + W, ...``;
a shard already complete, and still with the digest recorded when it was written, is kept, so a
killed run resumes where it stopped; any other is written again. The last step gathers every
shard's recorded size and digest into ``index.json``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.distributed
from tqdm import tqdm

from ..distributed import DistInfo, any_rank
from ..model.domain import Domain
from ..errors import HyperdomainError
from ..files.atomic import write_error, write_text
from ..training.run_dir import RunInterrupted, deferred_interrupt
from .render import Encoder, domain_table, render_rows, sample_rows, steps
from .settings import (FORMAT, FORMAT_VERSION, IMAGE_FORMATS, INDEX_FILE, LAYOUTS, MAX_BATCH, MAX_N, MAX_RESOLUTION,
                       MAX_SEED, MAX_SHARD_SIZE, MAX_SIGMA, MAX_TRUNCATION, MAX_VIEWS, VIEWS_IN, DatasetSettings,
                       DomainsArg, check_numbers, check_ranges, domain_digest, named_domains, prepare_out_dir,
                       shard_images_problem)
from .shards import (open_writer, partial_path, read_digest, remove_partial, shard_digest, shard_summary,
                     write_digest)

if TYPE_CHECKING:  # pragma: no cover
    from ..model.generator import Generator

log = logging.getLogger(__name__)

__all__ = ["make_dataset", "dataset_settings", "sample_record"]


def dataset_settings(G: "Generator", n: int, domains: Sequence[tuple[str, Domain]], *, seed: int = 0,
                     truncation: float = 0.7, views: int = 0, sigma: float = 0.2, views_in: str = "source",
                     size: int | None = None, format: str = "png", quality: int = 95, layout: str = "webdataset",
                     shard_size: int = 100) -> DatasetSettings:
    """Checked settings for ``make_dataset`` (named domains as from ``named_domains``): every number in
    its range (:data:`~hyperdomain.datasets.settings.MAX_N` and the others), one line naming the argument."""
    check_ranges(n=(n, 1, MAX_N), seed=(seed, 0, MAX_SEED), views=(views, 0, MAX_VIEWS),
                 shard_size=(shard_size, 1, MAX_SHARD_SIZE))
    size = G.resolution if size is None else size
    check_ranges(size=(size, 1, MAX_RESOLUTION))
    if size > G.resolution:
        raise HyperdomainError(f"size {size}: images are only downscaled; the generator makes {G.resolution} px")
    if format not in IMAGE_FORMATS:
        raise HyperdomainError(f"format must be one of {', '.join(IMAGE_FORMATS)}, got {format!r}")
    if views_in not in VIEWS_IN:
        raise HyperdomainError(f"views_in must be one of {', '.join(VIEWS_IN)}, got {views_in!r}")
    if layout not in LAYOUTS:
        raise HyperdomainError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    check_ranges(quality=(quality, 1, 100))
    check_numbers(truncation=(truncation, 0.0, MAX_TRUNCATION), sigma=(sigma, 0.0, MAX_SIGMA))
    settings = DatasetSettings(
        n=int(n), seed=int(seed), truncation=float(truncation), views=int(views), sigma=float(sigma), size=int(size),
        format=format, quality=int(quality) if format != "png" else 0, layout=layout, shard_size=int(shard_size),
        views_in=views_in,
        generator={"name": G.name, "fingerprint": G.fingerprint, "resolution": G.resolution},
        domains=tuple({"name": name, "digest": domain_digest(d.vector), "prompt": d.meta.get("prompt")}
                      for name, d in domains))
    problem = shard_images_problem(n, shard_size, settings.images_per_sample)
    if problem:
        raise HyperdomainError(f"shard_size {shard_size}: {problem}")
    return settings


def sample_record(settings: DatasetSettings, index: int, z: torch.Tensor,
                  view_z: Sequence[torch.Tensor] = ()) -> str:
    """A sample's JSON record: what made it, so any image can be traced and made again.

    ``z`` is the index's latent and ``view_z`` the latent of each view (``z + sigma * noise``),
    both ``[z_dim]`` before truncation: with ``truncation``, ``size``, ``noise_mode`` and
    ``pass_rows`` they give every image of the sample again (``render_latents``).
    """
    record = {
        "index": index, "key": f"{index:08d}", "seed": settings.seed, "z": z.tolist(),
        "view_z": [v.tolist() for v in view_z],
        "truncation": settings.truncation, "noise_mode": settings.noise_mode, "pass_rows": settings.pass_rows,
        "views": settings.views, "views_in": settings.views_in, "sigma": settings.sigma, "size": settings.size,
        "domains": [{"name": d["name"], "digest": d["digest"]} for d in settings.domains],
        "generator": settings.generator, "files": settings.member_names(index),
    }
    return json.dumps(record, sort_keys=True, allow_nan=False)


def make_dataset(G: "Generator", out_dir: str | os.PathLike, n: int,
                 domains: DomainsArg = (), *, seed: int = 0, truncation: float = 0.7,
                 views: int = 0, sigma: float = 0.2, views_in: str = "source", size: int | None = None,
                 format: str = "png", quality: int = 95,
                 layout: str = "webdataset", shard_size: int = 100, batch: int = 16, check: bool = True,
                 dist: DistInfo | None = None, progress: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Write a dataset of latent indices ``0..n-1`` into ``out_dir``; return its index.

    Per index: the source image, the image in each domain (same latent) and ``views`` latent
    neighbours ``z + sigma * noise`` (truncation applied after) in the source, or with
    ``views_in="all"`` in the source and in every domain (view ``k`` has one latent in all of them:
    multi-view positives inside a domain, still paired across domains), plus a JSON record.
    ``domains`` is a list of domains (named by prompt or file) or ``(name, Domain)`` pairs, or a
    ``{name: Domain}`` mapping; names become keys and folders (slugged: no dots, unique). ``layout``
    ``"webdataset"`` writes tar shards of ``shard_size`` samples; ``"folder"`` an ImageFolder tree.
    Every generator pass has ``PASS_ROWS`` (8) rows, so an image's bytes depend on its index and the
    settings only; ``batch`` is the number of images per step (rounded up to whole passes, which are
    queued back to back and copied to the host together): speed and memory, never a byte. A folder
    holding a dataset of the same settings is resumed (``batch`` may differ): a complete shard is kept
    if it still has the digest recorded when it was written, any other is written again (a warning
    a shard); any other non-empty folder is refused. Every number is checked against its bound before
    a file is written.
    Under ``torchrun`` pass ``dist`` (``hyperdomain.distributed.setup()``): rank ``r`` of ``W``
    writes shards ``r, r + W, ...``. Ctrl-C or SIGTERM abandons the current shard (its temporary
    file removed) and raises ``KeyboardInterrupt``.
    """
    check_ranges(batch=(batch, 1, MAX_BATCH))
    named = named_domains(G, domains, check=check)
    settings = dataset_settings(G, n, named, seed=seed, truncation=truncation, views=views, sigma=sigma,
                                views_in=views_in, size=size, format=format, quality=quality, layout=layout,
                                shard_size=shard_size)
    dist = dist or DistInfo(device=G.device)
    out_dir = Path(out_dir)
    settings = _prepare_everywhere(dist, out_dir, settings)
    mine = list(range(dist.rank, settings.num_shards, dist.world))
    summaries = _write_shards(G, out_dir, settings, [d for _, d in named], mine, dist, progress, threads, batch)
    everyone = _gather(dist, summaries)
    index = dataset_index(settings, everyone)
    if dist.is_main:
        write_text(out_dir / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True, allow_nan=False) + "\n")
        log.info("wrote %s: %d samples, %d images in %d shards", out_dir, settings.n, index["images"],
                 settings.num_shards)
    return index


def dataset_index(settings: DatasetSettings, summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    shards = sorted(summaries, key=lambda s: s["first"])
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings.to_dict(),
            "keys": settings.keys, "samples": settings.n, "images": settings.n * settings.images_per_sample,
            "bytes": sum(s["bytes"] for s in shards), "shards": shards}


def _prepare_everywhere(dist: DistInfo, out_dir: Path, settings: DatasetSettings) -> DatasetSettings:
    """Rank 0 prepares the folder first (so ranks never race to create it); a refusal stops every rank."""
    error = None
    if dist.is_main:
        try:
            settings = prepare_out_dir(out_dir, settings)
        except HyperdomainError as e:
            error = e
    if any_rank(dist, [error is not None])[0]:
        raise error or HyperdomainError(f"{out_dir}: rank 0 could not prepare the dataset folder")
    if not dist.is_main:  # on a shared file system this reads rank 0's settings; else makes its own folder
        settings = prepare_out_dir(out_dir, settings)
    return settings


def _kept(out_dir: Path, settings: DatasetSettings, shard: int) -> dict[str, Any] | None:
    """A complete shard's summary, recorded when it was written, if the shard as stored still has that
    digest; else None: the shard is written again (saying why, when it is there)."""
    path = out_dir / settings.shard_name(shard)
    if not path.is_file():
        return None
    recorded = read_digest(out_dir, settings, shard)
    if recorded is None:
        log.warning("%s: no record of the digest it was written with; writing it again", path)
        return None
    try:
        digest, size = shard_digest(out_dir, settings, shard)
    except OSError as e:
        log.warning("%s: cannot be read (%s); writing it again", path, e.strerror or e)
        return None
    if (digest, size) != (recorded["sha256"], recorded["bytes"]):
        log.warning("%s: not the shard that was written (sha256 %s..., recorded %s...); writing it again", path,
                    digest[:12], recorded["sha256"][:12])
        return None
    return recorded


def _write_shards(G: "Generator", out_dir: Path, settings: DatasetSettings, domains: Sequence[Domain],
                  shards: Sequence[int], dist: DistInfo, progress: bool, threads: int | None,
                  batch: int) -> list[dict[str, Any]]:
    per_sample = settings.images_per_sample
    kept = {s: summary for s in shards if (summary := _kept(out_dir, settings, s)) is not None}
    total = sum(len(settings.shard_range(s)) for s in shards) * per_sample
    initial = sum(len(settings.shard_range(s)) for s in kept) * per_sample
    table = domain_table(G, domains)
    threads = threads if threads is not None else min(4, os.cpu_count() or 1)
    encoder = Encoder(settings.format, settings.quality, threads)
    bar = tqdm(total=total, initial=initial, desc="dataset", unit="img", dynamic_ncols=True,
               disable=(not progress or not dist.is_main) or None)
    summaries = []
    try:
        with deferred_interrupt() as stop:
            for shard in shards:
                if shard in kept:
                    remove_partial(partial_path(out_dir, settings, shard))  # left by a kill after the rename
                    summaries.append(kept[shard])
                    continue
                summary = _write_one(G, out_dir, settings, table, encoder, shard, batch, stop, bar)
                write_digest(out_dir, settings, shard, summary)
                log.info("dataset shard %s written by rank %d", settings.shard_name(shard), dist.rank)
                summaries.append(summary)
    finally:
        bar.close()
        encoder.close()
    return summaries


def _write_one(G, out_dir: Path, settings: DatasetSettings, table: torch.Tensor, encoder: Encoder, shard: int,
               batch: int, stop, bar) -> dict[str, Any]:
    """Write one shard; return its summary, from the bytes as written."""
    writer = open_writer(out_dir, settings, shard)
    try:
        indices = settings.shard_range(shard)
        rows = [r for i in indices for r in sample_rows(settings, G.z_dim, i)]
        per_sample = settings.images_per_sample
        records, pending = [], []
        for chunk in steps(rows, batch, settings.pass_rows):
            if stop.is_set():
                raise RunInterrupted(stop.signum)
            pending += zip(chunk, encoder(render_rows(G, chunk, table, settings)))
            while len(pending) >= per_sample:  # whole samples are written in order
                sample, pending = pending[:per_sample], pending[per_sample:]
                index = sample[0][0].index
                names = settings.member_names(index)
                for name, (_, data) in zip(names, sample):
                    writer.add(name, data)
                views = [row.z for row, _ in sample[1:] if row.domain == -1]  # the source's views
                record = sample_record(settings, index, sample[0][0].z, views)
                writer.add(f"{index:08d}.json", record.encode())
                records.append(record)
                bar.update(per_sample)
        digest, size = writer.commit(records)
    except OSError as e:
        writer.abort()
        error = write_error(writer.final, e, "cannot write the shard")
        raise type(error)(f"{error}; complete shards are kept") from None
    except BaseException:
        writer.abort()
        raise
    return shard_summary(settings, shard, digest, size)


def _gather(dist: DistInfo, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not dist.active:
        return summaries
    everyone: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(everyone, summaries)
    return [s for part in everyone for s in part]
