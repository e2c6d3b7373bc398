"""Synthesis of the labelled demo dataset from the committed portraits (docs/design.md).

Each portrait is one subject; each class is a non-rigid face movement around the MTCNN landmarks
(similarity alignment removes rigid motion, so rigid classes would become identical after
``prepare``): a still face, the mouth opening, a smile, a brow raise and a squint. A clip is a
single onset-apex-offset of its movement with random duration, timing and amplitude, under
rigid head jitter (per-clip pose plus per-frame sway), brightness and colour changes and sensor
noise, which the model has to ignore.

Geometry. Everything is drawn by one ``cv2.remap`` per frame. For an output pixel ``p`` the
sampling position in the portrait is ``portrait(p) = P(R_t^-1(p) - a_t * U(R_t^-1(p)))``:
``R_t`` is the frame's rigid pose, ``U`` the class's displacement field at full amplitude (in
frame pixels), ``a_t`` the movement's amplitude at frame t and ``P`` the fixed map from frame to
portrait pixels. Sampling at ``q - U(q)`` moves the content by about ``U`` (backward warping; the
fields are smooth and a few pixels wide, where the two agree). Fields are sums of Gaussians in a
face frame: origin between the eyes, x along the eye line, unit = inter-ocular distance D.

Layout. The demo is a ``folder`` dataset (README "Bring your own dataset"):
``<portrait>/<class>_<variant>_<n>.mp4`` with a labels table ``labels.csv`` (path, label,
subject, fold, variant) at the raw root. Labels are the movements' own names (:data:`CLASSES`),
the subject is the portrait and the fold its position (portrait i in fold i + 1), so
``maedfer prepare folder --labels labels.csv`` gives subject-independent folds (leave one
portrait out). Each portrait is drawn as a few appearance variants (mirrored, stretched,
recoloured) of the same subject.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from maedfer.errors import MaedferError
from maedfer.lifeline import die_with
from maedfer.preprocess.encode import write_clip

log = logging.getLogger(__name__)

PORTRAITS = Path(__file__).resolve().parents[1] / "assets" / "portraits"
# Amplitudes are about three times a natural one: at the 64-pixel faces the demo trains on, a
# natural brow raise moves a couple of pixels, below what H.264 and the resampling keep.
EXAGGERATION = 3.0
# Per-frame steps of the head's sway (scale, degrees, shift x, shift y as a fraction of the
# frame), integrated and smoothed into a random walk. Alignment removes rigid motion, but
# MTCNN's landmark error grows with it and reappears as jitter of the aligned face, which
# swamps the small expression movements. Measured on the demo (4 folds, linear probe on the
# clips' motion energy): off, the sway scores best; the per-clip pose still varies.
SWAY_STEP = (0.0, 0.0, 0.0, 0.0)
# Sensor noise std range (0..255); it too makes MTCNN's landmarks wander from frame to frame.
NOISE_STD = (0.5, 2.0)


@dataclass(frozen=True)
class DemoClass:
    """One demo class: a face movement (its name is the class's label)."""

    name: str
    amplitude: float  # natural peak displacement, in inter-ocular distances
    oscillates: bool = False  # back and forth (head nod/shake) rather than one onset-offset


CLASSES: tuple[DemoClass, ...] = (
    DemoClass("neutral", 0.0),  # still face
    DemoClass("nod", 0.12, oscillates=True),  # head pitch, yes
    DemoClass("shake", 0.12, oscillates=True),  # head yaw, no
    DemoClass("brow_raise", 0.08),  # brows up (AU1+2), as in fear
    DemoClass("mouth_open", 0.15),  # jaw drop (AU26), the surprise mouth
)
#: The labels table at the raw root (``prepare folder --labels``).
LABELS = "labels.csv"
# Not in the default set: weaker after alignment at 64 pixels (docs/design.md), kept for
# experiments through ``motion_field``.
EXTRA_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("smile", 0.09),  # lip corners out and up (AU12)
    DemoClass("squint", 0.07),  # lids tighten and close (AU7)
)


