"""Single-domain adaptation on tiny models: learning, files, resume, NaN guard, the CLI."""
import json
import os
import signal

import pytest
import torch

import hyperdomain as hd
from hyperdomain.training.adapt import AdaptConfig, adapt_step
from hyperdomain.training.latents import sample_training_latents
from hyperdomain.guidance.clip import templates
from hyperdomain.errors import HyperdomainError
from hyperdomain.guidance.losses import LossWeights, direction_loss, l2_loss

from conftest import assert_user_error, cli, make_tiny_generator, nan_on_call, sigterm_after_first_step

PIXAR = "3D render in the style of Pixar"


def run_adapt(G, clip, **kw):
    kw.setdefault("progress", False)
    return hd.adapt(G, kw.pop("target", PIXAR), clip=[clip], **kw)


def held_out_direction_loss(G, clip, d, prompt=PIXAR):
    """The direction loss on 64 fixed latents and noises that training never saw."""
    tpl = templates("imagenet")
    tdir = clip.text(prompt, tpl) - clip.text("Photo", tpl)
    gen = torch.Generator().manual_seed(12345)
    ws = G.mapping(torch.randn(64, G.z_dim, generator=gen))
    noise = G.draw_noise(64, gen)
    with torch.no_grad():
        src = clip.encode_images(G.synthesis(ws, noise=noise))
        trg = clip.encode_images(G.synthesis(ws, domain=d, noise=noise))
    return float(direction_loss(src, trg, tdir))


def test_adaptation_learns_the_text_direction(tiny_G, tiny_clip):
    domain = run_adapt(tiny_G, tiny_clip, iters=30, lr=0.02)
    d = domain.vector
    trained = held_out_direction_loss(tiny_G, tiny_clip, d)
    # random vectors with the same per-conv norms move the images, but not along the text direction
    random_losses = []
    for s in range(6):
        r = torch.randn(d.shape, generator=torch.Generator().manual_seed(s))
        r = torch.cat([rb * db.norm() / rb.norm() for rb, db in zip(r.split(tiny_G.domain_dims), d.split(tiny_G.domain_dims))])
        random_losses.append(held_out_direction_loss(tiny_G, tiny_clip, r))
    mean_random = sum(random_losses) / len(random_losses)
    assert trained < 0.85, trained  # random directions give about 1
    assert trained < min(random_losses) - 0.1 and trained < mean_random - 0.15, (trained, random_losses)
    # the direction is the prompt's own: against another prompt's direction it is worse
    assert held_out_direction_loss(tiny_G, tiny_clip, d, prompt="Charcoal sketch") > trained + 0.05


def test_only_the_domain_is_trained(tiny_clip):
    G = make_tiny_generator()
    G.requires_grad_(True)  # adapt freezes whatever it is given
    before_g = {k: v.clone() for k, v in G.state_dict().items()}
    before_c = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    seen = []
    run_adapt(G, tiny_clip, iters=3, callback=lambda step, losses, d: seen.append((step, dict(losses))))
    assert not any(p.requires_grad for p in G.parameters())
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before_g.items())
    assert all(torch.equal(v, tiny_clip.state_dict()[k]) for k, v in before_c.items())
    assert [s for s, _ in seen] == [1, 2, 3] and set(seen[0][1]) == {"direction", "total"}


def test_step_combines_losses_over_the_ensemble(tiny_G, tiny_clip_config):
    from conftest import make_tiny_clip

    a, b = make_tiny_clip(tiny_clip_config, seed=1), make_tiny_clip(tiny_clip_config, seed=2)
    tpl = templates("single")
    texts = [{"target": e.text(PIXAR, tpl), "direction": e.text(PIXAR, tpl) - e.text("Photo", tpl)} for e in (a, b)]
    batch = sample_training_latents(tiny_G, torch.Generator().manual_seed(0), 4, 0.9, torch.device("cpu"))
    d = 0.1 * torch.randn(tiny_G.num_domain_params, generator=torch.Generator().manual_seed(3))
    w = LossWeights(direction=1.0, global_=0.5, indomain=2.0, l2=3.0)
    parts = adapt_step(tiny_G, [a, b], d, batch, texts, w)
    single = [adapt_step(tiny_G, [e], d, batch, [t], w) for e, t in zip((a, b), texts)]
    assert single[0]["direction"].item() != pytest.approx(single[1]["direction"].item())  # two different models
    for name in ("direction", "global", "indomain"):
        assert parts[name].item() == pytest.approx(single[0][name].item() + single[1][name].item(), rel=1e-5)
    expected_total = sum(wt * parts[n].item() for n, wt in w.as_dict().items())
    assert parts["total"].item() == pytest.approx(expected_total, rel=1e-5)
    assert parts["l2"].item() == pytest.approx(l2_loss(d, tiny_G.domain_dims).item())


