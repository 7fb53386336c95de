"""Animations (hd.animate, `hyperdomain animate`): frame counts, key frames equal to G.sample's grids
(exactly for lossless WebP, exactly after the same 256-colour quantisation for GIF, within H.264's
error for MP4), files that Pillow and imageio read back, and one-line refusals before any work."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

import hyperdomain as hd
from hyperdomain.media import animation
from hyperdomain.errors import HyperdomainError
from hyperdomain.media.grids import make_grid

from conftest import assert_user_error, cli

N, SEED, TRUNC = 2, 3, 0.7


@pytest.fixture(autouse=True)
def one_thread():
    """These tests render many tiny batches: one thread each (on a busy 2-core machine, two threads
    wait on each other for most of every tiny op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grid(G, domain=None, seed=SEED):
    """What G.sample gives for these seeds, as one grid ``[H, W, 3]`` uint8."""
    return make_grid(G.sample(N, domain=domain, truncation=TRUNC, seed=seed, noise_mode="const")).numpy()


def read_frames(path):
    """Every frame of a GIF or WebP as RGB arrays (Pillow)."""
    with Image.open(path) as im:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]


def durations(path):
    out = []
    with Image.open(path) as im:
        for f in ImageSequence.Iterator(im):
            f.load()  # WebP sets a frame's duration when it is decoded
            out.append(f.info["duration"])
    return out


def read_mp4(path):
    import imageio.v3 as iio

    return list(iio.imiter(path, plugin="FFMPEG"))


def mean_err(a, b):
    return float(np.abs(a[:b.shape[0], :b.shape[1]].astype(float) - b.astype(float)).mean())


def luma_err(a, b):
    """Mean difference of Rec. 601 luma (what yuv420p keeps at full resolution)."""
    y = np.array([0.299, 0.587, 0.114])
    return float(np.abs(a[:b.shape[0], :b.shape[1]].astype(float) @ y - b.astype(float) @ y).mean())


@pytest.fixture
def doms(tiny_G):
    g = torch.Generator().manual_seed(1)
    dims = tiny_G.domain_dims
    return [hd.Domain(s * torch.randn(sum(dims), generator=g), dims, {}) for s in (0.6, -0.6)]


def test_strength_webp_is_lossless_from_source_to_domain(tmp_path, tiny_G, doms):
    out = hd.animate(tiny_G, tmp_path / "a.webp", "strength", doms[0], frames=4, n=N, seed=SEED, truncation=TRUNC,
                     fps=10)
    frames = read_frames(out)
    src, trg = grid(tiny_G), grid(tiny_G, doms[0])
    assert len(frames) == 4
    np.testing.assert_array_equal(frames[0], src)  # strength 0 is the source generator, bit for bit
    np.testing.assert_array_equal(frames[-1], trg)
    np.testing.assert_array_equal(frames[1], grid(tiny_G, doms[0].scaled(1 / 3)))
    with Image.open(out) as im:
        assert im.info["loop"] == 0  # for ever
    assert durations(out) == [100] * 4


def test_gif_frames_are_the_grids_quantised(tmp_path, tiny_G, doms):
    """A GIF frame is the grid in a 256-colour palette of its own (median cut, no dithering): it
    decodes to exactly that quantisation, a few levels from the true colours on average (5.5 here;
    the two ends differ by about 60)."""
    out = hd.animate(tiny_G, tmp_path / "a.gif", domains=[doms[0]], frames=3, n=N, seed=SEED, truncation=TRUNC,
                     fps=20, loop=False)
    frames = read_frames(out)
    src, trg = grid(tiny_G), grid(tiny_G, doms[0])
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[0], np.asarray(animation.gif_frame(src).convert("RGB")))
    np.testing.assert_array_equal(frames[-1], np.asarray(animation.gif_frame(trg).convert("RGB")))
    assert mean_err(frames[0], src) < 8 and mean_err(frames[-1], trg) < 8 and mean_err(frames[0], trg) > 30
    with Image.open(out) as im:
        assert "loop" not in im.info  # no NETSCAPE block: played once
    assert durations(out) == [50] * 3


