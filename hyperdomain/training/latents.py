"""One training step's latents and noise, shared by every trainer (the paper's scheme)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainingBatch:
    """One step's inputs: W+ and noise for the source pass and for the adapted pass."""

    ws_src: torch.Tensor  # [B, num_ws, w_dim]
    ws_trg: torch.Tensor
    noise_src: list[torch.Tensor]
    noise_trg: list[torch.Tensor]


@torch.no_grad()
def sample_training_latents(G, rng: torch.Generator, batch: int, mixing: float,
                            device: torch.device) -> TrainingBatch:
    """One step's latents and noise, all drawn from ``rng`` on the CPU (the paper's scheme).

    Both passes start from the same ``z`` (and, with probability ``mixing``, the same second
    ``z``), but each draws its own crossover in ``[1, num_ws - 1]`` (one per batch) and its own
    noise, as the paper's code does. This keeps the image direction ``E(G_d) - E(G)`` away from
    zero at ``d = 0``: identical passes would make it rounding noise, whose huge gradient
    (about 1/|direction|) would fill Adam's second moment for hundreds of steps. Truncation is 1.
    """
    z1 = torch.randn(batch, G.z_dim, generator=rng)
    mix = bool(torch.rand((), generator=rng) < mixing)
    w1 = G.mapping(z1.to(device))
    if mix:
        z2 = torch.randn(batch, G.z_dim, generator=rng)
        w2 = G.mapping(z2.to(device))
        cross = torch.randint(1, G.num_ws, (2,), generator=rng).tolist()
        ws_src, ws_trg = G.style_mix(w1, w2, cross[0]), G.style_mix(w1, w2, cross[1])
    else:
        ws_src = ws_trg = w1[:, None, :].expand(-1, G.num_ws, -1)
    return TrainingBatch(ws_src, ws_trg, G.draw_noise(batch, rng, device), G.draw_noise(batch, rng, device))


def training_seed(seed: int) -> int:
    """A single-domain run's training RNG seed: apart from ``seed`` itself, which the sample grids use."""
    return (int(seed) * 0x9E3779B1 + 0x7F4A7C15) % (2**63)