def test_training_latents_follow_the_paper(tiny_G):
    """Same z for both passes; each pass its own single crossover (shared by the batch) and noise."""
    mixed = 0
    for seed in range(20):
        batch = sample_training_latents(tiny_G, torch.Generator().manual_seed(seed), 3, 0.5, torch.device("cpu"))
        for ws in (batch.ws_src, batch.ws_trg):
            changes = (ws[:, 1:] != ws[:, :-1]).any(-1)  # [B, L-1]: where the latent switches
            assert (changes.sum(1) <= 1).all() and (changes == changes[:1]).all()
        # first layer from z1 and last from z2 (when mixing) in both passes
        assert torch.equal(batch.ws_src[:, 0], batch.ws_trg[:, 0]) and torch.equal(batch.ws_src[:, -1], batch.ws_trg[:, -1])
        mixed += bool((batch.ws_src[:, 0] != batch.ws_src[:, -1]).any())
        assert len(batch.noise_src) == tiny_G.config.num_convs and batch.noise_src[0].shape[0] == 3
        assert not torch.equal(batch.noise_src[-1], batch.noise_trg[-1])
    assert 3 <= mixed <= 17


def test_first_step_gradient_is_well_conditioned(tiny_G, tiny_clip):
    """At d = 0 the image direction must not be rounding noise (its gradient would swamp Adam)."""
    tpl = templates("imagenet")
    texts = [{"target": tiny_clip.text(PIXAR, tpl), "direction": tiny_clip.text(PIXAR, tpl) - tiny_clip.text("Photo", tpl)}]
    later = run_adapt(tiny_G, tiny_clip, iters=5).vector
    norms = []
    for d0 in (torch.zeros(tiny_G.num_domain_params), later):
        d = d0.clone().requires_grad_(True)
        batch = sample_training_latents(tiny_G, torch.Generator().manual_seed(1), 4, 0.9, torch.device("cpu"))
        adapt_step(tiny_G, [tiny_clip], d, batch, texts, LossWeights())["total"].backward()
        norms.append(float(d.grad.norm()))
    assert norms[0] < 20 * norms[1], norms


def test_run_folder_domain_file_and_samples(tmp_path, tiny_G, tiny_clip):
    out = tmp_path / "run"
    domain = run_adapt(tiny_G, tiny_clip, iters=6, out_dir=out, sample_every=3, checkpoint_every=2, seed=5)
    saved = hd.Domain.load(out / "domain.safetensors", generator=tiny_G)
    assert torch.equal(saved.vector, domain.vector)  # bit-identical
    m = saved.meta
    assert m["prompt"] == PIXAR and m["source_prompt"] == "Photo" and m["iterations"] == 6 and m["seed"] == 5
    assert m["generator_fingerprint"] == tiny_G.fingerprint and m["clip_models"] == ["tiny0"]
    assert m["losses"] == {"direction": 1.0} and m["trainer"] == "adapt"
    assert (out / "samples.png").is_file() and (out / "samples" / "step_000003.png").is_file()
    assert (out / "checkpoint.safetensors").is_file() and json.loads((out / "config.json").read_text())["iters"] == 6
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 7)) and "direction" in log[0]
    src = tiny_G.sample(4, seed=1)
    assert (tiny_G.sample(4, domain=saved, seed=1) - src).abs().mean() > 1e-3  # the domain changes the samples
    with pytest.raises(HyperdomainError, match="already holds a run"):
        run_adapt(tiny_G, tiny_clip, iters=6, out_dir=out)


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, tiny_G, tiny_clip):
    full = run_adapt(tiny_G, tiny_clip, iters=10, out_dir=tmp_path / "full", seed=3, checkpoint_every=4)

    def interrupt_at_6(step, losses, d):
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: handled at the next step boundary

    with pytest.raises(KeyboardInterrupt):
        run_adapt(tiny_G, tiny_clip, iters=10, out_dir=tmp_path / "cut", seed=3, checkpoint_every=4,
                  callback=interrupt_at_6)
    assert hd.read_adapt_config(tmp_path / "cut").iters == 10
    assert not (tmp_path / "cut" / "domain.safetensors").exists()
    resumed = hd.adapt(tiny_G, resume=tmp_path / "cut", clip=[tiny_clip], progress=False)
    assert torch.equal(resumed.vector, full.vector)
    log = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 11))
    # extending a finished run continues from its last step; equal to a longer run from scratch
    longer = hd.adapt(tiny_G, resume=tmp_path / "full", clip=[tiny_clip], iters=13, progress=False)
    straight = run_adapt(tiny_G, tiny_clip, iters=13, seed=3)
    assert torch.equal(longer.vector, straight.vector) and longer.meta["iterations"] == 13