def test_bounce_goes_back_and_a_loop_repeats_no_frame(tmp_path, tiny_G, doms):
    looped = read_frames(hd.animate(tiny_G, tmp_path / "l.webp", "strength", doms[0], frames=4, n=N, seed=SEED,
                                    truncation=TRUNC, bounce=True))
    assert len(looped) == animation.frame_count(4, bounce=True, loop=True) == 6  # 0 1/3 2/3 1 2/3 1/3
    np.testing.assert_array_equal(looped[3], grid(tiny_G, doms[0]))
    np.testing.assert_array_equal(looped[2], looped[4])
    np.testing.assert_array_equal(looped[1], looped[5])
    assert not np.array_equal(looped[-1], looped[0])
    once = read_frames(hd.animate(tiny_G, tmp_path / "o.webp", "strength", doms[0], frames=4, n=N, seed=SEED,
                                  truncation=TRUNC, bounce=True, loop=False))
    assert len(once) == 7
    np.testing.assert_array_equal(once[-1], grid(tiny_G))


def test_morph_passes_through_every_domain(tmp_path, tiny_G, doms):
    frames = read_frames(hd.animate(tiny_G, tmp_path / "m.webp", "morph", [None, *doms], frames=5, n=N, seed=SEED,
                                    truncation=TRUNC))
    assert len(frames) == 5
    np.testing.assert_array_equal(frames[0], grid(tiny_G))
    np.testing.assert_array_equal(frames[2], grid(tiny_G, doms[0]))
    np.testing.assert_array_equal(frames[4], grid(tiny_G, doms[1]))
    np.testing.assert_array_equal(frames[3], grid(tiny_G, doms[0].lerp(doms[1], 0.5)))


def test_walk_goes_from_seed_to_seed_in_a_domain(tmp_path, tiny_G, doms):
    frames = read_frames(hd.animate(tiny_G, tmp_path / "w.webp", "walk", doms[1], frames=3, n=N, seed=SEED,
                                    truncation=TRUNC, walk_keys=2))
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[0], grid(tiny_G, doms[1], seed=SEED))
    np.testing.assert_array_equal(frames[-1], grid(tiny_G, doms[1], seed=SEED + 1))
    assert not np.array_equal(frames[1], frames[0]) and not np.array_equal(frames[1], frames[2])


def test_slerp_keeps_the_ends_and_the_arc():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    assert torch.equal(animation.slerp(a, b, 0.0), a)
    torch.testing.assert_close(animation.slerp(a, b, 1.0), b)
    mid = animation.slerp(a, b, 0.5)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(mid, a), cos(mid, b))  # halfway along the arc
    torch.testing.assert_close(mid.norm(dim=1), (a.norm(dim=1) + b.norm(dim=1)) / 2)


def test_mp4_decodes_within_h264_error_with_even_sides(tmp_path, tiny_G, doms):
    """17 px images make an odd grid (2 * 19 + 2 = 40 by 21): padded with white to 40 by 22 for
    yuv420p. yuv420p keeps colour at half resolution, which on these tiny random images (every
    pixel an edge) moves RGB by 15-25 levels even without compression; the luma it keeps at full
    resolution is within 8 levels on average at CRF 18 (about 4-6 here; the two ends differ by 40)."""
    out = hd.animate(tiny_G, tmp_path / "v.mp4", "strength", doms[0], frames=4, n=N, seed=SEED, truncation=TRUNC,
                     size=17, fps=12)
    frames = read_mp4(out)
    assert len(frames) == 4 and frames[0].shape == (22, 40, 3)
    def small(domain):
        x = torch.nn.functional.interpolate(tiny_G.sample(N, domain=domain, truncation=TRUNC, seed=SEED),
                                            size=(17, 17), mode="bicubic", antialias=True)
        return make_grid(x).numpy()
    src, trg = small(None), small(doms[0])
    assert src.shape == (21, 40, 3)
    assert luma_err(frames[0], src) < 8 and luma_err(frames[-1], trg) < 8
    assert luma_err(frames[0], trg) > 20 and luma_err(frames[-1], src) > 20
    assert (frames[0][21:] > 200).all()  # the padding row is white
    import imageio.v3 as iio
    assert iio.immeta(out, plugin="FFMPEG")["fps"] == 12


