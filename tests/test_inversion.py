"""Inversion (II2S) on the tiny generator with a random-backbone LPIPS: the prior against closed
forms, the LPIPS wrapper against torchvision's layout, latent files, and recovering a known image."""
import numpy as np
import pytest
import torch
from PIL import Image

from hyperdomain.errors import HyperdomainError
from hyperdomain.media.grids import to_uint8
from hyperdomain.image.inversion import InversionConfig, invert, invert_cached, latent_pca, p_norm, prepare_photo
from hyperdomain.model.latent import Latent
from hyperdomain.image.perceptual import load_lpips, lpips_distance

from conftest import make_tiny_generator


@pytest.fixture(scope="module")
def lpips_random():
    return load_lpips(backbone="random")


@pytest.fixture
def quiet_G():
    """The tiny generator with its to-RGB layers turned down, so its images lie inside [-1, 1] and
    a rendered image survives the round trip through 8-bit pixels."""
    G = make_tiny_generator(seed=2)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "to_rgb" in name and name.endswith("conv.weight"):
                p.mul_(0.08)
            if "to_rgb" in name and name.endswith(".bias"):
                p.zero_()
    G._fingerprint = None
    return G


def test_latent_pca_matches_numpy_and_is_cached(tmp_path, monkeypatch, tiny_G):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path))
    pca = latent_pca(tiny_G, samples=4000, seed=3)
    gen = torch.Generator().manual_seed(3)
    z = torch.cat([torch.randn(4000, 32, generator=gen)])
    with torch.no_grad():
        x = torch.nn.functional.leaky_relu(tiny_G.mapping(z), 5.0).double().numpy()
    cov = np.cov(x, rowvar=False)
    rebuilt = (pca.components.double().T * pca.std.double() ** 2) @ pca.components.double()
    np.testing.assert_allclose(rebuilt.numpy(), cov, rtol=1e-3, atol=1e-4 * np.abs(cov).max())
    np.testing.assert_allclose(pca.mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-5)
    assert (pca.std[:-1] >= pca.std[1:]).all()  # by variance
    files = list((tmp_path / "pca").iterdir())
    assert len(files) == 1 and tiny_G.fingerprint in files[0].name
    again = latent_pca(tiny_G, samples=4000, seed=3)
    assert torch.equal(again.components, pca.components)


def test_a_bad_cached_pca_is_computed_again(tmp_path, monkeypatch, tiny_G, caplog):
    """The cached PCA is a cache: one of the wrong shape, with NaN, or damaged is computed again and
    replaced, with a warning, never a traceback or a NaN prior."""
    from hyperdomain.files.safetensors_files import PCA, write_own_file

    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path))
    sound = latent_pca(tiny_G, samples=500, seed=1, cache=False)
    path = tmp_path / "pca" / f"{tiny_G.fingerprint}-500-1.safetensors"
    path.parent.mkdir()
    w = tiny_G.w_dim
    bad = {
        "other shape": {"mean": torch.zeros(w), "components": torch.eye(w)[:, :16].contiguous(), "std": torch.ones(w)},
        "nan": {"mean": torch.zeros(w), "components": torch.eye(w), "std": torch.full((w,), float("nan"))},
        "zero std": {"mean": torch.zeros(w), "components": torch.eye(w), "std": torch.zeros(w)},
    }
    for name, tensors in [*bad.items(), ("damaged", None)]:
        if tensors is None:
            path.write_bytes(b"\0" * 100)
        else:
            write_own_file(path, PCA, 1, tensors, {})
        caplog.clear()
        with caplog.at_level("WARNING", logger="hyperdomain.image.inversion"):
            pca = latent_pca(tiny_G, samples=500, seed=1)
        assert torch.equal(pca.components, sound.components) and torch.equal(pca.std, sound.std), name
        assert [r.getMessage() for r in caplog.records if str(path) in r.getMessage()
                and r.getMessage().endswith("; computing the latent PCA again")], (name, caplog.text)
        assert torch.equal(latent_pca(tiny_G, samples=500, seed=1).components, sound.components)  # replaced
    ws = tiny_G.mean_latent()[None, None].expand(1, tiny_G.num_ws, -1)
    assert torch.isfinite(p_norm(ws, pca)).all()