def test_a_stop_flag_set_from_another_thread_ends_the_run_saved_and_resumable(tmp_path, tiny_G, tiny_clip):
    """``stop=`` (what the web app's Stop button sets, from another thread): the run ends at the next
    step boundary with its domain file and checkpoint; resuming it equals an uninterrupted run."""
    import threading

    full = run_adapt(tiny_G, tiny_clip, iters=8, seed=5, checkpoint_every=100)
    stop = threading.Event()
    seen = []

    def set_at_3(step, losses, d):
        seen.append(step)
        if step == 3:
            stop.set()

    out = tmp_path / "stopped"
    result = {}
    worker = threading.Thread(target=lambda: result.update(d=run_adapt(
        tiny_G, tiny_clip, iters=8, seed=5, out_dir=out, checkpoint_every=100, callback=set_at_3, stop=stop)))
    worker.start()
    worker.join(120)
    assert seen == [1, 2, 3] and result["d"].meta["iterations"] == 3
    saved = hd.Domain.load(out / "domain.safetensors")
    assert saved.meta["iterations"] == 3 and torch.equal(saved.vector, result["d"].vector)
    resumed = hd.adapt(tiny_G, resume=out, clip=[tiny_clip], progress=False)
    assert resumed.meta["iterations"] == 8 and torch.equal(resumed.vector, full.vector)


def test_resume_refuses_another_generator(tmp_path, tiny_G, tiny_clip):
    run_adapt(tiny_G, tiny_clip, iters=2, out_dir=tmp_path / "r")
    with pytest.raises(HyperdomainError, match="fingerprint"):
        hd.adapt(make_tiny_generator(seed=4), resume=tmp_path / "r", clip=[tiny_clip], progress=False)
    with pytest.raises(HyperdomainError, match="no such checkpoint"):
        hd.adapt(tiny_G, resume=tmp_path / "none", clip=[tiny_clip], progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tmp_path, tiny_G, tiny_clip, monkeypatch):
    import hyperdomain.guidance.losses as losses_module  # where the trainer's loss assembly finds it

    real = losses_module.direction_loss
    monkeypatch.setattr(losses_module, "direction_loss", nan_on_call(real, 5))
    # a non-finite loss at step 5: the last state whose loss was finite is step 4's start (3 updates)
    with pytest.raises(HyperdomainError, match=r"step 5: loss is not finite .*last good state \(step 3\)") as e:
        run_adapt(tiny_G, tiny_clip, iters=10, out_dir=tmp_path / "nan", seed=2)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(losses_module, "direction_loss", real)
    three = run_adapt(tiny_G, tiny_clip, iters=3, seed=2)
    kept = hd.Domain.load(tmp_path / "nan" / "domain.safetensors")
    assert torch.equal(kept.vector, three.vector) and kept.meta["iterations"] == 3
    # the checkpoint holds that state too: resuming (without the fault) equals a clean run
    clean = run_adapt(tiny_G, tiny_clip, iters=10, seed=2)
    assert torch.equal(hd.adapt(tiny_G, resume=tmp_path / "nan", clip=[tiny_clip], progress=False).vector, clean.vector)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(target=""), "empty prompt"),
    (dict(target="Photo"), "same prompt"),
    (dict(target=" ".join(["word"] * 70)), "too long for CLIP"),
    (dict(losses={"tt_direction": 1}), "several domains"),
    (dict(losses={"direction": 1, "indomain": 1}, batch=1), "batch of at least 2"),
    (dict(losses={"indomain": 1}), "direction or global must be > 0"),
    (dict(iters=0), "iters"),
    (dict(mixing=1.5), "mixing"),
    (dict(templates="fancy"), "imagenet"),
])
def test_bad_arguments(tiny_G, tiny_clip, kwargs, fragment):
    with pytest.raises(HyperdomainError, match=fragment):
        run_adapt(tiny_G, tiny_clip, **kwargs)