@dataclass(frozen=True)
class Subject:
    """A portrait scaled so that its face box spans ``FACE_FRACTION`` of a frame's height."""

    name: str
    image: np.ndarray  # (H, W, 3) float32 RGB, scaled to frame resolution
    center: np.ndarray  # (2,) face centre in ``image`` pixels (x, y)
    landmarks: np.ndarray  # (5, 2) eyes, nose, mouth corners, in frame pixels of the still pose
    skin: np.ndarray  # (3,) median RGB of the cheeks, the colour of closed eyelids


FACE_FRACTION = 0.5
_AMPLITUDE = {c.name: c.amplitude for c in CLASSES + EXTRA_CLASSES}
_OSCILLATES = {c.name: c.oscillates for c in CLASSES + EXTRA_CLASSES}


def detect_face(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box ``(4,)`` and 5 landmarks ``(5, 2)`` of the most probable face (facenet-pytorch MTCNN).

    Raises:
        MaedferError: no face found.
    """
    from facenet_pytorch import MTCNN  # heavy import, only when rendering

    boxes, probs, points = MTCNN(keep_all=True, device="cpu").detect(image, landmarks=True)
    if boxes is None:
        raise MaedferError("demo: MTCNN found no face in a portrait; use a frontal face image")
    # numpy 2 can hand back object arrays (docs/design.md)
    best = int(np.argmax(np.asarray(probs, dtype=np.float64)))
    return np.asarray(boxes[best], np.float64), np.asarray(points[best], np.float64)


def load_subject(path: Path, frame_size: int) -> Subject:
    """Read a portrait, find its face once and scale it to the demo's frame size.

    Raises:
        MaedferError: unreadable image or no face in it.
    """
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"))
    except OSError as exc:
        raise MaedferError(f"demo: cannot read portrait {path}: {exc}") from None
    box, points = detect_face(rgb)
    scale = FACE_FRACTION * frame_size / (box[3] - box[1])
    size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
    image = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    center = (points.mean(0) + np.array([0.0, -0.1]) * (box[3] - box[1])) * scale
    landmarks = points * scale - center + frame_size / 2
    return Subject(path.stem, image, center, landmarks, _skin(image, points * scale))


def actor_variant(subject: Subject, actor: int, *, frame_size: int, seed: int = 0) -> Subject:
    """The portrait as one of its appearance variants: mirrored or not, stretched, recoloured.

    ``actor`` numbers the variant (portrait i has 4i+1..4i+4). Variants of one portrait are
    one subject and share its fold, so this adds appearance variety to training without
    leaking a test subject's face: the model has to find the movement, not the person.
    """
    rng = np.random.default_rng([seed, actor, 7])
    image, landmarks, center = subject.image, subject.landmarks.copy(), subject.center.copy()
    if actor % 2 == 0:  # the mirror image: left and right eyes and mouth corners swap
        image = np.ascontiguousarray(image[:, ::-1])
        center[0] = image.shape[1] - 1 - center[0]
        landmarks = landmarks[[1, 0, 2, 4, 3]]
        landmarks[:, 0] = frame_size - landmarks[:, 0]  # frame pixels mirror about the centre
    stretch = rng.uniform(0.88, 1.12)  # a wider or narrower face
    width = round(image.shape[1] * stretch)
    image = cv2.resize(image, (width, image.shape[0]), interpolation=cv2.INTER_LINEAR)
    landmarks[:, 0] = frame_size / 2 + (landmarks[:, 0] - frame_size / 2) * stretch
    center[0] *= stretch
    # a colour cast and contrast change (mixing matrix near identity), applied to the pixels
    mix = np.eye(3) + rng.normal(0, 0.08, (3, 3))
    contrast = rng.uniform(0.8, 1.2)
    mean = image.reshape(-1, 3).mean(0)
    recoloured = ((image - mean) * contrast + mean) @ mix.T.astype(np.float32)
    image = np.clip(recoloured, 0, 255).astype(np.float32)
    skin = np.clip((subject.skin - mean) * contrast + mean, 0, 255) @ mix.T.astype(np.float32)
    return Subject(f"{subject.name}-{actor}", image, center, landmarks, skin.astype(np.float32))


def _skin(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Median colour of two small patches below the eyes (``points`` in ``image`` pixels)."""
    dist = float(np.hypot(*(points[1] - points[0])))
    radius = max(1, round(0.1 * dist))
    patches = []
    for eye in points[:2]:
        x, y = (eye + np.array([0.0, 0.5 * dist])).round().astype(int)
        patches.append(image[max(0, y - radius) : y + radius, max(0, x - radius) : x + radius])
    return np.median(np.concatenate([p.reshape(-1, 3) for p in patches]), 0).astype(np.float32)


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * (x / sigma) ** 2)