def test_p_norm_is_the_mahalanobis_norm(tiny_G):
    pca = latent_pca(tiny_G, samples=3000, cache=False)
    ws = torch.randn(2, tiny_G.num_ws, 32, dtype=torch.float64)
    cov = (pca.components.double().T * pca.std.double() ** 2) @ pca.components.double()
    v = torch.nn.functional.leaky_relu(ws, 5.0) - pca.mean.double()
    maha = torch.einsum("blw,wv,blv->bl", v, torch.linalg.inv(cov), v)  # v^T cov^-1 v per layer
    torch.testing.assert_close(p_norm(ws, pca), maha.mean(1) / 32, rtol=1e-4, atol=1e-6)
    # latents drawn from the mapping sit near 1 per dimension; the far ones pay much more
    with torch.no_grad():
        typical = tiny_G.mapping(torch.randn(64, 32))[:, None].expand(-1, tiny_G.num_ws, -1)
    assert 0.5 < float(p_norm(typical, pca).mean()) < 2.0
    assert float(p_norm(typical * 4, pca).mean()) > 10


def test_lpips_reads_torchvision_vgg16_weights(tmp_path, lpips_random):
    from torchvision.models import vgg

    features = vgg.make_layers(vgg.cfgs["D"])  # VGG16's conv part, as torchvision builds it (no 500 MB classifier)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16-397923af.pth")
    model = load_lpips(backbone=tmp_path / "vgg16-397923af.pth")
    feats = dict(features.named_parameters())
    for key, value in model.net.state_dict().items():  # slice{k}.{i}.weight <- features.{i}.weight
        _, index, param = key.split(".")
        assert torch.equal(value, feats[f"{index}.{param}"]), key
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = lpips_distance(model, x, x.flip(0))
    assert d.shape == (2,) and (d > 0).all() and lpips_distance(model, x, x).abs().max() < 1e-6
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(HyperdomainError, match=r"other\.pth: not torchvision's VGG16 weights \(no 'features\.0\.bias'\)"):
        load_lpips(backbone=tmp_path / "other.pth")


def _photos(G, n=2, seed=4):
    torch.manual_seed(seed)
    ws = G.mapping(torch.randn(n, 32))[:, None].repeat(1, G.num_ws, 1) + 0.1 * torch.randn(n, G.num_ws, 32)
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode="const")
    return [Image.fromarray(to_uint8(img)[i].numpy()) for i in range(n)], img


def test_inversion_recovers_a_rendered_image(quiet_G, lpips_random, tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path))
    photos, img = _photos(quiet_G)
    assert img.abs().max() < 1  # the 8-bit photos hold the rendered images to rounding
    seen = []
    cfg = InversionConfig(steps=150, lr=0.03, pca_samples=2000)
    latents = invert(quiet_G, photos, cfg, align=False, lpips=lpips_random, progress=False,
                     callback=lambda step, values: seen.append(values["l2"]))
    with torch.no_grad():
        start = quiet_G.synthesis(quiet_G.mean_latent()[None, None].expand(2, quiet_G.num_ws, -1), noise_mode="const")
        final = quiet_G.synthesis(torch.stack([lat.ws for lat in latents]), noise_mode="const")
    before = (start - img).square().mean(dim=(1, 2, 3))
    after = (final - img).square().mean(dim=(1, 2, 3))
    # (the absolute bound with the seeded random LPIPS network: measured 0.7e-3 and 2.2e-3)
    assert (after < 0.1 * before).all() and (after < 3e-3).all(), (before, after)
    assert len(seen) == 150 and seen[-1] < 0.2 * seen[0]
    for lat, photo in zip(latents, photos):
        assert lat.ws.shape == (quiet_G.num_ws, 32)
        m = lat.meta
        assert m["generator_fingerprint"] == quiet_G.fingerprint and m["psnr"] > 30 and m["inversion"]["steps"] == 150
        assert m["aligned"] is False and set(m["losses"]) == {"l2", "lpips", "p_norm"}


def test_each_photo_is_inverted_as_if_alone(quiet_G, lpips_random):
    """A batch is a convenience: the loss is a sum over photos, so each latent follows its own
    gradient (Adam is per element), the same as inverting the photo alone."""
    photos, _ = _photos(quiet_G)
    cfg = InversionConfig(steps=5, pca_samples=500)
    pca = latent_pca(quiet_G, 500, cache=False)
    both = invert(quiet_G, photos, cfg, align=False, lpips=lpips_random, pca=pca, progress=False)
    alone = invert(quiet_G, photos[1:], cfg, align=False, lpips=lpips_random, pca=pca, progress=False)
    torch.testing.assert_close(both[1].ws, alone[0].ws, rtol=1e-4, atol=1e-5)


