"""The demo dataset: movements, envelopes and the folder-dataset layout of the rendered videos."""

from __future__ import annotations

import av
import numpy as np
import pytest

from maedfer.demo import render
from maedfer.errors import MaedferError
from maedfer.manifests import get_protocol


def _landmarks() -> np.ndarray:
    # eyes, nose, mouth corners of a frontal face in a 96-pixel frame
    return np.array([[36.0, 40.0], [60.0, 40.0], [48.0, 52.0], [39.0, 64.0], [57.0, 64.0]])


def test_each_movement_moves_its_own_part_of_the_face() -> None:
    ys, xs = np.mgrid[0:96, 0:96].astype(np.float32)
    lm = _landmarks()
    fields = {c.name: render.motion_field(c.name, lm, xs, ys) for c in render.CLASSES}
    assert not fields["neutral"].any()

    def strength(name: str, y0: int, y1: int) -> float:
        return float(np.abs(fields[name][y0:y1, :, :2]).max())

    assert strength("mouth_open", 60, 80) > 3 * strength("mouth_open", 0, 35)  # below the nose
    assert strength("brow_raise", 20, 38) > 3 * strength("brow_raise", 62, 96)  # above the eyes
    for turn, axis in (("shake", 0), ("nod", 1)):
        moved = np.abs(fields[turn][..., axis]).max()
        assert moved > 2 and not np.abs(fields[turn][..., 1 - axis]).any()
        # the nose moves more than the face's outline: parallax, not a rigid shift
        assert abs(fields[turn][52, 48, axis]) > 3 * abs(fields[turn][52, 8, axis])


def test_envelopes_start_and_end_at_rest() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        params = render.draw_params(rng, 16)
        pulse = render.envelope(params, 16)
        wave = render.envelope(params, 16, oscillates=True)
        assert pulse.min() >= 0 and pulse.max() > 0.5
        assert wave.min() < 0 < wave.max()  # back and forth
        for env in (pulse, wave):
            start = int(np.ceil(params.onset))
            assert abs(env[max(0, start - 1)]) < 0.35 * params.amplitude


def test_render_dataset_writes_a_folder_dataset_one_fold_per_portrait(tmp_path, portraits) -> None:
    chosen = [portraits["grace_hopper"], portraits["obama"]]
    clips = render.render_dataset(
        tmp_path,
        portraits=chosen,
        actors_per_portrait=1,
        clips_per_class=1,
        num_frames=6,
        frame_size=96,
    )
    assert len(clips) == 2 * len(render.CLASSES)
    files = sorted(tmp_path.rglob("*.mp4"))
    assert [f.relative_to(tmp_path) for f in files] == sorted(c.path for c in clips)
    with av.open(str(files[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (96, 96, 3)

    names = [c.name for c in render.CLASSES]
    index = get_protocol("folder").configure(labels=tmp_path / render.LABELS, classes=names)
    frame = index.index(tmp_path).to_frame()
    assert len(frame) == len(clips)
    by_fold = frame.groupby("fold")["subject"].nunique()
    assert len(by_fold) == 2 and (by_fold == 1).all()  # each portrait alone in its fold
    assert set(frame["subject"]) == {"grace_hopper", "obama"}
    assert sorted(set(frame["label_name"])) == sorted(names)  # the movements' own names
    assert (frame["label"] == frame["label_name"].map(names.index)).all()
    # existing videos are kept: a second call renders nothing new
    mtimes = [f.stat().st_mtime_ns for f in files]
    render.render_dataset(
        tmp_path,
        portraits=chosen,
        actors_per_portrait=1,
        clips_per_class=1,
        num_frames=6,
        frame_size=96,
    )
    assert mtimes == [f.stat().st_mtime_ns for f in files]


def test_bad_portraits_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(MaedferError, match="no portraits"):
        render.render_dataset(tmp_path / "raw", portraits=[])
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("RGB", (160, 160), (120, 120, 120)).save(blank)
    with pytest.raises(MaedferError, match="no face"):
        render.render_dataset(tmp_path / "raw", portraits=[blank], clips_per_class=1)
    with pytest.raises(MaedferError, match="variants per portrait"):
        render.actors_of(0, 5)


def test_rendering_is_byte_identical_for_a_seed(tmp_path, portraits) -> None:
    """Two renders with one seed, one and two processes: the same files, byte for byte."""
    stems = sorted(portraits)[:2]
    kwargs = dict(
        portraits=[portraits[s] for s in stems],
        actors_per_portrait=1,
        clips_per_class=1,
        num_frames=8,
        frame_size=64,
    )
    render.render_dataset(tmp_path / "a", workers=1, **kwargs)
    render.render_dataset(tmp_path / "b", workers=2, **kwargs)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mp4"))
    assert len(files) == 2 * len(render.CLASSES)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
