"""Face alignment as FFHQ was made: eyes and mouth -> an oriented square -> the generator's size.

StyleGAN2's face generators saw faces cropped one way only (the FFHQ recipe of Karras et al.):
the crop is a square oriented along the eye-to-eye and eye-to-mouth directions, centred a little
below the eyes, its side set by the larger of the eye distance and the eye-mouth distance. A photo
aligned the same way inverts far better. The geometry (:func:`ffhq_quad`) is a pure function of
four points; :func:`align` renders the quad (reflect-padding and blurring what lies outside the
photo, as the recipe does); :func:`align_face` finds the points with a landmark detector, which
is pluggable (:mod:`hyperdomain.image.face_detectors`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from ..errors import HyperdomainError


FACE_ALIGNMENT = "ffhq"  # a generator whose manifest entry says so was trained on FFHQ-aligned faces


def aligns(G, align: bool | None = None) -> bool:
    """Whether photos are aligned for ``G``: as asked, else by default for face generators (those whose
    training images were FFHQ-aligned: ``G.alignment``)."""
    return bool(align) if align is not None else getattr(G, "alignment", None) == FACE_ALIGNMENT


@dataclass(frozen=True)
class FacePoints:
    """The four points the recipe needs, in image pixels (x right, y down). ``eye_left`` is the
    eye on the image's left (the person's right eye); mouth points are the outer corners."""

    eye_left: tuple[float, float]
    eye_right: tuple[float, float]
    mouth_left: tuple[float, float]
    mouth_right: tuple[float, float]

    def array(self) -> np.ndarray:
        return np.array([self.eye_left, self.eye_right, self.mouth_left, self.mouth_right], dtype=np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> "FacePoints":
        a = np.asarray(a, dtype=np.float64).reshape(4, 2)
        return cls(*(tuple(map(float, p)) for p in a))


Detector = Callable[[Image.Image], Sequence[FacePoints]]


def ffhq_quad(points: FacePoints) -> tuple[np.ndarray, float]:
    """The recipe's crop: its corners ``[4, 2]`` (top-left, bottom-left, bottom-right, top-right
    of the output) and its side in pixels."""
    el, er, ml, mr = points.array()
    eye_avg, mouth_avg = (el + er) / 2, (ml + mr) / 2
    eye_to_eye, eye_to_mouth = er - el, mouth_avg - eye_avg
    # the x axis: the eye-to-eye direction, averaged with the eye-to-mouth one turned a quarter left
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = math.hypot(*x)
    if norm < 1e-6 or not np.isfinite(x).all():
        raise HyperdomainError("face points are degenerate (eyes and mouth coincide)")
    x = x / norm * max(math.hypot(*eye_to_eye) * 2.0, math.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])  # x turned a quarter right: down the face
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, math.hypot(*x) * 2


def align(image: Image.Image, points: FacePoints, size: int, supersample: int = 4,
          pad_outside: bool = True) -> Image.Image:
    """The recipe's crop of ``image`` as a ``size`` x ``size`` RGB image.

    The quad is resampled at ``supersample`` times the size, then downscaled with a Lanczos
    filter. Where it reaches past the photo the photo is mirrored and blurred towards its mean
    colour (``pad_outside``), so the generator never sees a hard black border.
    """
    quad, qsize = ffhq_quad(points)
    img = image.convert("RGB")
    # shrink a photo much larger than the output first (cheaper, and antialiased)
    shrink = int(math.floor(qsize / size * 0.5))
    if shrink > 1:
        img = img.resize((round(img.size[0] / shrink), round(img.size[1] / shrink)), Image.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink
    # crop to the quad plus a border
    border = max(round(qsize * 0.1), 3)
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    box = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, img.size[0]),
           min(hi[1] + border, img.size[1]))
    if box[2] - box[0] < img.size[0] or box[3] - box[1] < img.size[1]:
        img = img.crop(box)
        quad = quad - box[:2]
    # pad where the quad leaves the photo
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    pad = (max(-lo[0] + border, 0), max(-lo[1] + border, 0), max(hi[0] - img.size[0] + border, 0),
           max(hi[1] - img.size[1] + border, 0))
    if pad_outside and max(pad) > border - 4:
        pad = tuple(max(p, round(qsize * 0.3)) for p in pad)
        img = _mirror_pad(img, pad, blur=qsize * 0.02)
        quad = quad + pad[:2]
    big = size * supersample
    img = img.transform((big, big), Image.QUAD, tuple((quad + 0.5).flatten()), Image.BILINEAR)
    return img.resize((size, size), Image.LANCZOS) if big != size else img


def _mirror_pad(img: Image.Image, pad: tuple[int, int, int, int], blur: float) -> Image.Image:
    """Mirror-pad by (left, top, right, bottom); towards the outer edge fade into a blurred copy,
    then into the image's median colour."""
    a = np.asarray(img, dtype=np.float32)
    left, top, right, bottom = pad
    a = np.pad(a, ((top, bottom), (left, right), (0, 0)), mode="reflect" if min(a.shape[:2]) > max(pad) else "edge")
    h, w = a.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    # 0 inside the photo, rising to 1 at the padded edge
    mx = np.maximum(1 - np.minimum(xx / max(left, 1), (w - 1 - xx) / max(right, 1)), 0) if left or right else 0 * xx
    my = np.maximum(1 - np.minimum(yy / max(top, 1), (h - 1 - yy) / max(bottom, 1)), 0) if top or bottom else 0 * yy
    mask = np.maximum(mx, my)[:, :, None].astype(np.float32)
    blurred = np.asarray(Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255))).filter(
        ImageFilter.GaussianBlur(max(blur, 0.5))), dtype=np.float32)
    a += (blurred - a) * np.clip(mask * 3 + 1, 0, 1)
    a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0, 1)
    return Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "RGB")


def align_face(image: Image.Image, size: int, detector: Detector, what: str = "photo") -> Image.Image:
    """``image`` aligned by the one face ``detector`` finds in it; no face or several is one line
    naming ``what`` (the photo's path) and what was found."""
    faces = list(detector(image))
    if not faces:
        raise HyperdomainError(f"{what}: no face found (the alignment needs one face with both eyes and the "
                               f"mouth visible); crop it by hand and pass --no-align")
    if len(faces) > 1:
        centres = ", ".join(f"({f.array()[:2].mean(0)[0]:.0f}, {f.array()[:2].mean(0)[1]:.0f})" for f in faces[:4])
        raise HyperdomainError(f"{what}: {len(faces)} faces found (eyes at {centres}); crop the photo to one face")
    return align(image, faces[0], size)
