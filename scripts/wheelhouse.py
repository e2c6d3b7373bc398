"""Pack, and unpack, what maedfer needs on a GPU node that has no package registry.

``build`` stages the packages a node with its own torch lacks (the ``gpu`` extra, PyAV,
facenet-pytorch, timm, and DALI's import-time dependencies), either downloaded with pip for a
target Python and platform or copied from this environment (``--from-env``); drops the files
maedfer never loads; packs one tar.xz and splits it into parts of at most ``--part-size`` MiB,
with a ``.json`` beside them that holds the checksums. ``install`` verifies and joins the parts,
unpacks them into a folder, writes the ``nvidia`` namespace shim, checks the imports and prints
the ``PYTHONPATH`` line to use. Standard library only: the node's own Python runs ``install``.

    scripts/wheelhouse.sh --out DIR [--python 3.12] [--platform manylinux_2_28_x86_64]
                          [--from-env] [--part-size 56] [--with PKG,...] [--level 9]
    scripts/install-wheelhouse.sh PART... --target DIR

docs/cluster.md explains the procedure and gives the measured sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20

#: What a node that has torch (and the usual numpy, pillow, pyyaml, requests, pandas, pyarrow,
#: opencv) lacks for maedfer's GPU path. DALI's own requirements include more (nvimgcodec,
#: nvcomp, nvtx, makefun, libcst): maedfer never loads them — a DALI without them imports,
#: decodes video on the CPU and the GPU, and passes the project's DALI tests.
PACKAGES = (
    "nvidia-dali-cuda130",
    "av",
    "facenet-pytorch",
    "timm",
    "astunparse",
    "gast",
    "optree",
)  # the last three: `import nvidia.dali` needs them
#: Modules maedfer imports; ``install`` checks each with the resulting path and names the
#: missing ones (a node without pandas, say, needs ``--with pandas`` at build time).
IMPORTS = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "pandas": "pandas",
    "pyarrow": "pyarrow",
    "einops": "einops",
    "typer": "typer",
    "tqdm": "tqdm",
    "PIL": "pillow",
    "matplotlib": "matplotlib",
    "cv2": "opencv-python-headless",
    "yaml": "pyyaml",
    "timm": "timm",
    "av": "av",
    "facenet_pytorch": "facenet-pytorch",
    "nvidia.dali": "nvidia-dali-cuda130",
}
#: The namespace shim: DALI ships no ``nvidia/__init__.py``, and a regular ``nvidia`` package
#: elsewhere on the path (nvimgcodec, nvjpeg2k and nvtiff install one) would hide it.
#: What the wheelhouse never carries: the node's own torch, built for its CUDA.
NODE_OWN = ("torch", "torchvision")
SHIM = '__path__ = __import__("pkgutil").extend_path(__path__, __name__)\n'
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"


# --- build ----------------------------------------------------------------------------------------


def pins(path: Path = REPO / "constraints.txt") -> dict[str, str]:
    """``name -> version`` of the tested set (``==`` and ``===`` pins)."""
    out = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*===?\s*([^\s;#]+)", line)
        if match:
            out[normalise(match.group(1))] = match.group(2)
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(name: str, tested: dict[str, str]) -> str:
    """``name==version``: constraints.txt's pin, else the version installed here (tested with
    this environment), else the name alone."""
    version = tested.get(normalise(name))
    if version is None:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            return name
    return f"{name}=={version}"


def platform_tags(platform: str) -> list[str]:
    """``manylinux_2_28_x86_64`` and every older manylinux tag it runs (pip matches exactly)."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for minor, name in legacy.items() if minor <= glibc]


def cpython_tag(python: str) -> str:
    major, minor = python.split(".")[:2]
    return f"{major}{minor}"


def stage_download(stage: Path, names: list[str], python: str, platform: str | None) -> None:
    """pip installs the wheels, for the target Python and platform, without dependencies."""
    tested = pins()
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-compile",
        "--only-binary=:all:",
        "--target",
        str(stage),
    ]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python != here or platform is not None:
        tag = cpython_tag(python)
        cmd += [
            "--python-version",
            python,
            "--implementation",
            "cp",
            "--abi",
            f"cp{tag}",
            "--abi",
            "abi3",
            "--abi",
            "none",
        ]
        for tag_ in platform_tags(platform or DEFAULT_PLATFORM):
            cmd += ["--platform", tag_]
    cmd += [requirement(name, tested) for name in names]
    print("wheelhouse: " + " ".join(cmd[3:]), file=sys.stderr)
    subprocess.run(cmd, check=True)


