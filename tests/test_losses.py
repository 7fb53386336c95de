"""The losses against values worked out by hand and against brute-force double loops."""
import math

import pytest
import torch

from hyperdomain.guidance import losses
from hyperdomain.errors import HyperdomainError
from hyperdomain.guidance.losses import (LossWeights, cosine, direction_loss, global_loss, indomain_loss, l2_loss,
                                tt_direction_loss)


def unit(*v):
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm()


def test_cosine_known_angles_and_zero():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([0.0, 2.0], dtype=torch.float64)
    assert torch.allclose(cosine(a, b), torch.tensor([0.0, 1 / math.sqrt(2), 0.0], dtype=torch.float64))


def test_direction_loss_hand_values():
    # image deltas at 0, 90 and 180 degrees (and 60) from the text direction (scaled: cosine ignores length)
    src = torch.tensor([[0.3, -0.7], [1.0, 2.0], [-0.5, 0.1], [2.0, 0.0]], dtype=torch.float64)
    trg = src + torch.tensor([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    text = torch.tensor([7.0, 0.0], dtype=torch.float64)
    # 1 - cos: 0, 1, 2, 0.5 -> mean 0.875
    assert direction_loss(src, trg, text).item() == pytest.approx(0.875)
    # per-sample text directions
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # cos: 1, 1, -1, sqrt(3)/2 -> 1-cos: 0, 0, 2, 1 - sqrt(3)/2
    assert direction_loss(src, trg, texts).item() == pytest.approx((2 + 1 - math.sqrt(3) / 2) / 4)


def test_global_loss_hand_values():
    trg = torch.stack([unit(1, 0, 0), unit(1, 1, 0), unit(0, 0, 1)])
    text = unit(1, 0, 0)
    assert global_loss(trg, text).item() == pytest.approx((0 + (1 - 1 / math.sqrt(2)) + 1) / 3)


def _brute_indomain(src, trg):
    total, n = 0.0, 0
    for i in range(len(src)):
        for j in range(i + 1, len(src)):
            cs = float(src[i] @ src[j] / (src[i].norm() * src[j].norm()))
            ct = float(trg[i] @ trg[j] / (trg[i].norm() * trg[j].norm()))
            total += (cs - ct) ** 2
            n += 1
    return total / n


def _brute_tt(trg, texts):
    total, n = 0.0, 0
    for i in range(len(trg)):
        for j in range(i + 1, len(trg)):
            di, dt = trg[i] - trg[j], texts[i] - texts[j]
            if di.norm() == 0 and dt.norm() == 0:
                continue
            total += 1 - float(di @ dt / (di.norm() * dt.norm()))
            n += 1
    return total / n


def test_indomain_matches_double_loop_and_hand_value():
    g = torch.Generator().manual_seed(0)
    src = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    trg = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    assert indomain_loss(src, trg).item() == pytest.approx(_brute_indomain(src, trg), rel=1e-12)
    # two samples: source at 90 degrees, target at 0 degrees -> (0 - 1)^2 = 1
    assert indomain_loss(torch.stack([unit(1, 0), unit(0, 1)]), torch.stack([unit(1, 0), unit(1, 0)])).item() \
        == pytest.approx(1.0)
    # an identical geometry costs nothing, even rotated
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    pts = torch.stack([unit(1, 0), unit(1, 2), unit(-3, 1)])
    assert indomain_loss(pts, pts @ rot.T).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(HyperdomainError):
        indomain_loss(src[:1], trg[:1])


def test_tt_direction_matches_double_loop_and_skips_empty_pairs():
    g = torch.Generator().manual_seed(1)
    trg = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    texts = torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert tt_direction_loss(trg, texts).item() == pytest.approx(_brute_tt(trg, texts), rel=1e-12)
    # rows 0 and 1 identical in image and text: that pair is left out
    trg2, texts2 = trg.clone(), texts.clone()
    trg2[1], texts2[1] = trg2[0], texts2[0]
    assert tt_direction_loss(trg2, texts2).item() == pytest.approx(_brute_tt(trg2, texts2), rel=1e-12)
    # hand value: two domains whose image delta points exactly along the text delta
    assert tt_direction_loss(torch.stack([unit(1, 0), unit(0, 1)]),
                             torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)).item() == pytest.approx(0.0)
    assert tt_direction_loss(trg[:2].repeat(2, 1)[:2] * 0, texts[:2] * 0).item() == 0.0


def test_l2_hand_value():
    d = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0, 3.0])
    # convs of widths 2 and 4: mean(1,1) + mean(4,0,0,9) = 1 + 13/4
    assert l2_loss(d, (2, 4)).item() == pytest.approx(1 + 13 / 4)
    assert l2_loss(torch.stack([d, 2 * d]), (2, 4)).item() == pytest.approx((1 + 13 / 4) * (1 + 4) / 2)


