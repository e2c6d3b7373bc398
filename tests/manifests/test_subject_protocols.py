"""RAVDESS, CREMA-D, eNTERFACE05: keys, subjects, labels and fold rules (docs/datasets.md).

The full-size trees carry the complete name lists, so the manifests written from them must
reproduce every fingerprint published in docs/datasets.md; the miniatures check single rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from maedfer.errors import MaedferError
from maedfer.manifests import (
    PUBLISHED,
    RawIndex,
    detailed_fingerprints,
    get_protocol,
    read_manifest,
    write_manifest,
)
from tests.rawtrees import MAKERS, make_crema_d, make_enterface05, make_ravdess

FULL = {"ravdess": 1440, "crema-d": 7442, "enterface05": 1287}


def _manifest(index: RawIndex, path: Path):
    fps = write_manifest(
        index.to_frame(),
        path,
        dataset=index.dataset,
        protocol=index.protocol,
        classes=index.classes,
        num_folds=index.num_folds,
        raw_root=index.raw_root,
    )
    df, meta = read_manifest(path)
    return fps, df, meta


def _by_id(index: RawIndex) -> dict:
    return {e.clip_id: e for e in index.entries}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_tree_reproduces_published_fingerprints(name: str, tmp_path: Path) -> None:
    tree = MAKERS[name](tmp_path / "raw", size="full")
    index = get_protocol(name).index(tree.root)
    assert len(index.entries) == FULL[name]
    assert not [w for w in index.warnings if "missing" in w], index.warnings
    fps, df, meta = _manifest(index, tmp_path / "manifest.parquet")
    published = PUBLISHED[name]
    assert meta["fingerprints"] == {k: published[k] for k in fps} == fps
    assert detailed_fingerprints(df, num_folds=index.num_folds) == published
    assert {e.clip_id: e.label for e in index.entries} == tree.labels
    assert (df.groupby("subject")["fold"].nunique() == 1).all()  # subject-independent
    assert index.summary().startswith(f"{name}: {FULL[name]} clips (fold 1: ")


def test_ravdess_rules(tmp_path: Path) -> None:
    tree = make_ravdess(tmp_path / "RAVDESS", actors=[1, 4, 5, 17, 24])
    index = get_protocol("ravdess").index(tmp_path)  # one folder above: found by search
    e = _by_id(index)
    assert len(e) == 5 * 60
    assert e["02-01-06-01-02-01-17"].subject == "17" and e["02-01-06-01-02-01-17"].fold == 5
    assert (
        e["02-01-06-01-02-01-17"].label == 5 and e["02-01-06-01-02-01-17"].label_name == "fearful"
    )
    assert {x.fold for x in e.values() if x.subject in ("1", "4")} == {1}  # actors 1-4: fold 1
    assert {x.fold for x in e.values() if x.subject == "5"} == {2}
    assert {x.fold for x in e.values() if x.subject == "24"} == {6}
    assert all(x.source.endswith(x.clip_id + ".mp4") for x in e.values())  # the 02 file
    assert all(x.source.startswith("RAVDESS/Actor_") for x in e.values())
    reasons = {r[0]: r[2] for r in index.rejects}
    assert set(reasons) == tree.excluded  # full-AV copies and songs, nothing else
    assert all(r.startswith("protocol:") for r in reasons.values())
    assert "full-AV copy" in reasons["01-01-01-01-01-01-01"]
    assert "song" in reasons["02-02-01-01-01-01-01"]
    assert any("actors missing: 02, 03" in w for w in index.warnings)
    (tmp_path / "RAVDESS" / "Actor_01" / "02-01-01-01-01-01-01 (1).mp4").write_bytes(b"")
    again = get_protocol("ravdess").index(tmp_path)
    assert len(again.entries) == len(e)
    assert any("ignored 1 video(s)" in w and "(1).mp4" in w for w in again.warnings)


def test_ravdess_full_av_only_keeps_video_only_key(tmp_path: Path) -> None:
    make_ravdess(tmp_path, actors=[2], songs=False)
    for f in (tmp_path / "Actor_02").glob("02-*.mp4"):
        f.unlink()  # only the full-AV copies remain
    (tmp_path / "Actor_02" / "01-01-03-02-01-01-02.mp4").rename(
        tmp_path / "Actor_02" / "01-01-03-02-01-01-02.MP4"
    )
    index = get_protocol("ravdess").index(tmp_path)
    e = _by_id(index)
    assert len(e) == 60 and not index.rejects
    assert e["02-01-03-02-01-01-02"].source == "Actor_02/01-01-03-02-01-01-02.MP4"


def test_crema_d_rules(tmp_path: Path) -> None:
    make_crema_d(tmp_path, actors=[1001, 1018, 1019, 1036, 1037, 1072, 1073, 1091])
    index = get_protocol("crema-d").index(tmp_path)
    e = _by_id(index)
    folds = {x.subject: x.fold for x in e.values()}
    assert folds == {
        "1001": 1,
        "1018": 1,
        "1019": 2,
        "1036": 2,
        "1037": 3,
        "1072": 4,
        "1073": 5,
        "1091": 5,
    }
    assert e["1091_IEO_HAP_HI"].label == 3 and e["1091_IEO_HAP_HI"].label_name == "happy"
    assert e["1001_DFA_SAD_XX"].label == 5 and e["1001_DFA_ANG_XX"].label == 0
    assert e["1001_DFA_ANG_XX"].source == "VideoFlash/1001_DFA_ANG_XX.flv"
    assert "1019_ITH_ANG_XX" not in e  # never recorded: not reported missing
    assert not [w for w in index.warnings if "from present actors" in w]
    assert all(x.kind == "video" for x in e.values())


def test_crema_d_lfs_stubs(tmp_path: Path) -> None:
    def stub(path: Path, kind: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")

    make_crema_d(tmp_path / "a", actors=[1001], write=stub)
    with pytest.raises(MaedferError, match="git-LFS pointer stubs"):
        get_protocol("crema-d").index(tmp_path / "a")
    make_crema_d(tmp_path / "b", actors=[1001, 1002])
    stub(tmp_path / "b" / "VideoFlash" / "1002_DFA_ANG_XX.flv", "video")
    index = get_protocol("crema-d").index(tmp_path / "b")
    assert [r[0] for r in index.rejects] == ["1002_DFA_ANG_XX"]
    assert any("from present actors: 1002_DFA_ANG_XX" in w for w in index.warnings)


def test_enterface05_rules(tmp_path: Path) -> None:
    tree = make_enterface05(tmp_path / "outer", top="eNTERFACE05 database/project2")
    index = get_protocol("enterface05").index(tmp_path)
    e = _by_id(index)
    # subject 11's files are named s12_*: subject and fold come from the folder
    s11 = e["subject_11/anger/sentence_1/s12_an_1"]
    assert s11.subject == "11" and s11.fold == 2 and s11.label == 0
    assert (
        s11.source == "outer/eNTERFACE05 database/project2/subject 11/anger/sentence 1/s12_an_1.avi"
    )
    assert e["subject_12/anger/sentence_1/s12_an_1"].subject == "12"
    assert e["subject_16/surprise/sentence_3/s16_su_3avi"].label == 5
    assert e["subject_3/happiness/sentence_2/s_3_ha_2"].subject == "3"
    assert e["subject_2/anger/sentence_1/s2_an_2"].fold == 1  # swapped stems kept verbatim
    assert e["subject_23/happiness/sentence_4/s23_ha_4"].fold == 3
    assert sum(x.subject == "23" for x in e.values()) == 27
    assert set(e) == set(tree.labels)
    protocol = [r for r in index.rejects if r[2].startswith("protocol:")]
    assert {r[0] for r in protocol} == tree.excluded and len(protocol) == 6
    assert all("subject 6" in r[2] for r in protocol)


def test_enterface05_folder_variants(tmp_path: Path) -> None:
    """Case and separators of folder names vary between copies; keys stay MAE-DFER's."""
    src = tmp_path / "db" / "Subject_44" / "Sadness" / "Sentence_2"
    src.mkdir(parents=True)
    (src / "s44_sa_2.avi").write_bytes(b"")
    (tmp_path / "db" / "Subject_44" / "Sadness" / "notes.txt").write_text("x")
    (tmp_path / "db" / "Subject_44" / "Sadness" / "loose.avi").write_bytes(b"")
    index = get_protocol("enterface05").index(tmp_path)
    assert [e.clip_id for e in index.entries] == ["subject_44/sadness/sentence_2/s44_sa_2"]
    assert index.entries[0].fold == 5 and index.entries[0].label == 4
    assert [r[0] for r in index.rejects] == ["loose"]
    assert index.rejects[0][2].startswith("unexpected place")
