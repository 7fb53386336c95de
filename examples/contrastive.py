"""SimCLR on pairs a generator makes: a small encoder learns features that hold across latent
neighbours and across domains (the same face as a photo and as a Pixar render).

No images are stored: ``hd.data.DomainViews`` renders every batch of (anchor, positive) pairs on
the generator's device, one generator pass per batch.

    python examples/contrastive.py --generator ffhq --domain pixar.safetensors --domain anime.safetensors \\
        --pairs both --steps 300 --batch 64 --size 64
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

import hyperdomain as hd


def small_encoder(dim: int = 64) -> nn.Module:
    """Three strided convs, global pooling, and SimCLR's two-layer projection head."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, dim))


def nt_xent(a: torch.Tensor, p: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's loss: each of the 2B embeddings must pick its partner among the other 2B - 1."""
    z = F.normalize(torch.cat([a, p]), dim=1)  # [2B, dim]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # never oneself
    b = a.shape[0]
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, partner)


def main(argv: list[str] | None = None) -> list[float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", default="ffhq")
    ap.add_argument("--domain", action="append", default=[], help="a domain file; repeatable")
    ap.add_argument("--pairs", choices=["views", "domains", "both"], default="both")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--sigma", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    G = hd.load_generator(args.generator, device=args.device)
    domains = [hd.Domain.load(p, generator=G) for p in args.domain]
    views = hd.data.DomainViews(G, domains, pairs=args.pairs, batch_size=args.batch, batches=args.steps,
                                sigma=args.sigma, size=min(args.size, G.resolution), seed=args.seed)
    torch.manual_seed(args.seed)
    net = small_encoder().to(args.device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    losses = []
    for step, (anchor, positive) in enumerate(views, start=1):
        loss = nt_xent(net(anchor), net(positive))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    k = max(1, min(20, len(losses) // 4))
    chance = math.log(2 * args.batch - 1)
    print(f"loss: first {k} steps {sum(losses[:k]) / k:.3f}, last {k} steps {sum(losses[-k:]) / k:.3f} "
          f"(chance {chance:.3f})")
    return losses


if __name__ == "__main__":
    main()