def test_zero_image_direction_has_a_finite_gradient_along_the_text():
    src = unit(1, 0, 0)[None]
    delta = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    text = unit(0, 1, 0)
    loss = direction_loss(src, src + delta, text)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    g = delta.grad[0]
    assert torch.isfinite(g).all() and g[1] < 0 and g[0] == 0 and g[2] == 0  # descent moves along +text


def test_loss_weights_parse_and_errors():
    assert LossWeights.parse([]).as_dict() == {"direction": 1.0}
    w = LossWeights.parse(["direction=1", "indomain=0.5", "global=2"])
    assert w.as_dict() == {"direction": 1.0, "global": 2.0, "indomain": 0.5}
    assert LossWeights.parse(["indomain=1"]).as_dict() == {"indomain": 1.0}
    for bad, fragment in ((["nope=1"], "unknown loss"), (["direction"], "NAME=WEIGHT"), (["direction=x"], "number"),
                          (["direction=-1"], ">= 0"), (["direction=nan"], ">= 0"), (["direction=0"], "every loss")):
        with pytest.raises(HyperdomainError, match=fragment):
            LossWeights.parse(bad)


def test_text_losses_sum_over_encoders_and_weight_the_total():
    gen = torch.Generator().manual_seed(0)

    def unit(*shape):
        v = torch.randn(*shape, generator=gen)
        return v / v.norm(dim=-1, keepdim=True)

    encs = [(unit(4, 8), unit(4, 8), unit(4, 8), unit(4, 8)) for _ in range(2)]  # per-sample texts [B, E]
    domain, dims = torch.randn(4, 6, generator=gen), (2, 4)
    active = {"direction": 1.0, "tt_direction": 0.4, "global": 0.5, "indomain": 2.0, "l2": 0.1}
    embeddings = [losses.Embeddings(s, t, direction=d, target=g) for s, t, d, g in encs]
    parts = losses.compute_losses(active, iter(embeddings), losses.StepImages(domain, dims))
    want = {
        "direction": sum(losses.direction_loss(s, t, d) for s, t, d, _ in encs),
        "tt_direction": sum(losses.tt_direction_loss(t, g) for _, t, _, g in encs),
        "global": sum(losses.global_loss(t, g) for _, t, _, g in encs),
        "indomain": sum(losses.indomain_loss(s, t) for s, t, _, _ in encs),
        "l2": losses.l2_loss(domain, dims),
    }
    assert set(parts) == set(want) | {"total"}
    for name, value in want.items():
        torch.testing.assert_close(parts[name], value)
    torch.testing.assert_close(parts["total"], sum(active[n] * v for n, v in want.items()))
    only = losses.compute_losses({"indomain": 1.0}, iter(embeddings), losses.StepImages(domain, dims))
    assert set(only) == {"indomain", "total"}


