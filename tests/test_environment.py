"""The environment under test runs this clone's maedfer, and setup-venv.sh keeps clones apart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WHERE = "import maedfer; print(maedfer.__file__)"


def _env() -> dict[str, str]:
    """The environment without the variables that would make a python see another maedfer; the
    running interpreter keys setup-venv.sh's cache (as its default python3 does on CI)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"PYTHON": sys.executable}


def _run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


def test_this_process_imports_maedfer_from_the_repository() -> None:
    import maedfer

    assert Path(maedfer.__file__).resolve() == REPO / "maedfer" / "__init__.py"


def test_the_interpreter_resolves_maedfer_to_the_repository_from_anywhere(tmp_path: Path) -> None:
    # From another folder, so that neither the current folder nor pytest's rootdir stands in for
    # the installation.
    done = _run([sys.executable, "-c", WHERE], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == REPO / "maedfer" / "__init__.py"


def test_the_console_script_runs_this_interpreter() -> None:
    script = Path(sys.executable).parent / "maedfer"
    if not script.is_file():
        pytest.skip(f"no maedfer console script beside {sys.executable}")
    first = script.read_text().splitlines()[0]
    assert first.startswith("#!")
    assert Path(first[2:].strip()).parent == Path(sys.executable).parent


def _copy_clone(dst: Path) -> None:
    """This working tree's files (tracked and untracked, uncommitted edits included), as a clone."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("the repository under test is not a git working tree")
    for name in filter(None, listed.stdout.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def test_setup_makes_a_per_clone_venv_on_the_cached_dependencies(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    _copy_clone(clone)
    setup = ["bash", clone / "scripts" / "setup-venv.sh"]
    cached = Path(_run([*setup, "--print-cache"], cwd=tmp_path).stdout.strip())
    if not (cached / ".complete").is_file():
        pytest.skip(f"no cached dependency venv at {cached} (scripts/setup-venv.sh builds it)")

    def setup_run() -> subprocess.CompletedProcess[str]:
        done = _run(setup, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done

    # A .venv of someone else's: left alone.
    (clone / ".venv").mkdir()
    refused = _run(setup, cwd=tmp_path)
    assert refused.returncode != 0 and "not made by this script" in refused.stderr
    (clone / ".venv").rmdir()

    # The old layout's link to the shared venv: replaced by a folder, its target untouched.
    shared = tmp_path / "old-shared-venv"
    shared.mkdir()
    (shared / "keep").touch()
    (clone / ".venv").symlink_to(shared)
    assert "making ./.venv" in setup_run().stderr
    venv = clone / ".venv"
    assert venv.is_dir() and not venv.is_symlink()
    assert (shared / "keep").is_file()

    python = venv / "bin" / "python"
    done = _run([python, "-c", WHERE], cwd=tmp_path)
    assert Path(done.stdout.strip()) == clone / "maedfer" / "__init__.py", done.stderr
    assert (venv / "bin" / "maedfer").read_text().startswith(f"#!{python}\n")
    assert _run([venv / "bin" / "maedfer", "--help"], cwd=tmp_path).returncode == 0
    assert _run([python, "-m", "pytest", "--version"], cwd=tmp_path).returncode == 0
    # The cache holds the dependencies only, and this interpreter still runs this repository.
    assert not list((cached / "lib").glob("python*/site-packages/*maedfer*"))
    done = _run([sys.executable, "-c", WHERE], cwd=tmp_path)
    assert Path(done.stdout.strip()).resolve() == REPO / "maedfer" / "__init__.py"

    assert "reusing ./.venv" in setup_run().stderr

    # A .venv made for another cache key is made again.
    stamp = venv / "maedfer-setup"
    stamp.write_text(stamp.read_text().replace(cached.name, "0" * 16))
    assert "making ./.venv" in setup_run().stderr
    assert cached.name in stamp.read_text()
