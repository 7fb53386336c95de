"""Landmark detectors for face alignment: each is a function from a photo to the faces' FacePoints.

Two backends, each an optional install with its model file fetched on first use like the
generators (verified, resumable, one line offline, or a local file):

- ``dlib``: dlib's 68-point shape predictor, the detector FFHQ itself was aligned with
  (``pip install dlib``; model ``dlib-68`` in the manifest);
- ``mediapipe``: Google's MediaPipe Face Landmarker, 478 points (``pip install 'hyperdomain[faces]'``;
  model ``mediapipe-face``).

``detector("auto")`` takes dlib when it is installed, else MediaPipe. Any other callable
``photo -> [FacePoints, ...]`` works as a detector too.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .alignment import Detector, FacePoints
from ..errors import HyperdomainError
from ..files.pretrained import resolve_model

BACKENDS = ("auto", "dlib", "mediapipe")

# MediaPipe's face mesh: the contours of the eye on the image's left and right, the mouth corners
MEDIAPIPE_EYE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MEDIAPIPE_EYE_RIGHT = (362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398)
MEDIAPIPE_MOUTH_LEFT, MEDIAPIPE_MOUTH_RIGHT = 61, 291


def points_from_68(lm: np.ndarray) -> FacePoints:
    """FacePoints from the iBUG 68-point convention (dlib): eyes 36-41 and 42-47, mouth corners 48, 54."""
    lm = np.asarray(lm, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks [68, 2], got {list(lm.shape)}")
    return FacePoints.from_array(np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[48], lm[54]]))


def points_from_mediapipe(lm: np.ndarray) -> FacePoints:
    """FacePoints from MediaPipe's face mesh (468 or 478 points, in pixels)."""
    lm = np.asarray(lm, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] < 468 or lm.shape[1] < 2:
        raise ValueError(f"expected MediaPipe's 468 or 478 landmarks [N, 2], got {list(lm.shape)}")
    lm = lm[:, :2]
    return FacePoints.from_array(np.stack([lm[list(MEDIAPIPE_EYE_LEFT)].mean(0), lm[list(MEDIAPIPE_EYE_RIGHT)].mean(0),
                                           lm[MEDIAPIPE_MOUTH_LEFT], lm[MEDIAPIPE_MOUTH_RIGHT]]))


def detector(backend: str = "auto", weights: str | os.PathLike | None = None, download: bool = True) -> Detector:
    """A landmark detector. ``weights``: a local model file (else the manifest's, fetched on first use)."""
    if backend not in BACKENDS:
        raise HyperdomainError(f"--detector: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "dlib" if _installed("dlib") else "mediapipe" if _installed("mediapipe") else ""
        if not backend:
            raise HyperdomainError("face alignment needs a landmark detector: pip install 'hyperdomain[faces]' "
                                   "(MediaPipe) or pip install dlib; or pass --no-align for photos already cropped")
    if not _installed(backend):
        extra = "pip install 'hyperdomain[faces]'" if backend == "mediapipe" else "pip install dlib"
        raise HyperdomainError(f"--detector {backend}: the {backend} package is not installed ({extra})")
    model = {"dlib": "dlib-68", "mediapipe": "mediapipe-face"}[backend]
    path = Path(weights) if weights is not None else resolve_model(model, download=download)
    if not path.is_file():
        raise HyperdomainError(f"{path}: no such {backend} model file")
    return _dlib(path) if backend == "dlib" else _mediapipe(path)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _dlib(path: Path) -> Detector:
    import dlib  # optional: imported only for this backend

    try:
        predictor = dlib.shape_predictor(str(path))
    except RuntimeError as e:
        raise HyperdomainError(f"{path}: not a dlib shape predictor ({e})") from None
    find_faces = dlib.get_frontal_face_detector()

    def detect(photo: Image.Image) -> Sequence[FacePoints]:
        rgb = np.asarray(photo.convert("RGB"))
        out = []
        for box in find_faces(rgb, 1):
            shape = predictor(rgb, box)
            out.append(points_from_68(np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)))
        return out

    return detect


def _mediapipe(path: Path) -> Detector:
    import mediapipe as mp  # optional: imported only for this backend
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python import vision

    try:
        landmarker = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)), num_faces=4,
            running_mode=vision.RunningMode.IMAGE))
    except (RuntimeError, ValueError) as e:
        raise HyperdomainError(f"{path}: not a MediaPipe face landmarker model ({e})") from None

    def detect(photo: Image.Image) -> Sequence[FacePoints]:
        rgb = np.ascontiguousarray(np.asarray(photo.convert("RGB")))
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
        w, h = photo.size
        return [points_from_mediapipe(np.array([[p.x * w, p.y * h] for p in face], dtype=np.float64))
                for face in result.face_landmarks]

    return detect