def test_generator_recipe_fills_unset_settings(tiny_clip, tmp_path):
    G = make_tiny_generator()
    G.adapt_defaults = {"iters": 3, "batch": 2, "lr": 0.02, "betas": [0.0, 0.999], "losses": {"direction": 1.0, "l2": 0.5}}
    d = run_adapt(G, tiny_clip)
    m = d.meta
    assert (m["iterations"], m["batch"], m["lr"], m["losses"]) == (3, 2, 0.02, {"direction": 1.0, "l2": 0.5})
    d = run_adapt(G, tiny_clip, iters=2, batch=3, lr=0.05, losses={"direction": 1.0})  # what is given wins
    m = d.meta
    assert (m["iterations"], m["batch"], m["lr"], m["losses"]) == (2, 3, 0.05, {"direction": 1.0})
    run_adapt(G, tiny_clip, iters=1, out_dir=tmp_path / "r")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["betas"] == [0.0, 0.999]
    run_adapt(G, tiny_clip, iters=1, betas=(0.5, 0.9), out_dir=tmp_path / "r2")
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["betas"] == [0.5, 0.9]
    # a recipe setting that clashes with an option is named in the error
    G.adapt_defaults = {"losses": {"direction": 1.0, "indomain": 1.5}}
    with pytest.raises(HyperdomainError, match=r"batch of at least 2 .*paper's recipe .*indomain"):
        run_adapt(G, tiny_clip, iters=1, batch=1)


def test_config_round_trip():
    c = AdaptConfig(target="Sketch", losses=LossWeights(direction=1.0, indomain=0.5), clip=("ViT-B-32",))
    assert AdaptConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


# ------------------------------------------------------------------------------------------- CLI




