"""HyperDomainNet training on tiny models: augmentations, learning, files, resume, DDP, the CLI."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hyperdomain as hd
from hyperdomain.guidance.clip import templates
from hyperdomain.errors import HyperdomainError
from hyperdomain.guidance.evaluation import quality_and_diversity
from hyperdomain.training.hyper import _seed_for, convex_weights, draw_domains, resample_on_cone
from hyperdomain.model.hypernet import HyperDomainNet
from hyperdomain.guidance.losses import direction_loss, tt_direction_loss
from hyperdomain.files.run_checkpoints import load_checkpoint

from conftest import assert_user_error, cli, nan_on_call


ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Anime painting", "Pixar render", "Marble statue", "Pencil sketch", "Zombie", "Oil painting",
           "Cyberpunk neon", "Watercolor portrait"]
HELD_OUT = ["Charcoal drawing", "Bronze bust", "Stained glass"]
FAST = dict(width=64, templates="single", test_domains=None, sample_every=0, checkpoint_every=0, lr=1e-3)


def _write_lists(folder: Path) -> tuple[Path, Path]:
    train = folder / "train.txt"
    train.write_text("# tiny list\n" + "\n".join(PROMPTS[:3]) + "\n" + "\n".join(p + " - Photo" for p in PROMPTS[3:]) + "\n")
    test = folder / "test.txt"
    test.write_text("\n".join(HELD_OUT) + "\n")
    return train, test


@pytest.fixture
def lists(tmp_path):
    return _write_lists(tmp_path)


def run(G, clip, train_list, **kw):
    opts = {**FAST, "domains": str(train_list), **kw}
    return hd.train_hyper(G, clip=[clip], input_clip=clip, progress=False, **opts)


# ------------------------------------------------------------------------------------ augmentations
def test_convex_weights_are_dirichlet_rows():
    a = convex_weights(6, torch.Generator().manual_seed(0))
    assert a.shape == (6, 6) and (a >= 0).all() and torch.allclose(a.sum(1), torch.ones(6))
    assert torch.equal(a, convex_weights(6, torch.Generator().manual_seed(0)))  # reproducible from the generator
    state = torch.random.get_rng_state()
    many = torch.cat([convex_weights(4, torch.Generator().manual_seed(s)) for s in range(400)])
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    # Dirichlet(0.5, 0.5, 0.5, 0.5): mean 1/4, variance (1/4 * 3/4) / (2 + 1) = 1/16
    assert many.mean().item() == pytest.approx(0.25, abs=1e-6)
    assert many.var().item() == pytest.approx(1 / 16, rel=0.15)


def test_resample_on_cone():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2000, 16, generator=g, dtype=torch.float64) * 3
    r = resample_on_cone(v, 0.95, g)
    cos = (r * v).sum(1) / v.norm(dim=1)
    assert torch.allclose(r.norm(dim=1), torch.ones(2000, dtype=torch.float64))
    assert cos.min() >= 0.95 - 1e-12 and cos.max() <= 1 + 1e-12
    assert cos.mean().item() == pytest.approx(0.975, abs=0.002)  # uniform in [0.95, 1]
    # the offsets point every way around the axis: their mean for one axis vanishes
    axis = torch.zeros(4000, 16, dtype=torch.float64)
    axis[:, 0] = 1
    perp = resample_on_cone(axis, 0.5, g)[:, 1:]
    assert perp.mean(0).abs().max() < 0.05


# ------------------------------------------------------------------------------------ training
def _eval_losses(G, clip, net, prompts):
    """Direction and tt_direction losses of the net's domains on fixed latents (eval mode, no augmentation)."""
    tpl = templates("single")
    gen = torch.Generator().manual_seed(7)
    ws = G.mapping(torch.randn(16, G.z_dim, generator=gen))
    noise = G.draw_noise(16, gen)
    net.eval()
    with torch.no_grad():
        src = clip.encode_images(G.synthesis(ws, noise=noise))
        ds = net(net.embed(prompts, clip))
        trg = [clip.encode_images(G.synthesis(ws, domain=d, noise=noise)) for d in ds]
        direction = sum(float(direction_loss(src, t, clip.text(p, tpl) - clip.text("Photo", tpl)))
                        for p, t in zip(prompts, trg)) / len(prompts)
        texts = torch.stack([clip.text(p, tpl) for p in prompts])
        tt = sum(float(tt_direction_loss(torch.stack([t[i] for t in trg]), texts)) for i in range(16)) / 16
    return direction, tt


