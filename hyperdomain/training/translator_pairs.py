"""Where a paired translator's (source, domain) image pairs come from: a generator or a dataset folder.

Both answer ``batch(seed, step, size, rank, world)`` with two ``[size / world, 3, S, S]`` tensors in
``[-1, 1]``: rank ``rank``'s rows of the global batch of step ``step``, whose draws depend on
(seed, step) alone. A resumed run draws what an uninterrupted one would, with any number of
processes, and nothing is kept in memory between steps.

- :class:`RenderedPairs`: the same latent rendered by the frozen generator in the source and in the
  domain, one generator pass per step (nothing is stored; as ``hd.data.DomainViews`` renders its pairs).
- :class:`DatasetPairs`: a ``hyperdomain dataset`` folder (WebDataset shards or the ImageFolder
  layout): the ``source`` image and the named domain's image of each sample, read when drawn.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..datasets.latents import stream_seed
from ..datasets.settings import SETTINGS_FILE, DatasetSettings, domain_digest, read_settings
from ..distributed import local_batch
from ..errors import HyperdomainError
from ..model.domain import Domain, generator_meta

__all__ = ["RenderedPairs", "DatasetPairs", "GeneratorFacts", "pair_seed"]


def pair_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s draws (the global batch's)."""
    return stream_seed(seed, step, "translator-pairs")


def _rows(size: int, rank: int, world: int) -> slice:
    b = local_batch(size, world)
    return slice(rank * b, (rank + 1) * b)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(-1, 1)


@dataclass(frozen=True)
class GeneratorFacts:
    """What a run trained from a dataset knows of the generator that made it (no weights needed)."""

    name: str
    fingerprint: str
    resolution: int
    device: torch.device = torch.device("cpu")


class RenderedPairs:
    """Pairs rendered on the fly by ``G``: the source and ``domain`` at one latent, truncation ``truncation``."""

    def __init__(self, G, domain: Domain, size: int, truncation: float = 0.7):
        domain.check_compatible(G)
        if not 1 <= size <= G.resolution:
            raise HyperdomainError(f"--size {size}: pairs rendered by {G.name!r} are at most {G.resolution} px "
                                   f"(images are only downscaled)")
        self.G, self.size, self.truncation = G, size, float(truncation)
        self.table = torch.stack([torch.zeros(G.num_domain_params), domain.vector.reshape(-1)]).to(G.device)
        name = domain.meta.get("prompt") or (Path(str(domain.meta["file"])).stem if domain.meta.get("file") else None)
        self.generator = generator_meta(G)
        self.domain = {"digest": domain_digest(domain.vector), "name": name, "prompt": domain.meta.get("prompt")}

    @torch.no_grad()
    def batch(self, seed: int, step: int, size: int, rank: int = 0, world: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(pair_seed(seed, step))
        z = torch.randn(size, self.G.z_dim, generator=gen)[_rows(size, rank, world)].to(self.G.device)
        b = z.shape[0]
        ws = self.G.mapping(torch.cat([z, z]), self.truncation)
        cols = torch.cat([torch.zeros(b, dtype=torch.long), torch.ones(b, dtype=torch.long)]).to(self.G.device)
        x = _resize(self.G.synthesis(ws, domain=self.table[cols], noise_mode="const"), self.size)
        return x[:b], x[b:]


class DatasetPairs:
    """Pairs read from the dataset folder ``root``: ``source`` and domain ``name`` of complete shards."""

    def __init__(self, root: Path, name: str | None, size: int, device: torch.device | str = "cpu"):
        self.root, self.device = Path(root), torch.device(device)
        if not (self.root / SETTINGS_FILE).is_file():
            raise HyperdomainError(f"--pairs {root}: not a hyperdomain dataset folder (no {SETTINGS_FILE}; make one "
                                   f"with hyperdomain dataset)")
        settings = read_settings(self.root)
        names = settings.domain_names
        if name is None:
            if len(names) != 1:
                raise HyperdomainError(f"--pairs {root}: give --domain, one of the dataset's domains "
                                       f"({', '.join(names) or 'none: it holds source images only'})")
            name = names[0]
        if name not in names:
            raise HyperdomainError(f"--pairs {root}: no domain {name!r} in the dataset (it has "
                                   f"{', '.join(names) or 'none: source images only'})")
        if size > settings.size:
            raise HyperdomainError(f"--size {size}: the dataset's images are {settings.size} px (images are only "
                                   f"downscaled)")
        self.settings, self.size, self.name = settings, size, name
        entry = next(d for d in settings.domains if d["name"] == name)
        g = settings.generator
        self.generator = {"generator": g.get("name"), "generator_fingerprint": g.get("fingerprint"),
                          "resolution": g.get("resolution")}
        self.domain = {"digest": entry["digest"], "name": name, "prompt": entry.get("prompt")}
        self.samples = self._index(settings)
        if not self.samples:
            raise HyperdomainError(f"--pairs {root}: no complete shard to read (make the dataset first, or let "
                                   f"hyperdomain dataset finish it)")

    def facts(self, device: torch.device | str = "cpu") -> GeneratorFacts:
        g = self.settings.generator
        return GeneratorFacts(str(g.get("name")), str(g.get("fingerprint")), int(g.get("resolution")),
                              torch.device(device))

    def _index(self, s: DatasetSettings) -> list[tuple[Any, Any]]:
        """One (source, domain) location per sample of every complete shard: a path (folder layout)
        or ``(tar, offset, size)`` (shards)."""
        keys = s.keys
        src_i, dom_i = keys.index("source"), keys.index(self.name)
        samples = []
        for shard in range(s.num_shards):
            path = self.root / s.shard_name(shard)
            if not path.is_file():  # an unfinished shard: complete ones are renamed into place
                continue
            if s.layout == "folder":
                for index in s.shard_range(shard):
                    members = s.member_names(index)
                    samples.append((self.root / members[src_i], self.root / members[dom_i]))
                continue
            wanted = {}
            try:
                with tarfile.open(path) as tar:
                    for info in tar:
                        wanted[info.name] = (path, info.offset_data, info.size)
            except (OSError, tarfile.TarError) as e:
                raise HyperdomainError(f"{path}: not a readable shard ({e}); check it with hyperdomain dataset "
                                       f"verify") from None
            for index in s.shard_range(shard):
                members = s.member_names(index)
                try:
                    samples.append((wanted[members[src_i]], wanted[members[dom_i]]))
                except KeyError as e:
                    raise HyperdomainError(f"{path}: lacks {e.args[0]}; check it with hyperdomain dataset "
                                           f"verify") from None
        return samples

    def _read(self, where: Any) -> torch.Tensor:
        from PIL import Image

        try:
            if isinstance(where, Path):
                data, name = where.read_bytes(), where
            else:
                path, offset, size = where
                with open(path, "rb") as f:
                    f.seek(offset)
                    data, name = f.read(size), path
            with Image.open(io.BytesIO(data)) as im:
                rgb = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
                w, h = im.size
        except OSError as e:
            raise HyperdomainError(f"{name}: cannot read a dataset image ({e})") from None
        return rgb.reshape(h, w, 3).permute(2, 0, 1).float() / 127.5 - 1

    def batch(self, seed: int, step: int, size: int, rank: int = 0, world: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(pair_seed(seed, step))
        picks = torch.randint(len(self.samples), (size,), generator=gen)[_rows(size, rank, world)].tolist()
        x = torch.stack([self._read(self.samples[i][0]) for i in picks])
        y = torch.stack([self._read(self.samples[i][1]) for i in picks])
        return _resize(x, self.size).to(self.device), _resize(y, self.size).to(self.device)
