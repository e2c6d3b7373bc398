"""What the bench scripts share: the system record, quartiles, portrait clips.

Imports only numpy and the standard library at module level (PIL on use), so a script that runs
where PyAV, DALI or git are missing (a GPU node without a package registry) can still use it.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata as metadata
import os
import platform
import statistics
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PORTRAITS = REPO / "maedfer" / "assets" / "portraits"


def quartiles(xs: list[float]) -> dict[str, float]:
    """Median and p25/p75 (all three the single value when there is one)."""
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "p25": q[0], "p75": q[2]}


def commit() -> str:
    """This checkout's commit: ``git rev-parse``, else ``$MAEDFER_COMMIT`` (a copy of the tree
    without .git or without git), else ``unknown``."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
            timeout=10,
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("MAEDFER_COMMIT", "unknown")


def version(distribution: str) -> str | None:
    """The installed version of a distribution, ``None`` when absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system() -> dict[str, str | None]:
    """Date, commit, machine and the versions that matter for a figure."""
    info: dict[str, str | None] = {
        "date": dt.date.today().isoformat(),
        "commit": commit(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
        "load_avg_1min": f"{os.getloadavg()[0]:.2f}",
    }
    for name, dist in (
        ("torch", "torch"),
        ("pyav", "av"),
        ("dali", "nvidia-dali-cuda130"),
        ("timm", "timm"),
    ):
        info[name] = version(dist)
    try:
        torch = importlib.import_module("torch")
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    except ImportError:
        info["gpu"] = None
    return info


def portrait_frames(image: Path, count: int, size: int = 160) -> np.ndarray:
    """A slow pan and zoom over a portrait: ``(count, size, size, 3)`` uint8."""
    from PIL import Image

    picture = np.asarray(Image.open(image).convert("RGB").resize((2 * size, 2 * size)))
    frames = []
    for t in range(count):
        side = int(size * (1.5 - 0.3 * t / count))
        x0 = int((2 * size - side) * (0.3 + 0.4 * t / count))
        crop = picture[size // 4 : size // 4 + side, x0 : x0 + side]
        frames.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)))
    return np.stack(frames)


def portraits() -> list[Path]:
    return sorted(p for p in PORTRAITS.iterdir() if p.suffix in (".png", ".jpg"))