def test_short_run_lowers_the_losses(tiny_G, tiny_clip, lists):
    train, _ = lists
    # 120 steps: after 60 the drop (0.03-0.16) moved with float rounding alone (thread count,
    # op order); after 120 it is 0.09-0.18 on direction and 0.14-0.20 on tt over seeds 0-3
    net = run(tiny_G, tiny_clip, train, iters=120, convex_hull=False, resample_cos=None)
    torch.manual_seed(0)  # the trainer's initialisation for seed 0
    fresh = HyperDomainNet(net.config, meta=net.meta)
    fresh.text_encoder(tiny_clip)
    d0, tt0 = _eval_losses(tiny_G, tiny_clip, fresh, PROMPTS)
    d1, tt1 = _eval_losses(tiny_G, tiny_clip, net, PROMPTS)
    assert d0 > 0.97 and tt0 > 0.97  # a fresh network barely moves the images, in no useful direction
    assert d1 < d0 - 0.06 and tt1 < tt0 - 0.05, (d0, d1, tt0, tt1)


def test_held_out_prompts_give_distinct_domains(tiny_G, tiny_clip, lists):
    train, _ = lists
    net = run(tiny_G, tiny_clip, train, iters=30)
    held = net.domains(HELD_OUT)
    assert all(d.meta["prompt"] == p and d.dims == tiny_G.domain_dims for d, p in zip(held, HELD_OUT))
    held_dist = torch.pdist(torch.stack([d.vector for d in held]))
    seen_dist = torch.pdist(torch.stack([d.vector for d in net.domains(PROMPTS)]))
    # unseen prompts are told apart about as the training prompts are (not merely by rounding noise);
    # the median pair, since two of three random-CLIP prompts may well lie close together
    assert held_dist.median() > 0.1 * seen_dist.median() and held_dist.min() > 1e-4, (held_dist, seen_dist.median())
    assert net.meta["train_prompts"] == PROMPTS and net.meta["iterations"] == 30