def _face_frame(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Origin (eye midpoint), 2x2 rotation (columns = face x, y axes) and D in pixels."""
    eyes = landmarks[1] - landmarks[0]
    dist = float(np.hypot(*eyes))
    ux = eyes / dist
    axes = np.array([[ux[0], -ux[1]], [ux[1], ux[0]]])
    return (landmarks[0] + landmarks[1]) / 2, axes, dist


def motion_field(
    kind: str,
    landmarks: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    exaggeration: float = EXAGGERATION,
) -> np.ndarray:
    """The movement ``kind`` at full amplitude, sampled at the still-pose pixels ``(xs, ys)``.

    Returns ``(..., 4)`` float32: displacement ``dx, dy`` in pixels, ``dark`` (0..1, the pixel is
    multiplied by ``1 - dark``: mouth cavity, forehead wrinkles, nasolabial folds, lash line) and
    ``paint`` (0..1, blended towards the class's colour: teeth, closed lids). Amplitude 1 = the
    class's natural amplitude times ``exaggeration``. Shading scales with the movement, so a
    model cannot tell the classes apart from a single still frame of a subject it never saw.

    Raises:
        ValueError: unknown ``kind`` (internal misuse).
    """
    if kind not in _AMPLITUDE:
        raise ValueError(f"unknown demo motion {kind!r}")
    origin, axes, dist = _face_frame(landmarks)
    local = (landmarks - origin) @ axes / dist  # landmarks in face units
    fx, fy = np.einsum("ij,...i->j...", axes, np.stack([xs - origin[0], ys - origin[1]], -1))
    face = _FaceCoords(fx / dist, fy / dist, local, _AMPLITUDE[kind] * exaggeration)
    ux, uy, dark, paint = _FIELDS[kind](face) if kind in _FIELDS else (0.0, 0.0, 0.0, 0.0)
    ux, uy = ux + np.zeros_like(face.fx), uy + np.zeros_like(face.fx)
    # back to image axes and pixels
    dx = (axes[0, 0] * ux + axes[0, 1] * uy) * dist
    dy = (axes[1, 0] * ux + axes[1, 1] * uy) * dist
    out = np.stack(np.broadcast_arrays(dx, dy, dark, paint), -1)
    return out.astype(np.float32)


@dataclass(frozen=True)
class _FaceCoords:
    fx: np.ndarray  # pixel positions in face units: x along the eyes, origin between them
    fy: np.ndarray
    local: np.ndarray  # (5, 2) landmarks in face units
    amp: float  # peak displacement in face units

    @property
    def mouth(self) -> np.ndarray:
        return self.local[3:].mean(0)

    @property
    def width(self) -> float:
        return float(abs(self.local[4, 0] - self.local[3, 0]))

    def across_mouth(self) -> np.ndarray:
        """1 at the mouth's centre line, 0 at and beyond the corners: the corners are landmarks
        the aligner fits, and moving them would shake the whole aligned face."""
        t = np.clip((self.fx - self.mouth[0]) / (0.5 * self.width), -1, 1)
        return np.cos(0.5 * np.pi * t) ** 2


def _lips_part(f: _FaceCoords, lower_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertical field that parts the lips by ``amp``: lower lip/jaw down, upper lip up."""
    lower = 1 / (1 + np.exp(-(f.fy - f.mouth[1]) / 0.03))  # the lip line splits the field
    across = f.across_mouth()
    uy = lower_share * f.amp * lower * across * _gauss(f.fy - f.mouth[1] - 0.25, 0.4)
    uy -= (1 - lower_share) * f.amp * (1 - lower) * across * _gauss(f.fy - f.mouth[1], 0.18)
    inside = np.exp(
        -(((f.fx - f.mouth[0]) / (0.36 * f.width)) ** 2)
        - (((f.fy - f.mouth[1]) / (0.45 * f.amp + 0.01)) ** 2)
    )
    return uy, inside


def _mouth_open(f: _FaceCoords):
    uy, inside = _lips_part(f, 0.75)
    return 0.0, uy, 0.7 * inside, 0.0  # jaw drop, dark mouth cavity


def _smile(f: _FaceCoords):
    ux, uy = 0.0, 0.0
    dark = np.zeros_like(f.fx)
    for corner, side in ((f.local[3], -1.0), (f.local[4], 1.0)):
        # out and up at about 1.4 : 1, the ratio at which the fitted scale stays put
        near = _gauss(np.hypot(f.fx - corner[0], f.fy - corner[1]), 0.2)
        ux = ux + f.amp * 0.8 * side * near
        uy = uy - f.amp * 0.55 * near
        cheek = _gauss(np.hypot(f.fx - corner[0] + 0.05 * side, f.fy - corner[1] + 0.4), 0.2)
        uy = uy - 0.5 * f.amp * cheek
        # nasolabial fold: a soft dark line from beside the nose to beyond the corner
        start = f.local[2] + np.array([0.22 * side, 0.05])
        end = corner + np.array([0.1 * side, 0.0])
        dark = np.maximum(dark, 0.35 * _segment(f, start, end, 0.035))
    parted, inside = _lips_part(f, 0.5)
    return ux, uy + 0.35 * parted, dark, 0.8 * inside  # teeth show between the lips


def _brow_raise(f: _FaceCoords):
    uy = 0.0
    for eye in f.local[:2]:
        uy = uy - f.amp * _gauss(f.fx - eye[0], 0.3) * _gauss(f.fy - eye[1] + 0.33, 0.12)
    uy = uy - 0.5 * f.amp * _gauss(f.fx, 0.8) * _gauss(f.fy + 0.75, 0.25)
    # horizontal forehead wrinkles that deepen as the brows go up
    across = _gauss(f.fx, 0.45)
    wrinkles = sum(_gauss(f.fy - f.local[0, 1] + y, 0.035) for y in (0.62, 0.8))
    return 0.0, uy, 0.35 * across * wrinkles, 0.0


def _squint(f: _FaceCoords):
    uy, paint, dark = 0.0, np.zeros_like(f.fx), np.zeros_like(f.fx)
    for eye in f.local[:2]:
        across = _gauss(f.fx - eye[0], 0.2)
        uy = uy + f.amp * across * _gauss(f.fy - eye[1] + 0.1, 0.09)  # upper lid down
        uy = uy - 0.6 * f.amp * across * _gauss(f.fy - eye[1] - 0.1, 0.09)  # lower lid up
        ellipse = np.exp(-(((f.fx - eye[0]) / 0.17) ** 2) - (((f.fy - eye[1]) / 0.07) ** 2))
        paint = np.maximum(paint, 0.75 * ellipse)  # lids cover the eye
        lash = _gauss(f.fx - eye[0], 0.13) * _gauss(f.fy - eye[1] - 0.01, 0.03)
        dark = np.maximum(dark, 0.4 * lash)
    return 0.0, uy, dark, paint


def _turn(f: _FaceCoords, axis: int):
    """Head rotation out of the image plane, as parallax: points move by their depth.

    A yaw (``axis`` 0) or pitch (1) by a small angle moves each point of the head across the
    image by about angle x depth. Depth is a dome over the face with the nose tip on top, zero
    at the outline and beyond, so the features slide against the outline and the background.
    Similarity alignment follows the features, so after ``prepare`` it is the outline, hair and
    background that swing: a large movement in the aligned clip, unlike an in-plane one.
    """
    nose = f.local[2]
    dome = _gauss(f.fx - nose[0], 0.75) * _gauss(f.fy - nose[1] + 0.2, 0.95)
    tip = 0.4 * _gauss(np.hypot(f.fx - nose[0], f.fy - nose[1]), 0.2)
    shift = f.amp * (dome + tip)
    return (shift, 0.0, 0.0, 0.0) if axis == 0 else (0.0, shift, 0.0, 0.0)


def _segment(f: _FaceCoords, start: np.ndarray, end: np.ndarray, sigma: float) -> np.ndarray:
    """A soft line from ``start`` to ``end`` (face units) of width ``sigma``."""
    direction = end - start
    t = np.clip(
        ((f.fx - start[0]) * direction[0] + (f.fy - start[1]) * direction[1])
        / float(direction @ direction),
        0,
        1,
    )
    gap = np.hypot(f.fx - start[0] - t * direction[0], f.fy - start[1] - t * direction[1])
    return _gauss(gap, sigma)


_FIELDS = {
    "mouth_open": _mouth_open,
    "smile": _smile,
    "brow_raise": _brow_raise,
    "squint": _squint,
    "shake": lambda f: _turn(f, 0),
    "nod": lambda f: _turn(f, 1),
}
TEETH = np.array([235.0, 228.0, 215.0], np.float32)


def paint_colour(kind: str, subject: Subject) -> np.ndarray:
    """The colour ``paint`` blends towards: teeth for the smile, the subject's skin otherwise."""
    return TEETH if kind == "smile" else subject.skin


@dataclass(frozen=True)
class ClipParams:
    """Everything random about one clip, drawn by :func:`draw_params`."""

    onset: float  # frame where the movement starts
    duration: float  # frames from onset to the end of the offset
    hold: float  # fraction of the duration spent at the apex
    amplitude: float  # peak amplitude, 1 = the class's (exaggerated) amplitude
    cycles: float  # back-and-forth cycles over the duration (oscillating classes)
    sign: float  # +1 or -1: which way an oscillation starts
    pose: np.ndarray  # (4,) per-clip scale, angle (deg), shift x, shift y (fraction of frame)
    sway: np.ndarray  # (T, 4) per-frame pose offsets, smooth in time
    gain: np.ndarray  # (3,) per-channel brightness gain
    bias: float  # brightness offset (0..255 scale)
    flicker: np.ndarray  # (T,) per-frame gain factors
    noise: float  # sensor noise std (0..255 scale)


def draw_params(rng: np.random.Generator, num_frames: int) -> ClipParams:
    """Random speed, phase, amplitude, pose, brightness and noise of one clip."""
    duration = rng.uniform(0.55, 0.95) * num_frames
    onset = rng.uniform(0, num_frames - duration)
    steps = rng.normal(0, 1, (num_frames + 8, 4)) * np.array(SWAY_STEP)
    kernel = np.hanning(9) / np.hanning(9).sum()  # smooth the random walk into a sway
    sway = np.stack([np.convolve(np.cumsum(s), kernel, "valid") for s in steps.T], 1)
    return ClipParams(
        onset=onset,
        duration=duration,
        hold=rng.uniform(0.1, 0.4),
        amplitude=rng.uniform(0.75, 1.25),
        cycles=rng.uniform(1.0, 2.0),
        sign=float(rng.choice([-1.0, 1.0])),
        pose=np.array([rng.uniform(0.9, 1.1), rng.uniform(-8, 8), *rng.uniform(-0.05, 0.05, 2)]),
        sway=sway[:num_frames] - sway[:num_frames].mean(0),
        gain=rng.uniform(0.7, 1.3) * rng.uniform(0.93, 1.07, 3),
        bias=rng.uniform(-15, 15),
        flicker=1 + rng.normal(0, 0.015, num_frames),
        noise=rng.uniform(*NOISE_STD),
    )


def envelope(params: ClipParams, num_frames: int, *, oscillates: bool = False) -> np.ndarray:
    """Amplitude per frame ``(T,)`` over the movement's span, zero outside it.

    One movement: raised-cosine onset, apex hold, raised-cosine offset. An oscillation (nod,
    shake): ``cycles`` sine periods under a half-sine window, so it starts and ends at rest.
    """
    t = (np.arange(num_frames) - params.onset) / params.duration  # 0..1 over the movement
    inside = (t >= 0) & (t <= 1)
    if oscillates:
        wave = np.sin(2 * np.pi * params.cycles * t) * np.sin(np.pi * np.clip(t, 0, 1))
        return params.amplitude * params.sign * np.where(inside, wave, 0.0)
    ramp = (1 - params.hold) / 2
    rise = np.clip(t / ramp, 0, 1)
    fall = np.clip((1 - t) / ramp, 0, 1)
    shape = np.minimum(0.5 - 0.5 * np.cos(np.pi * rise), 0.5 - 0.5 * np.cos(np.pi * fall))
    return params.amplitude * np.where(inside, shape, 0.0)


def render_clip(
    subject: Subject,
    kind: str,
    params: ClipParams,
    *,
    num_frames: int,
    frame_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Frames ``(T, S, S, 3)`` uint8 RGB of one clip of ``subject`` making movement ``kind``."""
    size = frame_size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    half = size / 2
    # The field is fixed in the still pose: compute it once, then look it up at each frame's
    # pose (a remap of the field is ~50x cheaper than evaluating the Gaussians again).
    field = motion_field(kind, subject.landmarks, xs, ys)
    colour = paint_colour(kind, subject)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    amps = envelope(params, num_frames, oscillates=_OSCILLATES[kind])
    for t in range(num_frames):
        scale = params.pose[0] * (1 + params.sway[t, 0])
        angle = np.deg2rad(params.pose[1] + params.sway[t, 1])
        shift = (params.pose[2:] + params.sway[t, 2:]) * size
        # inverse rigid pose: frame pixel -> still-pose frame pixel
        cx, cy = xs - half - shift[0], ys - half - shift[1]
        cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
        qx = (cos * cx + sin * cy + half).astype(np.float32)
        qy = (-sin * cx + cos * cy + half).astype(np.float32)
        dx, dy, dark, paint = cv2.split(cv2.remap(field, qx, qy, cv2.INTER_LINEAR))
        a = float(amps[t])
        map_x = qx - a * dx + float(subject.center[0] - half)
        map_y = qy - a * dy + float(subject.center[1] - half)
        img = cv2.remap(
            subject.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        shade = min(1.0, abs(a))
        img *= 1 - shade * dark[..., None]
        alpha = shade * paint[..., None]
        img = img * (1 - alpha) + alpha * colour
        img = img * (params.gain * params.flicker[t]) + params.bias
        img += params.noise * rng.standard_normal(img.shape, dtype=np.float32)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_video(frames: np.ndarray, path: Path, *, fps: int) -> None:
    """H.264 MP4 (yuv420p, CRF 16), written next to ``path`` and renamed into place; the same
    frames give the same bytes (`maedfer.preprocess.encode.write_clip`)."""
    write_clip(frames, path, fps=fps, quality={"crf": "16", "preset": "veryfast"})


@dataclass(frozen=True)
class RenderedClip:
    path: Path  # relative to the raw root
    subject: str  # portrait stem
    actor: int  # appearance variant (seeds the clip)
    demo_class: str
    fold: int  # the portrait's position + 1


def actors_of(portrait_index: int, actors_per_portrait: int) -> list[int]:
    """Variant numbers of a portrait: 4i+1..4i+k (clips are seeded by them, so a portrait's
    clips do not depend on how many portraits there are)."""
    if not 1 <= actors_per_portrait <= 4:
        raise MaedferError(f"demo: variants per portrait ({actors_per_portrait}) must be in 1..4")
    return [4 * portrait_index + k + 1 for k in range(actors_per_portrait)]


def write_labels(raw: Path, clips: list[RenderedClip]) -> Path:
    """``raw/labels.csv``: path, label, subject, fold, variant (written atomically)."""
    from maedfer.atomic import atomic_path

    lines = ["path,label,subject,fold,variant"]
    lines += [f"{c.path.as_posix()},{c.demo_class},{c.subject},{c.fold},{c.actor}" for c in clips]
    path = raw / LABELS
    raw.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def render_dataset(
    raw: Path,
    *,
    portraits: list[Path],
    actors_per_portrait: int = 2,
    clips_per_class: int = 8,
    num_frames: int = 16,
    frame_size: int = 192,
    fps: int = 30,
    seed: int = 0,
    workers: int = 1,
) -> list[RenderedClip]:
    """Render the demo as a folder dataset under ``raw``, with ``labels.csv``; existing clips
    are kept.

    Args:
        raw: the raw root (one folder per portrait, and the labels table).
        portraits: one image per subject; portrait i is fold i + 1.
        actors_per_portrait: appearance variants per portrait, 1..4.
        clips_per_class: clips per variant and class.
        num_frames: frames per clip.
        frame_size: side of the square frames.
        fps: frame rate written in the files.
        seed: clips are a function of (seed, variant, class, clip number) alone.
        workers: processes rendering in parallel (one variant per task).
    Returns:
        The clips, in a fixed order.
    Raises:
        MaedferError: no portraits, two with one name, an unreadable portrait or one without
            a face.
    """
    if not portraits:
        raise MaedferError("demo: no portraits given; pass at least 2 face images")
    stems = [p.stem for p in portraits]
    if len(set(stems)) != len(stems):
        raise MaedferError(f"demo: portraits need distinct names (subjects); got {stems}")
    if clips_per_class < 1:
        raise MaedferError(f"demo: clips per class ({clips_per_class}) must be >= 1")
    jobs = []
    for index, portrait in enumerate(portraits):
        for actor in actors_of(index, actors_per_portrait):
            for cls_index, cls in enumerate(CLASSES):
                for clip in range(clips_per_class):
                    rel_path = Path(portrait.stem) / f"{cls.name}_{actor:02d}_{clip + 1}.mp4"
                    jobs.append((portrait, actor, cls_index, clip, rel_path, index + 1))
    out = [
        RenderedClip(rel, p.stem, actor, CLASSES[c].name, fold)
        for p, actor, c, _, rel, fold in jobs
    ]
    todo: dict[tuple[Path, int], list[tuple[int, int, Path]]] = {}
    for portrait, actor, cls_index, clip, rel_path, _ in jobs:
        if not (raw / rel_path).is_file():
            todo.setdefault((portrait, actor), []).append((cls_index, clip, rel_path))
    settings = {"num_frames": num_frames, "frame_size": frame_size, "fps": fps, "seed": seed}
    with tqdm(total=sum(map(len, todo.values())), desc="render", unit="clip") as bar:
        if workers <= 1 or len(todo) <= 1:
            for (portrait, actor), clips in todo.items():
                bar.update(_render_actor(portrait, actor, clips, raw, settings))
        else:
            # one task per variant: each finds its portrait's face once, then renders its clips
            # each worker on a lifeline: a killed demo leaves no renderer behind
            with ProcessPoolExecutor(
                min(workers, len(todo)), initializer=die_with, initargs=(os.getpid(),)
            ) as pool:
                tasks = [
                    pool.submit(_render_actor, p, a, c, raw, settings) for (p, a), c in todo.items()
                ]
                for task in as_completed(tasks):
                    bar.update(task.result())
    write_labels(raw, out)
    log.info("demo: %d clips of %d portraits under %s", len(out), len(portraits), raw)
    return out


def _render_actor(
    portrait: Path, actor: int, clips: list[tuple[int, int, Path]], raw: Path, settings: dict
) -> int:
    """Render and write one actor's clips; returns how many."""
    size, frames_per_clip, seed = settings["frame_size"], settings["num_frames"], settings["seed"]
    subject = actor_variant(load_subject(portrait, size), actor, frame_size=size, seed=seed)
    for cls_index, clip, rel_path in clips:
        rng = np.random.default_rng([seed, actor, cls_index, clip])
        params = draw_params(rng, frames_per_clip)
        frames = render_clip(
            subject,
            CLASSES[cls_index].name,
            params,
            num_frames=frames_per_clip,
            frame_size=size,
            rng=rng,
        )
        write_video(frames, raw / rel_path, fps=settings["fps"])
    return len(clips)


def default_portraits() -> list[Path]:
    """The committed public-domain portraits, sorted by name."""
    found = sorted(p for p in PORTRAITS.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    if len(found) < 2:
        raise MaedferError(f"demo: expected the committed portraits in {PORTRAITS}, found {found}")
    return found