def test_bad_requests_are_one_line_before_any_work(tmp_path, tiny_G, doms, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny_G, "synthesis", lambda *a, **k: calls.append(1))
    bad = [
        (dict(path=tmp_path / "a.avi"), "unknown animation type '.avi'"),
        (dict(frames=1), "frames must be in [2,"),
        (dict(fps=60), "fps 60: must be in [0.01, 50] for .gif"),
        (dict(fps=float("nan")), "fps nan"),
        (dict(fps=0.001), "fps 0.001: must be in [0.01, 50] for .gif"),  # a delay past GIF's 655 s
        (dict(path=tmp_path / "a.webp", fps=1e-300), "fps 1e-300: must be in [0.01, 120] for .webp"),
        (dict(path=tmp_path / "a.mp4", fps=1e-300), "fps 1e-300: must be in [0.01, 120] for .mp4"),
        (dict(path=tmp_path / "a.webp", n=1024, nrow=1), "frames of 36x34818 px are larger than .webp holds (16383"),
        (dict(path=tmp_path / "a.mp4", n=600, nrow=600), "frames of 20402x36 px are larger than .mp4 holds (16384"),
        (dict(mode="morph"), "mode morph needs at least 2 domains, got 1"),
        (dict(mode="walk", domains=doms), "mode walk needs at most 1 domain, got 2"),
        (dict(mode="strength", domains=[]), "mode strength needs exactly 1 domain, got 0"),
        (dict(mode="strength", domains=[None]), "mode strength needs exactly 1 domain, got only the source (None)"),
        (dict(mode="spin"), "mode must be one of strength, morph, walk"),
        (dict(size=33), "size 33: must be in [1, 32]"),
        (dict(quality=50), "GIF has no quality setting"),
        (dict(path=tmp_path / "a.webp", quality=0), "quality must be in [1, 100]"),
        (dict(mode="walk", walk_keys=1), "at least 2 key seeds"),
        (dict(domains=[torch.zeros(5)]), "domain has shape [5], expected [224]"),
    ]
    for change, fragment in bad:
        args = dict(path=tmp_path / "a.gif", mode="strength", domains=[doms[0]], frames=4) | change
        with pytest.raises(HyperdomainError) as e:
            hd.animate(tiny_G, args.pop("path"), args.pop("mode"), args.pop("domains"), **args)
        assert fragment in str(e.value) and "\n" not in str(e.value), (change, str(e.value))
    assert not calls and not list(tmp_path.iterdir())


def test_ffmpegs_own_messages_become_one_line(tmp_path, tiny_G, doms, monkeypatch, capfd):
    """ffmpeg failing (here a rate of 0, past the fps check) prints nothing of its own: its reason is the
    error's one line, and no file or temp file is left."""
    monkeypatch.setattr(animation, "MIN_FPS", 0.0)
    with pytest.raises(HyperdomainError) as e:
        hd.animate(tiny_G, tmp_path / "a.mp4", "strength", doms[0], frames=2, n=1, fps=1e-300)
    assert str(e.value) == (f"{tmp_path / 'a.mp4'}: ffmpeg could not write the video (Unable to parse \"framerate\" "
                            f"option value \"0\" as video rate)")
    assert capfd.readouterr().err == "" and not list(tmp_path.iterdir())