def test_deterministic_and_resume_equals_uninterrupted(tmp_path, tiny_G, tiny_clip, lists):
    train, _ = lists
    a = run(tiny_G, tiny_clip, train, iters=8, out_dir=tmp_path / "a", checkpoint_every=3)
    b = run(tiny_G, tiny_clip, train, iters=8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    def interrupt_at_5(step, values):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run(tiny_G, tiny_clip, train, iters=8, out_dir=tmp_path / "cut", callback=interrupt_at_5)
    resumed = hd.train_hyper(tiny_G, clip=[tiny_clip], input_clip=tiny_clip, resume=tmp_path / "cut", progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), resumed.state_dict().values()))
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_training_leaves_the_callers_global_rng_alone(tiny_G, tiny_clip, lists):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    run(tiny_G, tiny_clip, lists[0], iters=2, batch=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    # and the network's initialisation still comes from the run's seed
    torch.manual_seed(999)
    a = run(tiny_G, tiny_clip, lists[0], iters=1, batch=2, seed=4)
    torch.manual_seed(5)
    b = run(tiny_G, tiny_clip, lists[0], iters=1, batch=2, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_files_round_trip(tmp_path, tiny_G, tiny_clip, lists):
    train, test = lists
    net = run(tiny_G, tiny_clip, train, iters=4, out_dir=tmp_path / "r", test_domains=str(test), sample_every=2)
    out = tmp_path / "r"
    assert (out / "samples.png").is_file() and (out / "samples" / "step_000002.png").is_file()
    assert (out / "samples_rows.txt").read_text().splitlines() == ["source"] + HELD_OUT
    loaded = hd.HyperDomainNet.load(out / "hypernet.safetensors")
    assert loaded.meta["input_clip"] == "tiny0" and loaded.meta["generator_fingerprint"] == tiny_G.fingerprint
    loaded.text_encoder(tiny_clip)
    d1, d2 = net.domain("Bronze bust"), loaded.domain("Bronze bust")
    assert torch.equal(d1.vector, d2.vector)
    d2.save(tmp_path / "bronze.safetensors")
    back = hd.Domain.load(tmp_path / "bronze.safetensors", generator=tiny_G)
    assert torch.equal(back.vector, d1.vector) and back.meta["prompt"] == "Bronze bust"
    other = hd.ClipEncoder(tiny_clip.model, tiny_clip.tokenizer, "other")
    with pytest.raises(HyperdomainError, match="takes prompts embedded by CLIP tiny0, not other"):
        loaded.text_encoder(other)


def test_non_finite_loss_keeps_the_last_good_state(tmp_path, tiny_G, tiny_clip, lists, monkeypatch):
    import hyperdomain.guidance.losses as losses_module  # where the trainer's loss assembly finds it

    train, _ = lists
    real = losses_module.tt_direction_loss
    monkeypatch.setattr(losses_module, "tt_direction_loss", nan_on_call(real, 4))
    # a non-finite loss at step 4: the last state whose loss was finite is step 3's start (2 updates)
    with pytest.raises(HyperdomainError, match=r"step 4: loss is not finite .*last good state \(step 2\)"):
        run(tiny_G, tiny_clip, train, iters=6, out_dir=tmp_path / "nan")
    monkeypatch.setattr(losses_module, "tt_direction_loss", real)
    two = run(tiny_G, tiny_clip, train, iters=2)
    tensors, meta = load_checkpoint(tmp_path / "nan" / "checkpoint.safetensors", "hyper")
    assert meta["step"] == 2
    for k, v in two.state_dict().items():
        assert torch.equal(tensors["net." + k], v), k  # BatchNorm statistics included


def test_bad_configs(tiny_G, tiny_clip, lists, tmp_path):
    train, _ = lists
    with pytest.raises(HyperdomainError, match="batch"):
        run(tiny_G, tiny_clip, train, iters=1, batch=1)
    with pytest.raises(HyperdomainError, match="direction, tt_direction or global"):
        run(tiny_G, tiny_clip, train, iters=1, losses={"l2": 1})
    bad = tmp_path / "bad.txt"
    bad.write_text("Anime painting\n - Photo\nAnime painting\n")
    with pytest.raises(HyperdomainError, match=r"line 2.*line 3"):
        run(tiny_G, tiny_clip, bad, iters=1)
    run(tiny_G, tiny_clip, train, iters=1, out_dir=tmp_path / "x")
    with pytest.raises(HyperdomainError, match="already holds a run"):
        run(tiny_G, tiny_clip, train, iters=1, out_dir=tmp_path / "x")


# ------------------------------------------------------------------------------------ evaluation
def test_quality_and_diversity_against_brute_force():
    g = torch.Generator().manual_seed(3)
    e = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    t = torch.randn(5, generator=g, dtype=torch.float64)
    q, div = quality_and_diversity(e, t)
    assert q == pytest.approx(sum(float(x @ t) / float(t.norm()) for x in e) / 7)
    pairs = [1 - float(e[i] @ e[j]) for i in range(7) for j in range(7) if i < j]
    assert div == pytest.approx(sum(pairs) / len(pairs))
    same = e[:1].repeat(4, 1)
    assert quality_and_diversity(same, e[0])[1] == pytest.approx(0.0, abs=1e-12)


def test_evaluate_rows(tiny_G, tiny_clip, lists, tmp_path):
    train, _ = lists
    net = run(tiny_G, tiny_clip, train, iters=4)
    dom = net.domain("Bronze bust")
    dom.meta["file"] = str(tmp_path / "bronze.safetensors")
    rows = hd.evaluate(tiny_G, [dom], hypernet=net, prompts=["Anime painting", "Stained glass"], source=True,
                       clip=tiny_clip, n=6, progress=False)
    got = [(r.name, r.prompt, r.split) for r in rows]
    assert got[:3] == [("bronze", "Bronze bust", "-"), ("hypernet", "Anime painting", "seen"),
                       ("hypernet", "Stained glass", "held-out")]
    assert {r.prompt for r in rows if r.name == "source"} == {"Bronze bust", "Anime painting", "Stained glass", "Photo"}
    # the hypernetwork row for a prompt equals scoring that prompt's exported domain
    again = hd.evaluate(tiny_G, [net.domain("Anime painting")], clip=tiny_clip, n=6, progress=False)[0]
    assert again.quality == pytest.approx(rows[1].quality) and again.diversity == pytest.approx(rows[1].diversity)
    # the same latents for every row: a zero domain scores exactly as the source does
    zero = hd.Domain.zeros(tiny_G, prompt="Photo")
    z = hd.evaluate(tiny_G, [zero], source=True, clip=tiny_clip, n=6, progress=False)
    assert (z[0].quality, z[0].diversity) == (z[-1].quality, z[-1].diversity) and z[-1].name == "source"
    from hyperdomain.guidance.evaluation import write_results

    write_results(rows, tmp_path / "r.json")
    write_results(rows, tmp_path / "r.csv")
    assert json.loads((tmp_path / "r.json").read_text())[0]["prompt"] == "Bronze bust"
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("name,prompt,split,quality,diversity")
    with pytest.raises(HyperdomainError, match="nothing to evaluate"):
        hd.evaluate(tiny_G, [], clip=tiny_clip, n=4, progress=False)


# ------------------------------------------------------------------------------------ CLI


def test_cli_train_sample_export_evaluate(tmp_path, tiny_ckpt, tiny_clip_config, lists):
    ckpt, _ = tiny_ckpt
    train, test = lists
    out = tmp_path / "hdn"
    base = ["--generator", ckpt, "--clip", tiny_clip_config, "--input-clip", tiny_clip_config, "--device", "cpu"]
    r = cli("train-hyper", *base, "--domains", train, "--test-domains", test, "--iters", 4, "--templates", "single",
            "--width", 64, "--out", out, "--sample-every", 2, "--loss", "direction=1", "--loss", "tt_direction=0.4",
            "--no-resample")
    assert r.exit_code == 0, r.output
    hyper = out / "hypernet.safetensors"
    assert hyper.is_file() and "4 steps, 8 training prompts" in r.stdout
    r = cli("sample", "--generator", ckpt, "--hyper", hyper, "-p", "Anime painting", "-p", "Bronze bust", "--with-source",
            "-n", 2, "--out", tmp_path / "g.png", "--device", "cpu", "--hyper-clip", tiny_clip_config)
    assert r.exit_code == 0 and "3 row(s)" in r.stdout, r.output
    r = cli("export", "--hyper", hyper, "-p", "Bronze bust", "--out", tmp_path / "b.safetensors",
            "--hyper-clip", tiny_clip_config)
    assert r.exit_code == 0, r.output
    r = cli("evaluate", "--generator", ckpt, "--hyper", hyper, "--prompts", test, "-p", "Anime painting", "--source",
            "--clip", tiny_clip_config, "--hyper-clip", tiny_clip_config, "-n", 4, "-o", tmp_path / "e.json",
            "-o", tmp_path / "e.csv", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "held-out" in r.stdout and "seen" in r.stdout and (tmp_path / "e.csv").is_file()
    rows = json.loads((tmp_path / "e.json").read_text())
    assert [x["split"] for x in rows if x["name"] == "hypernet"] == ["seen", "held-out", "held-out", "held-out"]
    r = cli("info", hyper)
    assert r.exit_code == 0 and "HyperDomainNet" in r.stdout and "8 (Anime painting" in r.stdout, r.output
    r = cli("info", out / "checkpoint.safetensors")
    assert r.exit_code == 0 and "train-hyper run checkpoint" in r.stdout and "4 of 4" in r.stdout, r.output
    r = cli("sample", "--generator", ckpt, "--domain", hyper, "--device", "cpu")
    assert r.exit_code == 2 and "it holds a hypernet" in r.stderr and len(r.stderr) < 400, r.output
    r = cli("train-hyper", "--resume", out, "--lr", 0.1, "--device", "cpu")
    assert r.exit_code == 2 and "drop --lr" in r.stderr, r.output
    # resume extends the run
    r = cli("train-hyper", "--resume", out, "--iters", 6, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert hd.HyperDomainNet.load(hyper).meta["iterations"] == 6


def test_cli_user_errors(tmp_path, tiny_ckpt, tiny_clip_config, lists):
    ckpt, _ = tiny_ckpt
    train, _ = lists
    base = ["--generator", ckpt, "--clip", tiny_clip_config, "--input-clip", tiny_clip_config, "--device", "cpu",
            "--iters", 1, "--templates", "single", "--width", 64, "--test-domains", "none"]
    bad = tmp_path / "bad.txt"
    bad.write_text("Anime painting\n\nAnime  Painting\nSketch - \n")
    for args, fragment in (
        (["--domains", bad], "line 3"),
        (["--domains", tmp_path / "missing.txt"], "missing.txt"),
        (["--domains", train, "--loss", "nope=1"], "unknown loss"),
        (["--domains", train, "--batch", 3, "--out", tmp_path / "o"], None),
    ):
        r = cli("train-hyper", *base, *args)
        if fragment is None:
            assert r.exit_code == 0, r.output
            continue
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and fragment in r.stderr, r.output
    r = cli("sample", "--generator", ckpt, "-p", "Anime painting", "--device", "cpu")
    assert r.exit_code == 2 and "--hyper" in r.stderr
    r = cli("evaluate", "--generator", ckpt, "--clip", tiny_clip_config, "-o", tmp_path / "x.txt", "--device", "cpu")
    assert r.exit_code == 2 and ".json or .csv" in r.stderr


# ------------------------------------------------------------------------------------ DDP
def _torchrun(nproc: int, *args, timeout=300, expect_ok=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


WORKER = ROOT / "tests" / "ddp_worker.py"
# The DDP runs of tests/ddp_worker.py that the tests below assert on: OUT_DIR name -> ITERS and options
DDP_RUNS = {
    "ddp": [4],  # with the convex hull, a checkpoint every 2 steps
    "share": [3, "--no-convex-hull", "--checkpoint-every", 0],
    "poison": [6, "--poison-rank", 1, "--checkpoint-every", 0, "--no-convex-hull"],
    "full": [5, "--fail-write"],
}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, tiny_clip_config):
    """One torchrun launch (2 processes) making every run of DDP_RUNS, one after another in the
    same process group (a launch is mostly its imports): (the finished launch, the folder holding
    each run's OUT_DIR, the training list). Two of the runs stop, so the launch exits nonzero."""
    root = tmp_path_factory.mktemp("ddp_runs")
    train, _ = _write_lists(root)
    args = []
    for name, opts in DDP_RUNS.items():
        args += ["--then"] * bool(args) + [root / name, *opts]
    proc = _torchrun(2, WORKER, tiny_clip_config, train, *args, expect_ok=False)
    return proc, root, train


def _stopped(proc, out) -> list[str]:
    """The ranks on which the run in ``out`` stopped with an error (ddp_worker's marker files)."""
    return sorted(p.name for p in out.glob("stopped_rank*.txt"))


@pytest.mark.slow  # torchrun with 2 processes
def test_ddp_two_processes_keep_ranks_identical_and_resume(tiny_clip_config, ddp_runs):
    from safetensors.torch import load_file

    proc, root, train = ddp_runs
    out = root / "ddp"
    assert _stopped(proc, out) == [], proc.stdout[-3000:] + proc.stderr[-3000:]  # finished on both ranks
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # weights and BN buffers
    # with the convex hull each rank mixes over the whole global batch: both see all 8 domains of the step
    p0, p1 = (json.loads((out / f"picks_rank{r}.json").read_text()) for r in (0, 1))
    expected = [draw_domains(0, step, 8, len(PROMPTS), convex=True)[0].tolist() for step in range(4)]
    assert p0 == expected and p1 == expected
    _, meta = load_checkpoint(out / "checkpoint.safetensors", "hyper")
    assert meta["step"] == 4 and meta["world"] == 2
    # resume the 2-process run on 1 process: it continues from step 4
    _torchrun(1, WORKER, tiny_clip_config, train, out, 6, "--resume")
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    assert hd.HyperDomainNet.load(out / "hypernet.safetensors").meta["iterations"] == 6


def test_global_batch_draws_are_shared_and_ranks_draw_their_own_latents():
    picks, alphas = draw_domains(3, 17, 8, 100, convex=True)
    again, alphas2 = draw_domains(3, 17, 8, 100, convex=True)  # what another rank computes
    assert torch.equal(picks, again) and torch.equal(alphas, alphas2) and alphas.shape == (8, 8)
    assert not torch.equal(picks, draw_domains(3, 18, 8, 100, convex=True)[0])
    # per-rank generators (latents, noise, crops) differ between ranks and steps, and from the shared one
    seeds = {_seed_for(3, step, rank) for step in range(50) for rank in (-1, 0, 1, 2, 3)}
    assert len(seeds) == 250


def test_hard_interrupt_inside_a_step_saves_the_steps_start(tmp_path, tiny_G, tiny_clip, lists, monkeypatch):
    """A second Ctrl-C lands after the forward of step 4 (BatchNorm already updated): step 3 is saved."""
    import hyperdomain.training.hyper as ht

    train, _ = lists
    real = ht._HyperRun._losses

    def interrupting(self, *args):
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(ht._HyperRun, "_losses", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_G, tiny_clip, train, iters=6, out_dir=tmp_path / "hard")
    monkeypatch.setattr(ht._HyperRun, "_losses", real)
    three = run(tiny_G, tiny_clip, train, iters=3)
    tensors, meta = load_checkpoint(tmp_path / "hard" / "checkpoint.safetensors", "hyper")
    assert meta["step"] == 3
    for k, v in three.state_dict().items():
        assert torch.equal(tensors["net." + k], v), k


@pytest.mark.slow  # torchrun with 2 processes
def test_ddp_non_finite_loss_on_one_rank_stops_both(ddp_runs):
    proc, root, _ = ddp_runs
    out = root / "poison"
    assert proc.returncode != 0 and _stopped(proc, out) == ["stopped_rank0.txt", "stopped_rank1.txt"]
    assert proc.stdout.count("STOPPED: step 3: loss is not finite") == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    _, meta = load_checkpoint(out / "checkpoint.safetensors", "hyper")
    assert meta["step"] == 1  # no periodic checkpoints: the NaN guard's save of the last state with finite losses


@pytest.mark.slow  # torchrun with 2 processes
def test_cli_train_hyper_under_torchrun(tmp_path, tiny_ckpt, tiny_clip_config, lists):
    """The same command, 2 processes: DDP with gloo; rank 0 writes; one line of output."""
    ckpt, _ = tiny_ckpt
    train, test = lists
    out = tmp_path / "tr"
    proc = _torchrun(2, "-m", "cli.main", "train-hyper", "--generator", ckpt, "--clip", tiny_clip_config,
                     "--input-clip", tiny_clip_config, "--domains", train, "--test-domains", test, "--iters", 3,
                     "--templates", "single", "--width", 64, "--out", out, "--device", "cpu", "--no-progress")
    assert proc.stdout.count("wrote ") == 1, proc.stdout
    _, meta = load_checkpoint(out / "checkpoint.safetensors", "hyper")
    assert meta["world"] == 2 and meta["step"] == 3
    assert hd.HyperDomainNet.load(out / "hypernet.safetensors").meta["iterations"] == 3


@pytest.mark.slow  # torchrun with 2 processes
def test_ddp_ranks_take_their_own_share_of_the_global_batch(ddp_runs):
    """Without the convex hull, rank 0 trains on the first half of the step's domains, rank 1 on the rest."""
    proc, root, _ = ddp_runs
    out = root / "share"
    assert _stopped(proc, out) == [], proc.stdout[-3000:] + proc.stderr[-3000:]  # finished on both ranks
    p0, p1 = (json.loads((out / f"picks_rank{r}.json").read_text()) for r in (0, 1))
    for step in range(3):
        expected = draw_domains(0, step, 8, len(PROMPTS), convex=False)[0].tolist()
        assert p0[step] == expected[:4] and p1[step] == expected[4:]
    assert p0 != p1


@pytest.mark.slow  # torchrun with 2 processes
def test_ddp_write_failure_on_rank_0_stops_every_rank(ddp_runs):
    """A failed write on rank 0 must not leave rank 1 waiting in a collective: both stop, one line each."""
    proc, root, _ = ddp_runs
    assert proc.returncode != 0 and _stopped(proc, root / "full") == ["stopped_rank0.txt", "stopped_rank1.txt"]
    assert proc.stdout.count("STOPPED: rank 0 could not write") == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "No space left on device" in proc.stdout


@pytest.mark.parametrize("every,written", [(2, [2, 4]), (3, [3, 4])])
def test_each_step_is_checkpointed_at_most_once(tmp_path, tiny_G, tiny_clip, lists, monkeypatch, every, written):
    """The end of a run writes the checkpoint only if the last step's periodic save did not."""
    import hyperdomain.training.loop as train_state  # where the loop finds it

    steps, real = [], train_state.save_checkpoint
    monkeypatch.setattr(train_state, "save_checkpoint",
                        lambda path, kind, tensors, meta, *a: steps.append(meta["step"]) or real(path, kind, tensors, meta, *a))
    run(tiny_G, tiny_clip, lists[0], iters=4, batch=2, out_dir=tmp_path / "run", checkpoint_every=every)
    assert steps == written


@pytest.mark.slow  # torchrun with 2 processes
def test_sigterm_under_torchrun_saves_on_every_rank_agreeing(tmp_path, tiny_ckpt, tiny_clip_config, lists):
    """SIGTERM to torchrun (what a scheduler sends) reaches every rank; they agree on a step
    boundary, rank 0 saves it and says how to continue, and the run resumes on one process."""
    import time

    ckpt, _ = tiny_ckpt
    train, _ = lists
    out = tmp_path / "tr"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cli.main",
           "train-hyper", "--generator", str(ckpt), "--clip", str(tiny_clip_config), "--input-clip",
           str(tiny_clip_config), "--domains", str(train), "--test-domains", "none", "--iters", "100000",
           "--templates", "single", "--width", "64", "--out", str(out), "--device", "cpu", "--no-progress",
           "--checkpoint-every", "0", "--sample-every", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "log.jsonl").is_file() or len((out / "log.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert "Traceback" not in stdout and f"hyperdomain train-hyper --resume {out}" in stderr, stderr[-3000:]
    assert stderr.count("terminated (SIGTERM); the run is saved") == 1  # rank 0 alone
    _, meta = load_checkpoint(out / "checkpoint.safetensors", "hyper")
    step = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"]
    assert meta["step"] == step and meta["world"] == 2
    r = cli("train-hyper", "--resume", out, "--iters", step + 1, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
