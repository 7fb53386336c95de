"""Photos in: safe reading of every image kind, and the FFHQ alignment geometry on synthetic faces."""
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hyperdomain.image.alignment import FacePoints, align, align_face, ffhq_quad
from hyperdomain.errors import HyperdomainError
from hyperdomain.image.face_detectors import points_from_68, points_from_mediapipe, MEDIAPIPE_EYE_LEFT, MEDIAPIPE_EYE_RIGHT
from hyperdomain.media.grids import downsample_bicubic
from hyperdomain.image.photos import MAX_PIXELS, image_digest, read_photo, to_tensor


def _gradient(w=96, h=80):
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return np.uint8(np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                                    np.full((h, w, 1), 90)], axis=2))


# ------------------------------------------------------------------------------------ reading
def test_every_mode_becomes_8_bit_rgb(tmp_path):
    rgb = Image.fromarray(_gradient())
    cases = {
        "gray.png": rgb.convert("L"),
        "palette.png": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "rgba.png": rgb.convert("RGBA"),
        "la.png": rgb.convert("LA"),
        "plain.webp": rgb,
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
    for name in cases:
        out = read_photo(tmp_path / name)
        assert out.mode == "RGB" and out.size == (96, 80), name
    # 16-bit grayscale keeps its range: the brightest pixel stays white, not 255/65535 of it
    deep = Image.fromarray(np.uint16(np.linspace(0, 65535, 96 * 80).reshape(80, 96)))
    deep.save(tmp_path / "deep.png")
    a = np.asarray(read_photo(tmp_path / "deep.png"))
    assert a.max() == 255 and a.min() == 0
    # transparent pixels go on white, opaque ones keep their colour
    rgba = np.zeros((80, 96, 4), np.uint8)
    rgba[:, :48] = (10, 20, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    a = np.asarray(read_photo(tmp_path / "alpha.png"))
    assert tuple(a[0, 0]) == (10, 20, 30) and tuple(a[0, 90]) == (255, 255, 255)


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.fromarray(_gradient(96, 72))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a phone's portrait photo
    img.save(tmp_path / "phone.jpg", exif=exif)
    out = read_photo(tmp_path / "phone.jpg")
    assert out.size == (72, 96)  # upright: the sides swapped


@pytest.mark.parametrize("content, fragment", [
    (b"this is not an image at all", "not an image PIL can read"),
    (None, "truncated or damaged image"),
])
def test_bad_files_give_one_line(tmp_path, content, fragment):
    path = tmp_path / "bad.jpg"
    if content is None:  # a real JPEG cut in half
        Image.fromarray(_gradient(300, 300)).save(tmp_path / "full.jpg", quality=95)
        data = (tmp_path / "full.jpg").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(HyperdomainError, match=fragment) as e:
        read_photo(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_sizes_are_bounded(tmp_path, monkeypatch):
    Image.fromarray(_gradient(40, 200)).save(tmp_path / "thin.png")
    with pytest.raises(HyperdomainError, match=r"thin\.png: 40x200 is too small; images need at least 64"):
        read_photo(tmp_path / "thin.png")
    monkeypatch.setattr("hyperdomain.image.photos.MAX_PIXELS", 96 * 80 - 1)
    Image.fromarray(_gradient()).save(tmp_path / "big.png")
    with pytest.raises(HyperdomainError, match=r"big\.png: 96x80 is 0 megapixels; images up to 0 megapixels"):
        read_photo(tmp_path / "big.png")
    assert MAX_PIXELS == 50_000_000
    with pytest.raises(HyperdomainError, match="no such image file"):
        read_photo(tmp_path / "missing.png")


def test_float_images_with_nan_or_infinity_are_refused(tmp_path):
    """A float TIFF holding NaN or infinity has no picture to scale: one line naming the file, no
    numpy warnings on the way."""
    import warnings

    for value, name in ((np.nan, "nan.tiff"), (np.inf, "inf.tiff")):
        a = np.full((80, 96), 0.5, np.float32)
        a[10, :7] = value
        Image.fromarray(a, "F").save(tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(HyperdomainError) as e:
                read_photo(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name}: 7 of its 7680 pixels are not finite numbers (NaN or infinity); " \
                               f"not a photo"
    Image.fromarray(np.full((80, 96), 0.5, np.float32), "F").save(tmp_path / "fine.tiff")
    assert np.asarray(read_photo(tmp_path / "fine.tiff")).max() == 128  # a finite float image reads as before


def test_what_is_not_a_regular_file_is_named_so(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")  # reading it would wait for a writer: refused before any open
    with pytest.raises(HyperdomainError, match=r"pipe\.png: not a regular file \(a pipe, device or socket\)"):
        read_photo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(HyperdomainError, match=r"folder\.png: a folder; give an image file"):
        read_photo(tmp_path / "folder.png")


def test_a_name_with_a_newline_stays_on_one_line(tmp_path):
    path = tmp_path / "me\nyou.png"
    path.write_bytes(b"not an image")
    with pytest.raises(HyperdomainError) as e:
        read_photo(path)
    assert str(e.value) == f"{tmp_path}/me\\nyou.png: not an image PIL can read (PNG, JPEG, WebP, TIFF, BMP, ...)"


def test_digest_and_tensor():
    a = Image.fromarray(_gradient())
    assert image_digest(a) == image_digest(a.copy())
    b = np.asarray(a).copy()
    b[0, 0, 0] ^= 1
    assert image_digest(Image.fromarray(b)) != image_digest(a)
    t = to_tensor(a)
    assert t.shape == (1, 3, 80, 96) and t.min() >= -1 and t.max() <= 1
    assert torch.allclose((t[0, :, 3, 5] + 1) * 127.5, torch.tensor(np.asarray(a)[3, 5], dtype=torch.float32))
    assert to_tensor(a, 32).shape == (1, 3, 32, 32)


def test_bicubic_downsampling_against_a_direct_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 12, 16, generator=g, dtype=torch.float64)
    f = 2
    y = downsample_bicubic(x, f)
    taps = 4 * f
    a = -0.5

    def k(t):
        t = abs(t)
        return (a + 2) * t**3 - (a + 3) * t**2 + 1 if t <= 1 else (a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0)

    w = np.array([k((i - taps // 2 + 0.5) / f) for i in range(taps)])
    w /= w.sum()
    xn = x[0].numpy()
    pad0 = (taps - f) // 2

    def mirror(i, n):  # numpy/torch "reflect" indexing
        while i < 0 or i >= n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return i

    expected = np.zeros((2, 6, 8))
    for c in range(2):
        for oy in range(6):
            for ox in range(8):
                s = 0.0
                for i in range(taps):
                    for j in range(taps):
                        s += w[i] * w[j] * xn[c, mirror(oy * f - pad0 + i, 12), mirror(ox * f - pad0 + j, 16)]
                expected[c, oy, ox] = s
    np.testing.assert_allclose(y[0].numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(downsample_bicubic(torch.full((1, 3, 8, 8), 0.25), 4), torch.full((1, 3, 2, 2), 0.25))


# ------------------------------------------------------------------------------------ alignment
def _canonical(size=256):
    """The four points where the recipe puts a frontal face whose eye gap equals its eye-mouth gap."""
    s = size / 4  # half-side of the crop is 2 * eye gap: eye gap = size / 4
    ey = size * 0.475  # eyes 0.1 eye-mouth below... the centre sits 0.1 * gap below the eyes
    return FacePoints((size / 2 - s / 2, ey), (size / 2 + s / 2, ey), (size / 2 - s / 2, ey + s), (size / 2 + s / 2, ey + s))


def _similarity(points: FacePoints, angle, scale, shift):
    c, s = math.cos(angle), math.sin(angle)
    r = np.array([[c, -s], [s, c]]) * scale
    return FacePoints.from_array(points.array() @ r.T + np.asarray(shift))


def test_the_quad_follows_the_face():
    canon = _canonical(256)
    quad, side = ffhq_quad(canon)
    np.testing.assert_allclose(quad, [[0, 0], [0, 256], [256, 256], [256, 0]], atol=1e-9)
    assert side == pytest.approx(256)
    for angle, scale, shift in ((0.3, 2.0, (500, 40)), (-1.1, 0.7, (-30, 900)), (math.pi, 1.3, (10, 10))):
        moved = _similarity(canon, angle, scale, shift)
        q, sd = ffhq_quad(moved)
        expected = _similarity(FacePoints.from_array(np.array([[0, 0], [0, 256], [256, 256], [256, 0]])),
                               angle, scale, shift).array()
        np.testing.assert_allclose(q, expected, atol=1e-6)  # equivariant: the crop turns with the face
        assert sd == pytest.approx(256 * scale)
    with pytest.raises(HyperdomainError, match="degenerate"):
        ffhq_quad(FacePoints((1, 1), (1, 1), (1, 1), (1, 1)))


def _face_photo(points: FacePoints, size=(700, 600)):
    """A textured photo with bright dots at the four points (where a detector would find them)."""
    g = np.random.default_rng(0)
    img = Image.fromarray(np.uint8(g.integers(0, 60, (size[1], size[0], 3))))
    d = ImageDraw.Draw(img)
    for x, y in points.array():
        d.ellipse([x - 10, y - 10, x + 10, y + 10], fill=(255, 255, 255))
    return img


def _dots(img: Image.Image) -> np.ndarray:
    """Centroids of the bright dots, ordered as FacePoints (eyes above the mouth, left before right)."""
    a = np.asarray(img.convert("L"), dtype=np.float64)
    ys, xs = np.nonzero(a > 0.6 * a.max())
    pts = np.stack([xs, ys], 1).astype(np.float64)
    centres = []
    for _ in range(4):  # greedy clustering: a dot is everything within 20 px of the brightest remaining pixel
        seed = pts[0]
        near = np.linalg.norm(pts - seed, axis=1) < 20
        centres.append(pts[near].mean(0))
        pts = pts[~near]
    c = np.array(centres)
    top, bottom = c[np.argsort(c[:, 1])[:2]], c[np.argsort(c[:, 1])[2:]]
    return np.concatenate([top[np.argsort(top[:, 0])], bottom[np.argsort(bottom[:, 0])]])


@pytest.mark.parametrize("angle, scale, shift", [(0.35, 1.2, (330, 260)), (-0.5, 0.9, (380, 330)),
                                                  (0.05, 1.8, (150, 90))])
def test_a_turned_and_scaled_face_comes_back_upright_at_the_template(angle, scale, shift):
    size = 128
    canon = _canonical(size)
    where = _similarity(_canonical(256), angle, scale, shift)
    photo = _face_photo(where)
    out = align(photo, where, size)
    assert out.size == (size, size)
    np.testing.assert_allclose(_dots(out), canon.array(), atol=1.5)
    # a detector that finds it, finds too many, or finds none
    assert align_face(photo, size, lambda img: [where]).size == (size, size)
    with pytest.raises(HyperdomainError, match=r"me\.jpg: 2 faces found"):
        align_face(photo, size, lambda img: [where, where], what="me.jpg")
    with pytest.raises(HyperdomainError, match=r"me\.jpg: no face found.*--no-align"):
        align_face(photo, size, lambda img: [], what="me.jpg")


def test_a_face_at_the_border_is_padded_not_cut():
    where = _similarity(_canonical(256), 0.0, 1.0, (-120, -100))  # half the crop lies outside the photo
    out = np.asarray(align(_face_photo(where, (400, 400)), where, 64), dtype=np.float64)
    assert out.shape == (64, 64, 3) and out[:8, :8].std() < 40  # mirrored and blurred, not black
    assert out[:8, :8].mean() > 5


def test_detector_landmark_conventions():
    lm68 = np.zeros((68, 2))
    lm68[36:42] = [10, 20]
    lm68[42:48] = [30, 20]
    lm68[48], lm68[54] = [12, 40], [28, 40]
    assert points_from_68(lm68) == FacePoints((10, 20), (30, 20), (12, 40), (28, 40))
    mesh = np.zeros((478, 3))
    mesh[list(MEDIAPIPE_EYE_LEFT), :2] = [11, 21]
    mesh[list(MEDIAPIPE_EYE_RIGHT), :2] = [31, 21]
    mesh[61, :2], mesh[291, :2] = [13, 41], [29, 41]
    assert points_from_mediapipe(mesh) == FacePoints((11, 21), (31, 21), (13, 41), (29, 41))
    with pytest.raises(ValueError, match="68 landmarks"):
        points_from_68(np.zeros((5, 2)))


def test_detector_backends_fail_in_one_line(monkeypatch, tmp_path):
    import hyperdomain.image.face_detectors as fd

    monkeypatch.setattr(fd, "_installed", lambda module: False)
    with pytest.raises(HyperdomainError, match=r"needs a landmark detector: pip install 'hyperdomain\[faces\]'"):
        fd.detector("auto")
    with pytest.raises(HyperdomainError, match=r"--detector dlib: the dlib package is not installed"):
        fd.detector("dlib")
    with pytest.raises(HyperdomainError, match=r"--detector: expected one of auto, dlib, mediapipe"):
        fd.detector("opencv")
    monkeypatch.setattr(fd, "_installed", lambda module: module == "mediapipe")
    with pytest.raises(HyperdomainError, match=r"missing\.task: no such mediapipe model file"):
        fd.detector("auto", weights=tmp_path / "missing.task")
    asked = []

    def offline(name, download=True):
        asked.append(name)
        raise HyperdomainError(f"could not download {name} from https://example/x (offline); put it at /w/x")

    monkeypatch.setattr(fd, "resolve_model", offline)
    with pytest.raises(HyperdomainError, match="could not download mediapipe-face"):
        fd.detector("auto")
    assert asked == ["mediapipe-face"]