def test_latent_files(tmp_path, quiet_G, tiny_G):
    lat = Latent(torch.randn(quiet_G.num_ws, 32), {"generator": "tiny", "generator_fingerprint": quiet_G.fingerprint,
                                                 "image_digest": "abc"})
    path = lat.save(tmp_path / "me.safetensors")
    back = Latent.load(path, generator=quiet_G)
    assert torch.equal(back.ws, lat.ws) and back.meta["image_digest"] == "abc"
    with pytest.raises(HyperdomainError, match=r"me\.safetensors was inverted with generator 'tiny' .*--no-check"):
        Latent.load(path, generator=tiny_G)
    assert Latent.load(path, generator=tiny_G, check=False).ws.shape == (quiet_G.num_ws, 32)
    small = make_tiny_generator(config=type(tiny_G.config)(resolution=16, style_dim=32, n_mlp=2, channels=(32, 32, 32)))
    with pytest.raises(HyperdomainError, match=r"is \[8, 32\], but generator .tiny. takes W\+ \[6, 32\]"):
        Latent.load(path, generator=small, check=False)
    bad = Latent(torch.full((6, 32), float("nan")))
    bad.save(tmp_path / "nan.safetensors")
    with pytest.raises(HyperdomainError, match=r"nan\.safetensors: latent file tensor .latent. holds 192 non-finite numbers"):
        Latent.load(tmp_path / "nan.safetensors")
    # float64: finite there, past float32 (and an int64 one): the path named once, the range said
    from safetensors.torch import save_file

    from hyperdomain.files.safetensors_files import LATENT

    header = {"format": LATENT, "format_version": "1"}
    save_file({"latent": torch.full((6, 32), 1e300, dtype=torch.float64)}, tmp_path / "wide.safetensors", header)
    with pytest.raises(HyperdomainError) as e:
        Latent.load(tmp_path / "wide.safetensors")
    assert str(e.value) == f"{tmp_path / 'wide.safetensors'}: latent file tensor 'latent' holds 192 numbers beyond " \
                           f"float32's range (magnitude over 3.4e+38)"
    save_file({"latent": torch.zeros(6, 32, dtype=torch.int64)}, tmp_path / "int.safetensors", header)
    with pytest.raises(HyperdomainError) as e:
        Latent.load(tmp_path / "int.safetensors")
    assert str(e.value).count("int.safetensors") == 1, str(e.value)
    save_file({"latent": torch.zeros(6, 32, 2)}, tmp_path / "3d.safetensors", header)
    with pytest.raises(HyperdomainError, match=r"3d\.safetensors: a latent is W\+ \[num_ws, w_dim\], got shape"):
        Latent.load(tmp_path / "3d.safetensors")