def test_cli_adapt_end_to_end_and_resume(tmp_path, tiny_ckpt, tiny_clip_config):
    ckpt, _ = tiny_ckpt
    out = tmp_path / "pixar"
    r = cli("adapt", "--target", PIXAR, "--generator", ckpt, "--clip", tiny_clip_config, "--iters", 4,
            "--loss", "direction=1", "--loss", "indomain=0.5", "--out", out, "--device", "cpu", "--sample-every", 2)
    assert r.exit_code == 0, r.output
    assert "domain.safetensors" in r.stdout
    d = hd.Domain.load(out / "domain.safetensors")
    assert d.meta["losses"] == {"direction": 1.0, "indomain": 0.5} and d.meta["iterations"] == 4
    assert (out / "samples.png").is_file() and (out / "samples" / "step_000002.png").is_file()
    r = cli("info", out / "checkpoint.safetensors")
    assert r.exit_code == 0 and "adapt run checkpoint" in r.stdout and "4 of 4" in r.stdout, r.output
    # the domain file drives `hyperdomain sample`
    r = cli("sample", "--generator", ckpt, "--domain", out / "domain.safetensors", "-n", 2, "--out", tmp_path / "g.png",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    # extend the run by resuming it (the generator path is remembered)
    r = cli("adapt", "--resume", out, "--iters", 6, "--device", "cpu")
    assert r.exit_code == 0, r.output
    resumed = hd.Domain.load(out / "domain.safetensors")
    assert resumed.meta["iterations"] == 6
    r = cli("adapt", "--target", PIXAR, "--generator", ckpt, "--clip", tiny_clip_config, "--iters", 6,
            "--loss", "direction=1", "--loss", "indomain=0.5", "--out", tmp_path / "straight", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert torch.equal(hd.Domain.load(tmp_path / "straight" / "domain.safetensors").vector, resumed.vector)


def test_cli_adapt_bad_arguments(tmp_path, tiny_ckpt, tiny_clip_config):
    ckpt, _ = tiny_ckpt
    base = ["--generator", ckpt, "--clip", tiny_clip_config, "--device", "cpu", "--iters", 1]
    assert_user_error(cli("adapt", *base), "--target or --image is required")
    assert_user_error(cli("adapt", "--target", "  ", *base), "empty prompt")
    assert_user_error(cli("adapt", "--target", " ".join(["word"] * 76), *base), "too long for CLIP")
    assert_user_error(cli("adapt", "--target", "Sketch", "--loss", "beauty=1", *base), "unknown loss 'beauty'")
    assert_user_error(cli("adapt", "--target", "Sketch", "--loss", "direction", *base), "NAME=WEIGHT")
    assert_user_error(cli("adapt", "--target", "Sketch", "--loss", "tt_direction=1", *base), "train-hyper")
    assert_user_error(cli("adapt", "--target", "Sketch", "--generator", ckpt, "--clip", "ViT-Q-1", "--device", "cpu"),
                      "unknown model")
    assert_user_error(cli("adapt", "--target", "Sketch", "--generator", ckpt, "--clip", "ViT-B-32=", "--device", "cpu"),
                      "nothing after '='")
    assert_user_error(cli("adapt", "--resume", tmp_path / "nothing", "--device", "cpu"), "no such checkpoint")
    out = tmp_path / "r"
    assert cli("adapt", "--target", "Sketch", "--out", out, *base).exit_code == 0
    assert_user_error(cli("adapt", "--target", "Sketch", "--out", out, *base), "already holds a run", "--resume")
    assert_user_error(cli("adapt", "--resume", out, "--lr", 0.5, "--device", "cpu"), "--lr")
    r = cli("adapt", "--target", "Sketch", "--lr", 0, *base)
    assert r.exit_code == 2 and "Traceback" not in r.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_clip_on_cuda_matches_fp32(tiny_clip_config):
    """CLIP under fp16 autocast (the CUDA default) gives the same losses as fp32, to fp16 accuracy."""
    from conftest import make_tiny_clip

    G = make_tiny_generator().cuda()
    tpl = templates("imagenet")
    parts = {}
    for precision in ("fp32", "fp16"):
        enc = make_tiny_clip(tiny_clip_config).cuda()
        enc.precision = precision
        texts = [{"target": enc.text(PIXAR, tpl), "direction": enc.text(PIXAR, tpl) - enc.text("Photo", tpl)}]
        batch = sample_training_latents(G, torch.Generator().manual_seed(0), 8, 0.9, torch.device("cuda"))
        d = (0.2 * torch.randn(G.num_domain_params, generator=torch.Generator().manual_seed(1))).cuda().requires_grad_()
        out = adapt_step(G, [enc], d, batch, texts, LossWeights(direction=1.0, indomain=1.0))
        out["total"].backward()
        parts[precision] = ({k: v.item() for k, v in out.items()}, d.grad.clone())
    (a, ga), (b, gb) = parts["fp32"], parts["fp16"]
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=2e-3, rel=1e-2), k
    assert torch.nn.functional.cosine_similarity(ga, gb, dim=0) > 0.99


def test_cli_ctrl_c_says_where_the_run_is(tmp_path, tiny_ckpt, tiny_clip_config, monkeypatch):
    """Ctrl-C: exit 130; the resume command only when a checkpoint was saved."""
    ckpt, _ = tiny_ckpt
    out = tmp_path / "run"

    saves = []

    def interrupted(*args, out_dir, **kwargs):
        if saves:  # a run stopped after its first checkpoint
            out_dir.mkdir()
            (out_dir / "checkpoint.safetensors").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(hd, "adapt", interrupted)
    args = ["adapt", "--target", "Sketch", "--generator", ckpt, "--clip", tiny_clip_config, "--out", out,
            "--device", "cpu"]
    r = cli(*args)
    assert r.exit_code == 130 and "nothing was saved" in r.stderr and "--resume" not in r.stderr, r.output
    saves.append(True)
    r = cli(*args)
    assert r.exit_code == 130 and f"hyperdomain adapt --resume {out}" in r.stderr, r.output


@pytest.mark.parametrize("every,written", [(2, [2, 4, 6]), (4, [4, 6])])
def test_each_step_is_checkpointed_at_most_once(tmp_path, tiny_G, tiny_clip, monkeypatch, every, written):
    """The end of a run writes the checkpoint only if the last step's periodic save did not."""
    import hyperdomain.training.loop as train_state  # where the loop finds it

    steps, real = [], train_state.save_checkpoint
    monkeypatch.setattr(train_state, "save_checkpoint",
                        lambda path, kind, tensors, meta, *a: steps.append(meta["step"]) or real(path, kind, tensors, meta, *a))
    run_adapt(tiny_G, tiny_clip, iters=6, out_dir=tmp_path / "run", checkpoint_every=every)
    assert steps == written


def test_cli_sigterm_saves_the_run_and_exits_143(tmp_path, tiny_ckpt, tiny_clip_config):
    """What schedulers, `timeout`, Docker and Kubernetes send: the step finishes, the run is saved,
    the command says how to continue and exits 128 + 15; the saved run resumes."""
    ckpt, _ = tiny_ckpt
    out = tmp_path / "run"
    args = ["adapt", "--target", "Sketch", "--generator", ckpt, "--clip", tiny_clip_config, "--iters", 100000,
            "--checkpoint-every", 0, "--sample-every", 0, "--out", out, "--device", "cpu", "--no-progress"]
    returncode, stdout, stderr = sigterm_after_first_step(args, out)
    assert returncode == 143, stderr
    assert f"terminated (SIGTERM); the run is saved in {out}. Continue with: hyperdomain adapt --resume {out}" in stderr
    assert "Traceback" not in stderr
    step = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"]
    from hyperdomain.files.run_checkpoints import read_checkpoint_meta

    assert read_checkpoint_meta(out / "checkpoint.safetensors", "adapt")["step"] == step  # the last finished step
    r = cli("adapt", "--resume", out, "--iters", step + 1, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