def test_a_huge_nrow_is_one_row(tmp_path, tiny_G, doms, files):
    """--nrow past the images (10^9 allocated a frame terabytes wide) makes one row, as torchvision's grids."""
    frames = read_frames(hd.animate(tiny_G, tmp_path / "a.webp", "strength", doms[0], frames=2, n=3, nrow=10**9,
                                    seed=SEED, truncation=TRUNC))
    assert frames[0].shape == (36, 3 * 34 + 2, 3)
    assert make_grid(torch.zeros(3, 3, 32, 32), nrow=10**9).shape == (36, 104, 3)
    r = cli("animate", "-g", files[0], "-d", files[1][0], "--frames", 2, "-n", 3, "--nrow", 1000000000,
            "--out", tmp_path / "b.gif", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert read_frames(tmp_path / "b.gif")[0].shape == (36, 104, 3)


def test_mp4_without_the_extra_names_it(tmp_path, tiny_G, doms, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails as if not installed
    with pytest.raises(HyperdomainError, match=r"imageio-ffmpeg package: pip install 'hyperdomain\[ui\]'"):
        hd.animate(tiny_G, tmp_path / "a.mp4", "strength", doms[0], frames=2, n=1)
    hd.animate(tiny_G, tmp_path / "a.gif", "strength", doms[0], frames=2, n=1)  # Pillow alone is enough for GIF
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif"]


def test_a_failure_mid_way_keeps_the_old_file_and_leaves_no_temp(tmp_path, tiny_G, doms, monkeypatch):
    for name in ("a.webp", "a.mp4"):
        out = tmp_path / name
        out.write_bytes(b"earlier")
        real, calls = tiny_G.synthesis, []

        def failing(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(tiny_G, "synthesis", failing)
        with pytest.raises(KeyboardInterrupt):
            hd.animate(tiny_G, out, "strength", doms[0], frames=4, n=1)
        monkeypatch.setattr(tiny_G, "synthesis", real)
        assert out.read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a.webp"]


# ---- the command ---------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path, tiny_ckpt, doms):
    paths = [d.save(tmp_path / f"d{i}.safetensors") for i, d in enumerate(doms)]
    return tiny_ckpt[0], paths


def test_cli_morph_end_to_end(tmp_path, files):
    gen, (d0, d1) = files
    out = tmp_path / "m.webp"
    r = cli("animate", "-g", gen, "-d", d0, "-d", d1, "--with-source", "--frames", 5, "-n", N, "--seed", SEED,
            "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"wrote {out} (5 frames at 24 fps, 2 images of 32 px, mode morph" in r.stdout
    G = hd.load_generator(gen)
    frames = read_frames(out)
    assert len(frames) == 5
    np.testing.assert_array_equal(frames[0], grid(G))
    np.testing.assert_array_equal(frames[2], grid(G, hd.Domain.load(d0)))
    np.testing.assert_array_equal(frames[4], grid(G, hd.Domain.load(d1)))


def test_cli_mp4_overwrite_policy(tmp_path, files):
    gen, (d0, _) = files
    out = tmp_path / "s.mp4"
    args = ["animate", "-g", gen, "-d", d0, "--frames", 2, "-n", 1, "--size", 8, "--out", out, "--device", "cpu"]
    assert cli(*args).exit_code == 0
    assert len(read_mp4(out)) == 2
    assert_user_error(cli(*args), "s.mp4: already exists; pass --overwrite")
    assert cli(*args, "--overwrite").exit_code == 0  # a video is replaced by a video
    assert_user_error(cli("animate", "-g", gen, "-d", d0, "--out", tmp_path / "d1.safetensors", "--overwrite"),
                      "unknown animation type '.safetensors'")
    other = tmp_path / "other.gif"
    other.write_bytes((tmp_path / "d1.safetensors").read_bytes())
    assert_user_error(cli("animate", "-g", gen, "-d", d0, "--out", other, "--overwrite"),
                      "holds another kind of file (domain file, not animation)")


def test_cli_bad_input_is_one_line(tmp_path, files, monkeypatch):
    gen, (d0, d1) = files
    out = tmp_path / "a.gif"
    base = ["animate", "-g", gen, "--out", out]
    assert_user_error(cli(*base, "-d", d0, "--frames", 1), "--frames")
    assert_user_error(cli(*base, "-d", d0, "--fps", 55), "fps 55: must be in [0.01, 50] for .gif")
    assert_user_error(cli(*base, "-d", d0, "--fps", 0.001), "fps 0.001: must be in [0.01, 50] for .gif")
    assert_user_error(cli("animate", "-g", gen, "--out", tmp_path / "a.webp", "-d", d0, "--fps", "1e-300"),
                      "fps 1e-300: must be in [0.01, 120] for .webp")
    assert_user_error(cli(*base, "-d", d0, "--mode", "morph"), "--mode morph needs at least two domains")
    assert_user_error(cli(*base, "--mode", "strength"), "--mode strength needs exactly one domain")
    assert_user_error(cli(*base, "-d", d0, "-d", d1, "--mode", "walk"), "--mode walk needs at most one domain")
    assert_user_error(cli(*base, "-d", d0, "--with-source"), "--with-source is for --mode morph")
    assert_user_error(cli(*base, "-p", "x"), "--prompt needs --hyper")
    assert_user_error(cli(*base, "-d", tmp_path / "none.safetensors"), "none.safetensors")
    assert_user_error(cli(*base, "-d", d0, "--size", 64), "--size 64: at most the generator's 32 px")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    assert_user_error(cli("animate", "-g", gen, "-d", d0, "--out", tmp_path / "a.mp4"),
                      "pip install 'hyperdomain[ui]'")
    assert not out.exists() and not (tmp_path / "a.mp4").exists()


def test_animation_files_are_known_kinds(tmp_path, tiny_G, doms):
    from hyperdomain.files.kinds import IMAGE, VIDEO, file_kind

    for name, kind in (("a.gif", IMAGE), ("a.webp", IMAGE), ("a.mp4", VIDEO)):
        assert file_kind(hd.animate(tiny_G, tmp_path / name, "strength", doms[0], frames=2, n=1, size=8)) == kind