def test_one_shot_losses_against_their_definitions_one_by_one():
    """The registry's one-shot losses: each term written out per sample and per encoder with Python loops and
    math.acos-free cosines, the text direction included, clip_ref averaged over the encoders."""
    g = torch.Generator().manual_seed(5)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    encs = []
    for _ in range(2):
        src, trg = rnd(3, 4), rnd(3, 4)
        encs.append((src / src.norm(dim=1, keepdim=True), trg / trg.norm(dim=1, keepdim=True), unit(*rnd(4)),
                     unit(*rnd(4)), unit(*rnd(4))[None], rnd(4)))
    rec, ref = rnd(1, 3, 8, 8), rnd(1, 3, 8, 8)
    domain, dims = rnd(6), (4, 2)
    weights = {"direction": 1.0, "clip_within": 0.5, "clip_ref": 30.0, "l2_rec": 10.0, "lpips_rec": 10.0,
               "text_direction": 2.0, "l2": 3.0}
    def embeddings(encs):
        return iter([losses.Embeddings(src, trg, direction=r - r_src, target=r, ref=r, ref_src=r_src, rec=rec_emb,
                                       text_direction=text) for src, trg, r, r_src, rec_emb, text in encs])

    images = losses.StepImages(domain, dims, rec=rec, ref=ref, lpips=lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)))
    parts = losses.compute_losses(weights, embeddings(encs), images)

    def cos(a, b):
        return float((a * b).sum() / (a.norm() * b.norm()))

    want = {"direction": 0.0, "clip_within": 0.0, "clip_ref": 0.0, "text_direction": 0.0}
    for src, trg, r, r_src, rec_emb, text in encs:
        want["direction"] += sum(1 - cos(trg[i] - src[i], r - r_src) for i in range(3)) / 3
        want["clip_within"] += sum(1 - cos(trg[i] - r, src[i] - r_src) for i in range(3)) / 3
        want["clip_ref"] += (1 - cos(rec_emb[0], r)) / 2  # the mean over the two encoders
        want["text_direction"] += sum(1 - cos(trg[i] - src[i], text) for i in range(3)) / 3
    want["l2_rec"] = float(((rec - ref) ** 2).mean())
    want["lpips_rec"] = float((rec - ref).abs().mean())
    want["l2"] = float((domain[:4] ** 2).mean() + (domain[4:] ** 2).mean())
    for name, value in want.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-10), name
    assert parts["total"].item() == pytest.approx(sum(weights[n] * v for n, v in want.items()), rel=1e-10)
    with pytest.raises(HyperdomainError, match="text_direction needs a target prompt"):
        losses.compute_losses({"text_direction": 1.0}, embeddings([encs[0][:5] + (None,)]), images)


def test_the_registry_is_what_trainers_and_the_cli_read():
    """Each loss is declared once: the trainers' defaults, what each may use and the --loss help come
    from LOSSES (a loss added there reaches all three)."""
    import hyperdomain as hd

    assert hd.AdaptConfig(target="x").losses == losses.default_weights("adapt") == LossWeights(direction=1)
    assert hd.ImageAdaptConfig(image="x.png").losses.as_dict() == {
        "direction": 1.0, "clip_within": 0.5, "clip_ref": 30.0, "l2_rec": 10.0, "lpips_rec": 10.0}
    assert hd.HyperTrainConfig().losses.as_dict() == {"direction": 1.0, "tt_direction": 0.4}
    assert losses.losses_of("adapt") == ("direction", "global", "indomain", "l2")
    assert set(losses.losses_of("image")) == set(losses.LOSSES) - {"tt_direction", "l1", "lpips"}
    assert losses.losses_of("translator") == ("direction", "l1", "lpips")
    assert losses.default_weights("translator").as_dict() == {"l1": 1.0, "lpips": 1.0}
    with pytest.raises(HyperdomainError, match="--loss clip_ref: not a loss of text adaptation"):
        hd.AdaptConfig(target="x", losses={"direction": 1, "clip_ref": 1})
    with pytest.raises(HyperdomainError, match="--loss tt_direction: not a loss of one-shot adaptation"):
        hd.ImageAdaptConfig(image="x.png", losses={"tt_direction": 1})
    for run in ("adapt", "image", "hyper"):
        text = losses.losses_help(run)
        assert all(f"{name}: {losses.LOSSES[name].help}" in text for name in losses.losses_of(run))
    # every loss is computed by exactly one of the two ways, and the weights keep the registry's order
    assert all((loss.per_encoder is None) != (loss.once is None) for loss in losses.LOSSES.values())
    assert list(LossWeights(l2=1, direction=2).as_dict()) == ["direction", "l2"]