def stage_from_env(stage: Path, names: list[str]) -> None:
    """Copies each installed distribution's files (its RECORD) from this environment."""
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"wheelhouse: {name} is not installed here (--from-env packs "
                "what this environment has)"
            ) from None
        for file in dist.files or []:
            parts = Path(file).parts
            if ".." in parts or "__pycache__" in parts:  # console scripts; caches
                continue
            source = Path(dist.locate_file(file))
            if source.is_file():
                target = stage / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)


def strip(stage: Path, python: str) -> dict[str, int]:
    """Drops what maedfer never loads; returns the bytes dropped per rule."""
    tag = cpython_tag(python)
    dropped = {"dali_include": 0, "other_pythons": 0, "caches_and_scripts": 0}

    def remove(path: Path, rule: str) -> None:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        dropped[rule] += sum(p.stat().st_size for p in files)
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    if (stage / "nvidia" / "dali" / "include").exists():
        remove(stage / "nvidia" / "dali" / "include", "dali_include")
    for path in sorted(stage.rglob("*.cpython-*.so")):
        match = re.search(r"\.cpython-(\d+)(t?)-", path.name)
        if match and (match.group(1) != tag or match.group(2)):
            remove(path, "other_pythons")
    for path in [stage / "bin", *stage.rglob("__pycache__")]:
        if path.exists():
            remove(path, "caches_and_scripts")
    return dropped


def tar_members(stage: Path) -> Iterator[tuple[tarfile.TarInfo, Path | None]]:
    """Sorted entries with fixed owner and time: the same staged files give the same tar."""
    for path in sorted(stage.rglob("*")):
        info = tarfile.TarInfo(path.relative_to(stage).as_posix())
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        if path.is_dir():
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            yield info, None
        else:
            info.size, info.mode = path.stat().st_size, 0o755 if os.access(path, os.X_OK) else 0o644
            yield info, path


class PartWriter(io.RawIOBase):
    """A write-only stream cut into numbered files of at most ``limit`` bytes, hashed."""

    def __init__(self, stem: Path, limit: int) -> None:
        self.stem, self.limit = stem, limit
        self.parts: list[dict] = []
        self.total = hashlib.sha256()
        self._file = None

    def writable(self) -> bool:
        return True

    def _next(self) -> None:
        self._close_part()
        path = self.stem.with_name(f"{self.stem.name}.{len(self.parts) + 1:03d}")
        self._file, self._hash, self._size = path.open("wb"), hashlib.sha256(), 0
        self.parts.append({"file": path.name})

    def _close_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts[-1].update(bytes=self._size, sha256=self._hash.hexdigest())
            self._file = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._file is None or self._size == self.limit:
                self._next()
            chunk = view[: self.limit - self._size]
            self._file.write(chunk)
            self._hash.update(chunk)
            self.total.update(chunk)
            self._size += len(chunk)
            view = view[len(chunk) :]
        return len(data)

    def close(self) -> None:
        self._close_part()
        super().close()


