"""DFEW, FERV39k, MAFW (official split files) and VoxCeleb2 on miniature trees (DATASETS §2-§5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from maedfer.errors import MaedferError
from maedfer.manifests import get_protocol, read_manifest, read_rejects, write_manifest
from maedfer.manifests import write_rejects as write_rejects_file
from maedfer.manifests.voxceleb2 import crop_box
from tests.rawtrees import make_dfew, make_ferv39k, make_mafw, make_voxceleb2


def _check_against_tree(index, tree, kind: str) -> None:
    got = {e.clip_id: e for e in index.entries}
    assert set(got) == set(tree.labels)
    for key, entry in got.items():
        assert entry.label == tree.labels[key]
        assert (entry.fold if entry.fold is not None else entry.split) == tree.assign[key]
        assert entry.kind == kind and entry.subject is None
        assert entry.label_name == index.classes[entry.label]
        assert (index.raw_root / entry.source).exists()


@pytest.mark.parametrize("spelling", ["-", "_"])
@pytest.mark.parametrize("frames_dir", ["clip_224x224", "jpg_256"])
def test_dfew_both_spellings_and_frame_folders(tmp_path: Path, spelling, frames_dir) -> None:
    tree = make_dfew(tmp_path / "DFEW", spelling=spelling, frames_dir=frames_dir)
    index = get_protocol("dfew").index(tmp_path)
    _check_against_tree(index, tree, "frames")
    first = index.entries[0]
    assert first.clip_id == "00001" and first.source == f"DFEW/Clip/{frames_dir}/00001"
    assert index.classes[0] == "happy" and index.classes[6] == "fear"
    assert not index.warnings and not index.rejects


def test_dfew_from_video_and_partial(tmp_path: Path) -> None:
    tree = make_dfew(tmp_path, n_clips=10)
    index = get_protocol("dfew").index(tmp_path, from_video=True)
    _check_against_tree(index, tree, "video")
    assert index.entries[0].source == "Clip/original/00001.mp4"
    shutil.rmtree(tmp_path / "Clip" / "clip_224x224" / "00004")
    for f in (tmp_path / "Clip" / "clip_224x224" / "00007").iterdir():
        f.unlink()
    index = get_protocol("dfew").index(tmp_path)
    assert len(index.entries) == 8
    assert index.rejects == [("00007", "Clip/clip_224x224/00007", index.rejects[0][2])]
    assert index.rejects[0][2].startswith("no frames")
    assert any(
        "1 of 10 split clips have no frame folders" in w and "00004" in w for w in index.warnings
    )
    (tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_2.csv").unlink()
    index = get_protocol("dfew").index(tmp_path)
    assert len(index.entries) == 8  # folds come from the test sets alone
    assert any("train split file(s) set_2.csv not found" in w for w in index.warnings)


def test_dfew_frames_split_over_part_folders(tmp_path: Path) -> None:
    make_dfew(tmp_path, n_clips=6, originals=False)
    frames = tmp_path / "Clip" / "clip_224x224"
    part = tmp_path / "clip_224x224_part_2" / "clip_224x224"
    part.mkdir(parents=True)
    for vid in ("00013", "00016"):
        shutil.move(frames / vid, part / vid)
    index = get_protocol("dfew").index(tmp_path)
    assert len(index.entries) == 6 and not index.warnings
    assert {e.source for e in index.entries} >= {"clip_224x224_part_2/clip_224x224/00013"}


def test_dfew_refusals(tmp_path: Path) -> None:
    make_dfew(tmp_path, n_clips=6)
    shutil.rmtree(tmp_path / "Clip" / "clip_224x224")
    with pytest.raises(MaedferError, match="clip_224x224_16f is the 16-frame variant"):
        get_protocol("dfew").index(tmp_path)
    (tmp_path / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_3.csv").unlink()
    with pytest.raises(MaedferError, match=r"set_3\.csv missing in .*test\(single-labeled\)"):
        get_protocol("dfew").index(tmp_path, from_video=True)
    (tmp_path / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_3.csv").write_text(
        "video_name,label\n1,1\n4,nine\n"
    )
    with pytest.raises(MaedferError, match=r"set_3\.csv:3: '4,nine'; expected"):
        get_protocol("dfew").index(tmp_path, from_video=True)
    shutil.rmtree(tmp_path / "EmoLabel_DataSplit")
    with pytest.raises(MaedferError, match=r"expected EmoLabel_DataSplit/test\(single-labeled\)"):
        get_protocol("dfew").index(tmp_path)


def test_ferv39k_nested_crop_folder(tmp_path: Path) -> None:
    tree = make_ferv39k(tmp_path / "FERV39k")
    index = get_protocol("ferv39k").index(tmp_path)
    _check_against_tree(index, tree, "frames")
    assert index.num_folds == 0 and index.classes[0] == "Happy"
    e = index.entries[0]
    assert e.source == f"FERV39k/2_ClipsforFaceCrop-002/2_ClipsforFaceCrop/{e.clip_id}"
    video = get_protocol("ferv39k").index(tmp_path, from_video=True)
    _check_against_tree(video, tree, "video")


def test_ferv39k_split_and_label_checks(tmp_path: Path) -> None:
    make_ferv39k(tmp_path, n_clips=8)
    test_csv = tmp_path / "4_setups" / "All_scenes" / "test_All.csv"
    test_csv.write_text(test_csv.read_text() + "Action/Happy/9999 Joy\n")
    with pytest.raises(MaedferError, match=r"test_All\.csv:3: 'Action/Happy/9999 Joy'"):
        get_protocol("ferv39k").index(tmp_path)
    test_csv.write_text("Action/Happy/0007 Sad\r\n")  # clip 0; its word differs from its folder
    index = get_protocol("ferv39k").index(tmp_path)
    e = {x.clip_id: x for x in index.entries}
    assert e["Action/Happy/0007"].label == 1 and e["Action/Happy/0007"].split == "test"
    assert any("label word differs" in w for w in index.warnings)
    test_csv.unlink()
    with pytest.raises(MaedferError, match=r"test_All\.csv missing"):
        get_protocol("ferv39k").index(tmp_path)


def test_mafw_single_set_frames_and_clips(tmp_path: Path) -> None:
    tree = make_mafw(tmp_path / "MAFW", split_root="split")
    index = get_protocol("mafw").index(tmp_path)
    _check_against_tree(index, tree, "frames")
    assert index.entries[0].source == "MAFW/data/frames/00019"
    assert len(index.classes) == 11 and index.classes[10] == "disappointment"
    video = get_protocol("mafw").index(tmp_path, from_video=True)
    _check_against_tree(video, tree, "video")
    assert video.entries[0].source == "MAFW/data/clips/00019.mp4"


def test_mafw_refusals(tmp_path: Path) -> None:
    make_mafw(tmp_path, n_clips=6)
    (tmp_path / "Train & Test Set" / "single" / "no_caption" / "set_5" / "test.txt").unlink()
    with pytest.raises(MaedferError, match=r"set_5/test\.txt missing"):
        get_protocol("mafw").index(tmp_path)
    shutil.rmtree(tmp_path / "Train & Test Set" / "single")
    with pytest.raises(MaedferError, match="expected Train & Test Set/single/no_caption"):
        get_protocol("mafw").index(tmp_path)


def test_voxceleb2_dev_in_place(tmp_path: Path) -> None:
    tree = make_voxceleb2(tmp_path / "vox2")
    index = get_protocol("voxceleb2").index(tmp_path)
    _check_against_tree_vox = {e.clip_id: e for e in index.entries}
    assert set(_check_against_tree_vox) == set(tree.labels)
    e = _check_against_tree_vox["id00012/21Uxsk56VDQ/00001"]
    assert e.source == "vox2/dev/mp4/id00012/21Uxsk56VDQ/00001.mp4"
    assert e.subject == "12" and e.label == -1 and e.split == "pretrain" and e.fold is None
    assert {r[0] for r in index.protocol_rejects} == tree.excluded
    assert any("ignored vox2/test/mp4" in w for w in index.warnings)
    # --raw may point at dev/mp4 itself
    inner = get_protocol("voxceleb2").index(tmp_path / "vox2" / "dev" / "mp4")
    assert [x.clip_id for x in inner.entries] == sorted(tree.labels)
    assert inner.entries[0].source == "id00012/21Uxsk56VDQ/00001.mp4"


def test_voxceleb2_manifest_with_crop(tmp_path: Path) -> None:
    make_voxceleb2(tmp_path / "raw", test_set=False)
    index = get_protocol("voxceleb2").index(tmp_path / "raw")
    df = index.to_frame()
    df["crop"] = [crop_box(160)] * len(df)
    fps = write_manifest(
        df,
        tmp_path / "m.parquet",
        dataset="voxceleb2",
        protocol=index.protocol,
        classes=[],
        num_folds=0,
        raw_root=index.raw_root,
    )
    back, meta = read_manifest(tmp_path / "m.parquet")
    assert list(fps) == ["pretrain"] and meta["num_folds"] == 0 and meta["classes"] == []
    assert back["crop"].iloc[0] == (32, 0, 160, 160) and (back["label"] == -1).all()
    write_rejects_file(index.rejects, tmp_path / "rejects.parquet")
    assert read_rejects(tmp_path / "rejects.parquet")["reason"].str.startswith("protocol:").all()
    assert crop_box(192) == (16, 0, 192, 192)
    with pytest.raises(MaedferError, match="crop size 256"):
        crop_box(256)
