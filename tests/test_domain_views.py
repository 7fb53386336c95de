"""hd.data.DomainViews: the configured pairs, deterministic per (seed, epoch, rank), worker-aware; the example."""
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import hyperdomain as hd
from hyperdomain.errors import HyperdomainError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def doms(tiny_G):
    g = torch.Generator().manual_seed(2)
    return [hd.Domain(torch.randn(tiny_G.num_domain_params, generator=g) * 0.5, tiny_G.domain_dims) for _ in range(2)]


def render_one(G, z, column, table):
    return G.synthesis(G.mapping(z[None], 0.7), domain=table[column][None], noise_mode="const")[0].clamp(-1, 1)


@pytest.mark.parametrize("pairs", ["views", "domains", "both"])
def test_pairs_are_what_was_asked(tiny_G, doms, pairs):
    views = hd.data.DomainViews(tiny_G, doms, pairs=pairs, batch_size=6, batches=2, sigma=0.3, seed=1)
    plan = views.plan(0)
    same_latent = torch.equal(plan.z_anchor, plan.z_positive)
    same_domain = torch.equal(plan.d_anchor, plan.d_positive)
    assert same_latent == (pairs == "domains")
    if pairs == "views":
        assert same_domain
        assert (plan.z_positive - plan.z_anchor).std().item() == pytest.approx(0.3, rel=0.25)
    else:
        assert (plan.d_anchor != plan.d_positive).all()  # always another domain of the pool
    assert set(plan.d_anchor.tolist()) <= {0, 1, 2}
    batches = list(views)
    assert len(batches) == len(views) == 2
    anchor, positive = batches[0]
    assert anchor.shape == positive.shape == (6, 3, 32, 32) and anchor.device == tiny_G.device
    table = torch.stack([torch.zeros(tiny_G.num_domain_params), doms[0].vector, doms[1].vector])
    for i in (0, 5):  # each row is the generator's image of its latent in its domain
        torch.testing.assert_close(anchor[i], render_one(tiny_G, plan.z_anchor[i], plan.d_anchor[i], table),
                                   atol=2e-4, rtol=0)
        torch.testing.assert_close(positive[i], render_one(tiny_G, plan.z_positive[i], plan.d_positive[i], table),
                                   atol=2e-4, rtol=0)


def test_deterministic_per_seed_epoch_and_rank_and_split_over_workers(tiny_G, doms, monkeypatch):
    def draws(**kw):
        v = hd.data.DomainViews(tiny_G, doms, pairs="both", batch_size=2, batches=4, **kw)
        return v, [v.plan(b).z_anchor for b in range(4)]

    v, a = draws(seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, draws(seed=0)[1]))
    assert not torch.equal(a[0], draws(seed=1)[1][0]) and not torch.equal(a[0], draws(seed=0, rank=1, world=2)[1][0])
    v.set_epoch(1)
    assert not torch.equal(a[0], v.plan(0).z_anchor) and torch.equal(a[0], v.plan(0, epoch=0).z_anchor)
    v.set_epoch(0)
    whole = list(v)
    parts = []
    for w in range(2):  # DataLoader worker w of 2 yields batches w, w + 2
        monkeypatch.setattr("hyperdomain.datasets.views.get_worker_info",
                            lambda w=w: SimpleNamespace(id=w, num_workers=2))
        parts.append(list(v))
    assert len(parts[0]) == len(parts[1]) == 2
    for got, want in zip([parts[0][0], parts[1][0], parts[0][1], parts[1][1]], whole):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_bad_configurations(tiny_G, doms):
    for kw, fragment in ((dict(pairs="rotations"), "pairs must be one of"), (dict(batch_size=0), "batch_size must be"),
                         (dict(batches=-1), "batches must be"), (dict(size=64), "only downscaled")):
        with pytest.raises(HyperdomainError, match=fragment):
            hd.data.DomainViews(tiny_G, doms, **kw)
    with pytest.raises(HyperdomainError, match="at least two"):
        hd.data.DomainViews(tiny_G, [], pairs="domains")
    with pytest.raises(HyperdomainError, match="convs"):
        hd.data.DomainViews(tiny_G, [hd.Domain(torch.zeros(4), (4,))])


def test_contrastive_example_runs(tmp_path, tiny_ckpt, doms, capsys):
    ckpt, _ = tiny_ckpt
    doms[0].save(tmp_path / "a.safetensors")
    spec = importlib.util.spec_from_file_location("contrastive", ROOT / "examples" / "contrastive.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses = example.main(["--generator", str(ckpt), "--domain", str(tmp_path / "a.safetensors"), "--steps", "3",
                           "--batch", "4", "--size", "16", "--device", "cpu"])
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert "step    3" in capsys.readouterr().out
    # the loss is SimCLR's: identical partners far from the rest give ~0, random pairs about log(2B - 1)
    a = torch.eye(4) * 10
    assert example.nt_xent(a, a, temperature=0.1).item() < 1e-3
    r = example.nt_xent(torch.randn(256, 8), torch.randn(256, 8))
    assert r.item() == pytest.approx(math.log(511), rel=0.05)