def pack(stage: Path, stem: Path, *, part_size: int, level: int) -> tuple[list[dict], str, int]:
    """tar | xz (every core) | parts; returns the parts, the archive's sha256 and tar bytes."""
    writer = PartWriter(stem, part_size)
    xz = shutil.which("xz")
    tar_bytes = 0
    if xz:  # the xz tool compresses on every core; Python's lzma on one
        proc = subprocess.Popen(
            [xz, f"-{level}", "-T0", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

        def drain() -> None:
            for chunk in iter(lambda: proc.stdout.read(MIB), b""):
                writer.write(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        sink = proc.stdin
    else:
        sink = lzma.LZMAFile(writer, "wb", preset=level)
    counter = _Counting(sink)
    with tarfile.open(fileobj=counter, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, path in tar_members(stage):
            if path is None:
                tar.addfile(info)
            else:
                with path.open("rb") as f:
                    tar.addfile(info, f)
    tar_bytes = counter.count
    if xz:
        proc.stdin.close()
        reader.join()
        if proc.wait():
            raise SystemExit(f"wheelhouse: xz failed (exit {proc.returncode})")
    else:
        sink.close()
    writer.close()
    return writer.parts, writer.total.hexdigest(), tar_bytes


class _Counting:
    def __init__(self, sink) -> None:  # noqa: ANN001 (a binary stream)
        self.sink, self.count = sink, 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self.sink.write(data)


def versions(stage: Path) -> dict[str, str]:
    found = {}
    for info in stage.glob("*.dist-info/METADATA"):
        text = info.read_text(errors="replace")
        name = re.search(r"^Name: (.+)$", text, re.M)
        version = re.search(r"^Version: (.+)$", text, re.M)
        if name and version:
            found[name.group(1).strip()] = version.group(1).strip()
    return dict(sorted(found.items()))


def build(args: argparse.Namespace) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = args.python or here
    if args.from_env and (python != here or args.platform):
        raise SystemExit(
            f"wheelhouse: --from-env packs this environment (Python {here}, "
            f"{sysconfig.get_platform()}); drop --python/--platform or download"
        )
    without = {normalise(n) for n in (args.without or "").split(",") if n}
    names = [
        n
        for n in list(PACKAGES) + [n for n in (args.with_ or "").split(",") if n]
        if normalise(n) not in without
    ]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    platform = args.platform or (
        sysconfig.get_platform().replace("-", "_").replace(".", "_")
        if python == here and not args.platform
        else DEFAULT_PLATFORM
    )
    name = f"maedfer-wheelhouse-cp{cpython_tag(python)}-{platform}"
    stale = [p for p in out.glob(f"{name}.*") if p.is_file()]
    for path in stale:  # a previous build of the same name: its parts would mix with ours
        path.unlink()
    with tempfile.TemporaryDirectory(prefix="maedfer-wheelhouse-", dir=args.work) as work:
        stage = Path(work) / "site"
        stage.mkdir()
        if args.from_env:
            stage_from_env(stage, names)
        else:
            stage_download(
                stage,
                names,
                python,
                args.platform or (None if python == here else DEFAULT_PLATFORM),
            )
        dropped = strip(stage, python)
        staged = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
        print(
            f"wheelhouse: {staged / MIB:.1f} MiB staged ({sum(dropped.values()) / MIB:.1f} "
            f"MiB dropped); compressing (xz -{args.level})",
            file=sys.stderr,
        )
        parts, digest, tar_bytes = pack(
            stage, out / f"{name}.tar.xz", part_size=int(args.part_size * MIB), level=args.level
        )
        record = {
            "name": name,
            "python": python,
            "platform": platform,
            "source": "this environment" if args.from_env else "downloaded with pip",
            "packages": versions(stage),
            "sha256": digest,
            "bytes": sum(p["bytes"] for p in parts),
            "tar_bytes": tar_bytes,
            "staged_bytes": staged,
            "dropped_bytes": dropped,
            "xz_level": args.level,
            "part_size_mib": args.part_size,
            "parts": parts,
        }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wheelhouse: {out / name}.json and {len(parts)} part(s):")
    for part in parts:
        print(f"  {out / part['file']}  {part['bytes'] / MIB:.1f} MiB")
    print(
        f"  total {record['bytes'] / MIB:.1f} MiB (unpacked {tar_bytes / MIB:.1f} MiB); "
        f"keep {name}.json beside part 1"
    )


# --- install --------------------------------------------------------------------------------------


class PartReader(io.RawIOBase):
    """The parts, in order, as one stream, hashed as it is read."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.index, self.total = paths, -1, hashlib.sha256()
        self._file = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 (a writable buffer)
        while True:
            if self._file is None:
                self.index += 1
                if self.index == len(self.paths):
                    return 0
                self._file = self.paths[self.index].open("rb")
            n = self._file.readinto(buffer)
            if n:
                self.total.update(memoryview(buffer)[:n])
                return n
            self._file.close()
            self._file = None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_record(parts: list[Path]) -> tuple[Path, dict]:
    """The ``.json`` beside any of the parts (``NAME.tar.xz.001`` -> ``NAME.json``)."""
    for part in parts:
        stem = re.sub(r"\.tar\.xz\.\d{3}$", "", part.name)
        candidate = part.with_name(f"{stem}.json")
        if candidate.is_file():
            return candidate, json.loads(candidate.read_text())
    raise SystemExit(
        "install-wheelhouse: no record (NAME.json) beside the parts given: it is "
        "written by wheelhouse.sh next to them; copy it with part 1"
    )


def order_parts(parts: list[Path], record: dict) -> list[tuple[Path, dict]]:
    by_name = {p.name: p for p in parts}
    missing = [r["file"] for r in record["parts"] if r["file"] not in by_name]
    if missing:
        raise SystemExit(
            f"install-wheelhouse: missing part(s) {', '.join(missing)} of "
            f"{record['name']} ({len(record['parts'])} in all)"
        )
    ordered = []
    for entry in record["parts"]:
        path = by_name[entry["file"]]
        if path.stat().st_size != entry["bytes"]:
            raise SystemExit(
                f"install-wheelhouse: {path} has {path.stat().st_size} bytes, the "
                f"record says {entry['bytes']}: copy it again"
            )
        if sha256_of(path) != entry["sha256"]:  # before unpacking anything
            raise SystemExit(
                f"install-wheelhouse: {path} is damaged (its sha256 differs "
                "from the record): copy it again"
            )
        ordered.append((path, entry))
    return ordered


def unpack(ordered: list[tuple[Path, dict]], record: dict, target: Path) -> None:
    reader = PartReader([path for path, _ in ordered])
    stream = lzma.LZMAFile(io.BufferedReader(reader, 4 * MIB))
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")  # no links out, no absolute paths
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(target)
    if reader.total.hexdigest() != record["sha256"]:
        raise SystemExit(
            "install-wheelhouse: the joined archive's sha256 differs from the "
            "record: copy the parts again"
        )


def missing_imports(target: Path) -> dict[str, list]:
    """Modules maedfer imports that this Python cannot import with ``target`` first on the path:
    ``module -> [the error, the missing module's name or None]``."""
    code = (
        "import importlib, json, sys\nbad = {}\nfor m in sys.argv[1:]:\n"
        "    try:\n        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        bad[m] = [f'{type(e).__name__}: {e}'[:200], getattr(e, 'name', None)]\n"
        "print(json.dumps(bad))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, *IMPORTS], capture_output=True, text=True, env=env, check=False
    )
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"(import check)": [done.stderr.strip()[-300:], None]}


def install(args: argparse.Namespace) -> None:
    parts = [Path(p) for p in args.parts]
    for part in parts:
        if not part.is_file():
            raise SystemExit(f"install-wheelhouse: {part} does not exist")
    where, record = find_record(parts)
    ordered = order_parts(parts, record)
    target = args.target.resolve()
    if target.exists() and any(target.iterdir()) and not args.force:
        raise SystemExit(f"install-wheelhouse: {target} is not empty (--force unpacks over it)")
    target.mkdir(parents=True, exist_ok=True)
    print(
        f"install-wheelhouse: {record['name']} ({len(ordered)} part(s), checked against "
        f"{where.name}) -> {target}",
        file=sys.stderr,
    )
    unpack(ordered, record, target)
    if (target / "nvidia").is_dir() and not (target / "nvidia" / "__init__.py").exists():
        (target / "nvidia" / "__init__.py").write_text(SHIM)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if record["python"] != here:
        print(
            f"install-wheelhouse: warning: built for Python {record['python']}, this is {here}",
            file=sys.stderr,
        )
    bad = missing_imports(target)
    for module, (why, _) in bad.items():
        print(f"install-wheelhouse: cannot import {module}: {why}", file=sys.stderr)
    if bad:
        absent = {name.split(".")[0] for _, name in bad.values() if name}
        lacking = sorted({IMPORTS.get(m, m) for m in absent} - set(NODE_OWN))
        print(
            "install-wheelhouse: where the node lacks a package, build the wheelhouse "
            f"again with --with {','.join(lacking) or '...'} (torch and torchvision are the "
            "node's own)",
            file=sys.stderr,
        )
    print(f"export PYTHONPATH={target}${{PYTHONPATH:+:$PYTHONPATH}}")


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="stage, strip, pack and split")
    b.add_argument("--out", type=Path, required=True, help="folder for the parts and the record")
    b.add_argument("--python", default=None, help="target Python, e.g. 3.12 (default: this one)")
    b.add_argument(
        "--platform",
        default=None,
        help=f"target platform tag (default: this machine's; {DEFAULT_PLATFORM} "
        "when --python differs)",
    )
    b.add_argument(
        "--from-env",
        action="store_true",
        help="copy the packages installed here instead of downloading them",
    )
    b.add_argument("--part-size", type=float, default=56.0, help="MiB per part (default 56)")
    b.add_argument(
        "--with",
        dest="with_",
        default="",
        help="more packages, comma-separated (e.g. pandas,einops for a bare node)",
    )
    b.add_argument(
        "--without",
        default="",
        help="packages to leave out, comma-separated (e.g. nvidia-dali-cuda130,"
        "astunparse,gast,optree where the node has no libnvcuvid)",
    )
    b.add_argument(
        "--level",
        type=int,
        default=9,
        choices=range(10),
        help="xz preset (default 9; 0 is fast and larger)",
    )
    b.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    i = commands.add_parser("install", help="verify, join and unpack the parts")
    i.add_argument("parts", nargs="+", help="the part files (.tar.xz.001 ...), any order")
    i.add_argument("--target", type=Path, required=True, help="folder to unpack into")
    i.add_argument("--force", action="store_true", help="unpack into a non-empty folder")
    args = parser.parse_args(list(argv) if argv is not None else None)
    build(args) if args.command == "build" else install(args)


if __name__ == "__main__":
    main()