def test_cached_inversion_runs_once(quiet_G, lpips_random, tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path))
    photos, _ = _photos(quiet_G, n=1)
    photos[0].resize((96, 80)).save(tmp_path / "ref.png")  # not square: centre-cropped
    calls = []
    import hyperdomain.image.inversion as inversion

    real = inversion.invert
    monkeypatch.setattr(inversion, "invert", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = InversionConfig(steps=3, pca_samples=500)
    a = invert_cached(quiet_G, tmp_path / "ref.png", cfg, lpips=lpips_random, progress=False)
    b = invert_cached(quiet_G, tmp_path / "ref.png", cfg, lpips=lpips_random, progress=False)
    assert calls == [1] and torch.equal(a.ws, b.ws) and a.meta["image"] == "ref.png"
    invert_cached(quiet_G, tmp_path / "ref.png", InversionConfig(steps=4, pca_samples=500), lpips=lpips_random,
                  progress=False)
    assert calls == [1, 1]  # other settings: another entry


def test_photos_are_prepared_for_the_generator(quiet_G, tmp_path):
    img = Image.fromarray(np.uint8(np.random.default_rng(0).integers(0, 255, (80, 120, 3))))
    out = prepare_photo(quiet_G, img, align=False)
    assert out.image.size == (32, 32) and out.name == "image0" and not out.aligned
    np.testing.assert_allclose(np.asarray(out.image, dtype=float).mean(), np.asarray(img.crop((20, 0, 100, 80)),
                                                                                dtype=float).mean(), atol=3)
    quiet_G.alignment = "ffhq"  # a face generator aligns by default, with the detector given
    found = []
    prepare_photo(quiet_G, img, detector=lambda photo: found.append(photo.size) or
                  [__import__("hyperdomain.image.alignment", fromlist=["FacePoints"]).FacePoints((40, 30), (80, 30), (45, 60), (75, 60))])
    assert found == [(120, 80)]
    with pytest.raises(HyperdomainError, match=r"image0: no face found"):
        prepare_photo(quiet_G, img, detector=lambda photo: [])


def test_a_small_generator_takes_photos_of_its_own_size(quiet_G, tmp_path):
    """Photos need 64 px a side (a face), or the generator's size when it is smaller: a 32 px
    generator's own images invert as they are, without upscaling."""
    from hyperdomain.image.photos import MIN_SIDE, min_photo_side

    photos, _ = _photos(quiet_G, n=1)
    photos[0].save(tmp_path / "own.png")
    assert prepare_photo(quiet_G, tmp_path / "own.png", align=False).image.size == (32, 32)
    photos[0].resize((31, 40)).save(tmp_path / "thin.png")
    with pytest.raises(HyperdomainError, match=r"thin\.png: 31x40 is too small; images need at least 32 pixels"):
        prepare_photo(quiet_G, tmp_path / "thin.png", align=False)
    assert min_photo_side(1024) == MIN_SIDE == 64 and min_photo_side(32) == 32


def test_a_step_that_is_not_finite_stops_in_one_line(quiet_G, lpips_random, monkeypatch):
    """A learning rate whose Adam step overflows float32, or a step that leaves the latent non-finite
    (the last step too, which no later loss would catch): one line naming the step and the rate."""
    photos, _ = _photos(quiet_G, n=1)
    pca = latent_pca(quiet_G, 500, cache=False)
    with pytest.raises(HyperdomainError, match=r"^invert: step 1: the optimiser's step overflowed; try a lower "
                                               r"--lr \(got 1e\+39\)$"):
        invert(quiet_G, photos, InversionConfig(steps=3, lr=1e39), align=False, lpips=lpips_random, pca=pca,
               progress=False)
    real = torch.optim.Adam.step

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0][0, 0, 0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    with pytest.raises(HyperdomainError, match=r"^invert: step 1: the latent is not finite; try a lower --lr "
                                               r"\(got 0\.01\)$"):
        invert(quiet_G, photos, InversionConfig(steps=1), align=False, lpips=lpips_random, pca=pca, progress=False)


def test_bad_settings():
    with pytest.raises(HyperdomainError, match="invert: steps must be an integer >= 1, got 0"):
        InversionConfig(steps=0)
    with pytest.raises(HyperdomainError, match="not both 0"):
        InversionConfig(l2=0, lpips=0)
    with pytest.raises(HyperdomainError, match="noise_mode"):
        InversionConfig(noise_mode="none")


def test_a_photo_is_read_once_and_each_tensor_made_once(quiet_G, lpips_random, tmp_path, monkeypatch):
    """stylize: the file read once, prepared once, its tensors made once per size (the photo's own
    and the loss size), and named after the file everywhere (the latent, the row)."""
    import hyperdomain as hd
    import hyperdomain.image.inversion as inversion
    import hyperdomain.image.photos as photos

    photos_, _ = _photos(quiet_G, n=1)
    photos_[0].save(tmp_path / "face.png")
    reads, tensors = [], []
    read, tensor = photos.read_photo, inversion.to_tensor
    monkeypatch.setattr(photos, "read_photo", lambda path, *a: reads.append(path) or read(path, *a))
    monkeypatch.setattr(inversion, "to_tensor", lambda img, size=None: tensors.append(size) or tensor(img, size))
    domain = hd.Domain(0.1 * torch.ones(quiet_G.num_domain_params), quiet_G.domain_dims)
    [row] = hd.stylize(quiet_G, [tmp_path / "face.png"], [domain], config=InversionConfig(steps=2, pca_samples=300),
                       align=False, lpips=lpips_random, progress=False)
    assert reads == [tmp_path / "face.png"] and sorted(tensors, key=str) == [32, None]
    assert row.name == "face" and row.latent.meta["image"] == "face.png" and not row.latent.meta["aligned"]
    # already-read photos (what the command line hands over) are not read again
    reads.clear()
    [photo] = photos.read_photos([tmp_path / "face.png"])
    hd.invert(quiet_G, [photo], InversionConfig(steps=1, pca_samples=300), align=False, lpips=lpips_random,
              progress=False)
    assert reads == [tmp_path / "face.png"]
