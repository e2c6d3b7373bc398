"""scripts/wheelhouse.sh and install-wheelhouse.sh: pack this environment's GPU-path packages,
unpack them into an empty folder, and run the DALI CPU equality tests from there (~1 min)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from maedfer.pipelines.loader import dali_available

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")

# Decodes a VP9 clip with DALI's CPU decoder, then lists the shared libraries it loaded.
DECODE_AND_LIST = """
import json, sys
import numpy as np
import nvidia.dali.fn as fn
from nvidia.dali import pipeline_def
data = np.fromfile(sys.argv[1], dtype=np.uint8)
@pipeline_def(batch_size=1, num_threads=1, device_id=None)
def pipe():
    return fn.decoders.video(fn.external_source(source=lambda: [data], batch=True),
                             device="cpu")
p = pipe()
frames = p.run()[0].as_array()
libs = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line})
print(json.dumps({"frames": list(frames.shape), "libs": libs}))
"""


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "wheelhouse.sh"),
            "--out",
            str(out),
            "--from-env",
            "--level",
            "0",
            "--part-size",
            "48",
            "--work",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}


def install(parts: list[Path], target: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "install-wheelhouse.sh"),
            *map(str, parts),
            "--target",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )


def test_wheelhouse_installs_and_dali_runs_from_it(
    wheelhouse: Path, tmp_path: Path, vp9_clip: Path
) -> None:
    (record_path,) = wheelhouse.glob("*.json")
    record = json.loads(record_path.read_text())
    parts = sorted(wheelhouse.glob("*.tar.xz.*"))
    assert len(parts) == len(record["parts"]) >= 2  # split
    assert all(p.stat().st_size <= 48 * 2**20 for p in parts)
    assert {
        "nvidia-dali-cuda130",
        "av",
        "facenet-pytorch",
        "timm",
        "astunparse",
        "gast",
        "optree",
    } <= set(record["packages"])
    assert not any(
        name.startswith(("nvidia-nvimgcodec", "nvidia-libnvcomp", "torch"))
        for name in record["packages"]
    )
    assert record["dropped_bytes"]["dali_include"] > 0

    site = tmp_path / "site"
    random.Random(0).shuffle(parts)  # any order
    done = install(parts, site)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        f"export PYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}}"
    )
    assert (site / "nvidia" / "__init__.py").read_text().startswith("__path__")
    assert not (site / "nvidia" / "dali" / "include").exists()
    here = f"cpython-{sys.version_info.major}{sys.version_info.minor}-"
    assert all(here in so.name for so in (site / "nvidia" / "dali").glob("*.cpython-*.so"))

    # the packages come from the unpacked folder, though this venv has them too
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import nvidia.dali, av, facenet_pytorch, timm, optree;"
            "print('\\n'.join(m.__file__ for m in "
            "(nvidia.dali, av, facenet_pytorch, timm, optree)))",
        ],
        capture_output=True,
        text=True,
        env=env_with(site),
        check=True,
    )
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout

    # DALI from there decodes without nvimgcodec or nvcomp (dropped: never loaded)
    listed = subprocess.run(
        [sys.executable, "-c", DECODE_AND_LIST, str(vp9_clip)],
        capture_output=True,
        text=True,
        env=env_with(site),
        check=True,
    )
    loaded = json.loads(listed.stdout.strip().splitlines()[-1])
    assert loaded["frames"][1:] == [24, 64, 64, 3]
    assert any(lib.startswith(str(site / "nvidia" / "dali")) for lib in loaded["libs"])
    assert not [lib for lib in loaded["libs"] if "nvimgcodec" in lib or "nvcomp" in lib]

    # the project's DALI CPU equality tests, run from the unpacked packages
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "tests/pipelines/test_dali.py",
            "-k",
            "cpu_matches_pyav or cpu_rand_augment",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env_with(site),
        timeout=600,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "7 passed" in tests.stdout, tests.stdout[-1000:]


def test_install_refuses_a_damaged_or_missing_part(wheelhouse: Path, tmp_path: Path) -> None:
    parts = sorted(wheelhouse.glob("*.tar.xz.*"))
    done = install(parts[1:], tmp_path / "a")
    assert done.returncode != 0 and f"missing part(s) {parts[0].name}" in done.stderr

    copies = tmp_path / "copies"
    copies.mkdir()
    for path in [*parts, *wheelhouse.glob("*.json")]:
        (copies / path.name).write_bytes(path.read_bytes())
    damaged = copies / parts[-1].name
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    done = install(sorted(copies.glob("*.tar.xz.*")), tmp_path / "b")
    assert done.returncode != 0
    assert f"{damaged} is damaged" in done.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def vp9_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.pipelines.media import marker_frames, write_clip

    return write_clip(tmp_path_factory.mktemp("clip") / "c.webm", marker_frames(24), codec="vp9")
