"""``maedfer prepare``: the resumable driver (docs/design.md).

It only loops, keeps state and shows progress; the work per clip is `maedfer.preprocess.clip`.

- **Resumable**: each finished clip (written or rejected) is appended as one JSON line to
  ``<out>/.prepare/<tag>.jsonl`` after its file was renamed into place, so a re-run after a kill
  skips it; clip files are written under a temporary name and renamed (`encode.write_clip`), and
  stale temporary files of a killed run are removed. The manifest and rejects are written
  atomically at the end, from the journal, sorted by key: a killed-and-resumed run gives the
  same manifest as an uninterrupted one.
- **Judged files only**: a reject is tied to the source it judged (its ``stamp``: size and
  mtime); a source that changed since is prepared again, and ``--retry-rejects`` re-judges
  every reject. An environmental failure (full disk, permission, I/O error, a worker killed)
  is no verdict: it is retried once at the end of the run, and if it persists the run ends
  non-zero naming the clips, writes no manifest, and a plain re-run retries them.
- **Parallel**: ``--workers N`` processes (from a fork server), one `FaceAligner` each, each
  on a lifeline to the main process (`maedfer.lifeline`: killed in any way, it leaves no
  worker, fork server or resource tracker behind); a
  single process decodes the next clip in a thread while it aligns the current one. Every
  clip's result depends on the clip alone, so any worker count gives the same bytes.
- **Shards**: ``--shard i/N`` prepares the i-th of N shards balanced by work, and writes
  ``manifest.shard-i-of-N.parquet``; ``--merge`` combines all N into ``manifest.parquet``, the
  same rows as an unsharded run -- a cluster array job over VoxCeleb2's 1.09M clips.
  ``--shard auto`` takes i and N from a Slurm array task (``SLURM_ARRAY_TASK_ID`` minus
  ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``), so ``--array=0-7`` and ``--array=1-8``
  both work. The work of a clip is its source's size in bytes (a frame folder: its images'),
  a proxy for its length: clips are dealt longest first, each to the shard with the least work
  so far (greedy longest-processing-time, ties by key and lowest shard), so every shard's set is
  a function of the index and the file sizes alone, the same in every task of the array.
"""

from __future__ import annotations

import heapq
import json
import logging
import multiprocessing as mp
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from maedfer import lifeline
from maedfer.atomic import remove_stale
from maedfer.devices import resolve_device
from maedfer.errors import MaedferError
from maedfer.lifeline import die_with
from maedfer.lock import hold
from maedfer.manifests import (
    MANIFEST_COLUMNS,
    ClipEntry,
    RawIndex,
    format_fingerprints,
    get_dataset,
    read_manifest,
    read_rejects,
    write_manifest,
    write_rejects,
)
from maedfer.preprocess import MIN_FACE_RATIO, MIN_FRAMES
from maedfer.preprocess.clip import (
    ClipResult,
    LoadedClip,
    PrepareOptions,
    finish_clip,
    load_clip,
    planned_path,
    source_stamp,
)
from maedfer.preprocess.encode import PARTIAL_MARK
from maedfer.preprocess.options import PrepareConfig
from maedfer.quiet import quiet_library_warnings

logger = logging.getLogger(__name__)

STATE_DIR = ".prepare"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_SHARD_FILE = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.parquet$")


_SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")


def slurm_shard(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(i, N) of this Slurm array task: ``--array=0-7`` and ``--array=1-8`` both give 1..8.

    i = (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1 (step 1 if
    unset), N = SLURM_ARRAY_TASK_COUNT.

    Raises:
        MaedferError: the variables are absent (not an array task) or the array is not one
            range (``--array=1,4,9``).
    """
    env = dict(os.environ if env is None else env)
    missing = [k for k in _SLURM if not env.get(k, "").strip()]
    if missing:
        raise MaedferError(
            f"--shard auto: {', '.join(missing)} not set; run it as a Slurm array task "
            "(sbatch --array=1-N) or give --shard i/N"
        )
    try:
        task, low, count = (int(env[k]) for k in _SLURM)
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
    except ValueError:
        values = ", ".join(f"{k}={env[k]!r}" for k in _SLURM)
        raise MaedferError(
            f"--shard auto: Slurm array variables are not integers ({values})"
        ) from None
    offset, rest = divmod(task - low, max(step, 1))
    if rest or not 0 <= offset < count:
        raise MaedferError(
            f"--shard auto: task {task} of an array from {low} in steps of {step} with {count} "
            "tasks is not one of 1..N; use one range, e.g. --array=1-N or --array=0-(N-1)"
        )
    return offset + 1, count


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> (i, N) with 1 <= i <= N; ``"auto"``: the Slurm array task's; None: None."""
    if shard is None:
        return None
    if shard.strip().lower() == "auto":
        return slurm_shard()
    m = _SHARD.match(shard)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise MaedferError(f"--shard {shard!r} must be i/N with 1 <= i <= N (e.g. 3/8), or auto")
    return int(m[1]), int(m[2])


def source_work(path: Path) -> int:
    """A clip's work for sharding: its file's size in bytes, a frame folder's images' total;
    0 where unreadable (it will be a reject, which costs little)."""
    try:
        if path.is_dir():
            with os.scandir(path) as it:
                return sum(e.stat().st_size for e in it if e.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def entry_work(entries: list[ClipEntry], raw_root: Path, threads: int = 16) -> list[int]:
    """``source_work`` of every entry, in order (stat calls in threads: network file systems)."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stat") as pool:
        return list(pool.map(source_work, (raw_root / e.source for e in entries), chunksize=256))


def shard_entries(
    entries: list[ClipEntry], shard: tuple[int, int] | None, work: list[int] | None = None
) -> list[ClipEntry]:
    """The entries of shard (i, N), balanced by ``work`` (one number per entry; None: 1 each).

    Greedy longest-processing-time: entries by decreasing work (then key), each to the shard
    with the least work so far (then the lowest number). With equal work it is round robin:
    entry k goes to shard k mod N + 1. Worked example, work [5, 4, 3, 3, 1] of keys a..e into
    2 shards: a -> 1 (5), b -> 2 (4), c -> 2 (7), d -> 1 (8), e -> 2 (8). The shard's entries
    come back in index order.
    """
    if shard is None:
        return entries
    i, n = shard
    work = [1] * len(entries) if work is None else work
    order = sorted(range(len(entries)), key=lambda j: (-work[j], entries[j].clip_id))
    loads = [(0, s) for s in range(n)]
    mine = []
    for j in order:
        load, s = heapq.heappop(loads)
        if s == i - 1:
            mine.append(j)
        heapq.heappush(loads, (load + work[j], s))
    return [entries[j] for j in sorted(mine)]


def output_names(shard: tuple[int, int] | None) -> tuple[str, str, str]:
    """(manifest, rejects, journal tag) file names for a run or one shard."""
    if shard is None:
        return "manifest.parquet", "rejects.parquet", "all"
    tag = f"shard-{shard[0]}-of-{shard[1]}"
    return f"manifest.{tag}.parquet", f"rejects.{tag}.parquet", tag


class Journal:
    """Append-only record of finished clips, one JSON object per line (the resume state).

    The first line holds the options that decide the output; resuming with different ones is
    refused rather than mixing two preparations in one folder.
    """

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.results: dict[str, ClipResult] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        header = None
        if path.exists():
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the torn last line of a killed run
                    if "config" in record:
                        header = header or record["config"]
                    elif "clip_id" in record:
                        self.results[record["clip_id"]] = ClipResult.from_json(record)
        if header is not None:
            for key, value in config.items():  # a key the journal predates: it had the default
                if key in header and header[key] != value:
                    raise MaedferError(
                        f"{path.parent.parent} holds a preparation with {key}={header.get(key)!r}"
                        f"; this run has {key}={value!r}: use another --out, or the same options "
                        "to resume"
                    )
        self._fh = path.open("a", encoding="utf-8")
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self._fh.write("\n")  # end a torn line so the next record starts clean
        if header is None:
            self._write({"config": config})

    def _write(self, record: dict) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def add(self, result: ClipResult) -> None:
        """Record a verdict; an environmental failure is not one and is never recorded."""
        if result.failed:
            return
        self.results[result.clip_id] = result
        self._write(result.to_json())

    def close(self) -> None:
        self._fh.close()


# --------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _init_worker(
    options: PrepareOptions, aligner_kwargs: dict, threads: int | None, main_pid: int | None = None
) -> None:
    """Per process: a lifeline on the main process (`maedfer.lifeline`: a worker never
    outlives it), options, thread limits, and a FaceAligner made on first need."""
    if main_pid is not None:
        die_with(main_pid)
    quiet_library_warnings()
    if threads is not None:
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    _WORKER.clear()
    _WORKER.update(options=options, aligner_kwargs=aligner_kwargs, aligner=None)


def _work(entry: ClipEntry) -> ClipResult:
    return _finish(load_clip(entry, _WORKER["options"]))


def _prefetched(todo: list[ClipEntry], options: PrepareOptions) -> Iterator[ClipResult]:
    """One process: decode clip i+1 in a thread while clip i is aligned and encoded.

    FFmpeg decodes without holding the GIL, so on two cores the decode of the next clip costs
    almost nothing next to the alignment of this one.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending = pool.submit(load_clip, todo[0], options) if todo else None
        for i in range(len(todo)):
            loaded = pending.result()
            pending = pool.submit(load_clip, todo[i + 1], options) if i + 1 < len(todo) else None
            yield _finish(loaded)


def _finish(loaded: LoadedClip) -> ClipResult:
    options: PrepareOptions = _WORKER["options"]
    if loaded.align and _WORKER["aligner"] is None:
        from maedfer.preprocess.faces import FaceAligner

        _WORKER["aligner"] = FaceAligner(**_WORKER["aligner_kwargs"])
    return finish_clip(loaded, options, _WORKER["aligner"])


def _remove_partials(out: Path, todo: list[ClipEntry], options: PrepareOptions) -> int:
    """Delete temporary files a killed run left for clips this run will (re)write.

    Only those of this run's clips: other shards may be writing into the same folders.
    """
    finals: dict[Path, set[str]] = {}
    for e in todo:
        final = out / planned_path(e, options)
        finals.setdefault(final.parent, set()).add(final.name)
    removed = 0
    for folder, names in sorted(finals.items()):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if PARTIAL_MARK in p.name and p.name.split(PARTIAL_MARK)[0] in names:
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def _pool_context() -> mp.context.BaseContext:
    """A fork server where there is one (Linux): torch is imported once, workers fork from it.

    Spawned workers would each import torch and torchvision first (5-10 s apiece on a busy
    2-core machine); forking this process instead is unsafe once OpenCV's or FFmpeg's thread
    pools exist in it (the children hang on their locks), and CUDA does not survive a fork.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # maedfer.lifeline first: the server holds a lifeline on this process (ENV) from its start
    os.environ[lifeline.ENV] = str(os.getpid())
    ctx.set_forkserver_preload(
        ["maedfer.lifeline", "maedfer.preprocess.driver", "maedfer.preprocess.faces"]
    )
    return ctx


def _start_pool_server() -> None:
    """Start the workers' fork server now, in a thread: its imports (torch, seconds) overlap
    the indexing of the raw tree and the journal's reading instead of delaying the first clip
    (the pool waits for it on the fork server's own lock)."""
    if "forkserver" not in mp.get_all_start_methods():
        return
    from multiprocessing import forkserver

    _pool_context()
    threading.Thread(target=forkserver.ensure_running, name="forkserver-start", daemon=True).start()


# A worker that dies (killed, out of memory) takes the clips it held with it: they are tried
# again in a new pool, and after this many deaths with a clip in hand it counts as a failure.
MAX_WORKER_DEATHS = 2


def _process(
    todo: list[ClipEntry], journal: Journal, options, aligner_kwargs, workers, done
) -> list[ClipResult]:
    """Prepare `todo`; the environmental failures that remain after one retry each."""
    with lifeline.terminate_as_interrupt():
        return _process_all(todo, journal, options, aligner_kwargs, workers, done)


def _process_all(
    todo: list[ClipEntry], journal: Journal, options, aligner_kwargs, workers, done
) -> list[ClipResult]:
    bar = tqdm(
        total=len(todo) + done,
        initial=done,
        unit="clip",
        desc=f"prepare {options.dataset}",
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.05,
    )
    counts = Counter()
    failures: dict[str, ClipResult] = {}

    def record(result: ClipResult) -> None:
        journal.add(result)
        if result.failed:
            failures[result.clip_id] = result
        else:
            counts["rejected"] += not result.ok
            bar.update()
        bar.set_postfix(rejected=counts["rejected"], failed=len(failures), refresh=False)

    try:
        for attempt in (1, 2):
            if attempt == 2:
                retry = [e for e in todo if e.clip_id in failures]
                if not retry:
                    break
                logger.warning(
                    "retrying %d clip(s) that failed for environmental reasons", len(retry)
                )
                failures.clear()
                todo = retry
            if workers <= 1:
                _init_worker(options, aligner_kwargs, None)
                for result in _prefetched(todo, options):
                    record(result)
            else:
                _in_pool(todo, options, aligner_kwargs, workers, record)
    finally:
        bar.close()
    return list(failures.values())


def _in_pool(todo, options, aligner_kwargs, workers, record, work=None) -> None:
    """Run `todo` on `workers` processes, at most two clips in flight per worker; `work` is
    the per-clip function (a module-level one; default: prepare the clip)."""
    work = work or _work
    threads = max(1, (os.cpu_count() or 1) // workers)
    deaths: Counter = Counter()
    pending = list(reversed(todo))
    while pending:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=_pool_context(),
            initializer=_init_worker,
            initargs=(options, aligner_kwargs, threads, os.getpid()),
        )
        in_flight: dict = {}
        try:
            while pending or in_flight:
                while pending and len(in_flight) < 2 * workers:
                    entry = pending.pop()
                    in_flight[pool.submit(work, entry)] = entry
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()  # a dead worker raises here, for all it held
                    del in_flight[future]
                    record(result)
        except BrokenProcessPool:
            for entry in in_flight.values():
                deaths[entry.clip_id] += 1
                if deaths[entry.clip_id] >= MAX_WORKER_DEATHS:
                    record(
                        ClipResult(
                            entry.clip_id,
                            entry.source,
                            failure="worker died (killed or out of memory)",
                        )
                    )
                else:
                    pending.append(entry)
            logger.warning(
                "a prepare worker died; %d clip(s) it held go to a new worker", len(in_flight)
            )
        except BaseException:  # interrupted: stop the workers rather than orphan them
            _kill(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _kill(pool: ProcessPoolExecutor) -> None:
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()


# --------------------------------------------------------------------------- outputs


def _frame(results: list[ClipResult], entries: list[ClipEntry], index: RawIndex) -> pd.DataFrame:
    by_id = {r.clip_id: r for r in results}
    kept = [e for e in entries if e.clip_id in by_id and by_id[e.clip_id].ok]
    sub = RawIndex(
        index.dataset, index.protocol, index.raw_root, index.classes, index.num_folds, entries=kept
    )
    df = sub.to_frame(lambda e: by_id[e.clip_id].path)
    for col in ("num_frames", "fps", "width", "height", "crop", "face_ratio"):
        df[col] = [getattr(by_id[e.clip_id], col) for e in kept]
    return df


def _write_outputs(df, rejects, index: RawIndex, out: Path, shard) -> dict[str, str]:
    manifest_name, rejects_name, _ = output_names(shard)
    fingerprints = write_manifest(
        df,
        out / manifest_name,
        dataset=index.dataset,
        protocol=index.protocol,
        classes=index.classes,
        num_folds=index.num_folds,
        raw_root=index.raw_root,
        extra=index.extra,
    )
    write_rejects(sorted(rejects), out / rejects_name)
    return fingerprints


def _reason_counts(rejects: list[tuple[str, str, str]]) -> Counter:
    return Counter(r[2].split(":", 1)[0] for r in rejects)


def _summary(
    dataset,
    ok,
    rejects,
    seconds,
    out,
    shard,
    fingerprints,
    warnings,
    processed: int | None = None,
    carried: int = 0,
) -> str:
    """The run's summary; ``processed``: clips judged by this run (the rate counts those
    only, not the ones a resumed run found done); ``carried``: rejects an earlier run judged."""
    manifest_name, rejects_name, _ = output_names(shard)
    counts = _reason_counts(rejects)
    reasons = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
    done = ok if processed is None else processed
    rate = f" ({done / seconds:.2f} clips/s)" if seconds > 0 and done else ""
    if processed is not None and processed < ok + len(rejects):
        rate += f"; {processed} clip(s) judged by this run, the rest done earlier"
    lines = [
        f"prepare {dataset}{'' if shard is None else f' shard {shard[0]}/{shard[1]}'}: "
        f"{ok} clips ok, {len(rejects)} rejected ({reasons or 'none'}) in {seconds:.1f} s{rate}",
        f"manifest: {out / manifest_name}",
        f"rejects:  {out / rejects_name}",
    ]
    if carried:
        lines.append(
            f"  {carried} of the rejects were judged by an earlier run and carried "
            "over (their files are unchanged); --retry-rejects judges them again"
        )
    lines += [f"warning: {w}" for w in warnings]
    lines += ["fingerprints:", format_fingerprints(fingerprints, published=dataset)]
    return "\n".join(lines)


def _merge(index: RawIndex, out: Path, emit: Callable[[str], None]) -> dict[str, Any]:
    """Combine ``manifest.shard-i-of-N.parquet`` (all N of them) into ``manifest.parquet``."""
    found: dict[int, set[int]] = {}
    for p in out.glob("manifest.shard-*-of-*.parquet") if out.is_dir() else []:
        m = _SHARD_FILE.match(p.name)
        if m:
            found.setdefault(int(m[2]), set()).add(int(m[1]))
    if len(found) != 1:
        what = "none" if not found else f"shards of {sorted(found)} different sizes"
        raise MaedferError(
            f"--merge needs {out}/manifest.shard-i-of-N.parquet for i = 1..N of one N; found {what}"
        )
    n, have = next(iter(found.items()))
    missing = sorted(set(range(1, n + 1)) - have)
    if missing:
        raise MaedferError(
            f"--merge: shard(s) {', '.join(map(str, missing))} of {n} missing in {out}; "
            "run them first (--shard i/N)"
        )
    frames, rejects = [], set()
    for i in range(1, n + 1):
        manifest_name, rejects_name, _ = output_names((i, n))
        df, meta = read_manifest(out / manifest_name)
        if meta.get("dataset") != index.dataset:
            raise MaedferError(
                f"{out / manifest_name} is {meta.get('dataset')}, not {index.dataset}"
            )
        frames.append(df)
        if (out / rejects_name).exists():
            rejects |= set(read_rejects(out / rejects_name).itertuples(index=False, name=None))
    df = pd.concat(frames, ignore_index=True).sort_values("clip_id", ignore_index=True)
    covered = set(df["clip_id"]) | {r[0] for r in rejects}
    absent = [e.clip_id for e in index.entries if e.clip_id not in covered]
    warnings = [f"{len(absent)} indexed clip(s) in no shard, e.g. {absent[0]}"] if absent else []
    start = time.perf_counter()
    fingerprints = _write_outputs(df[list(MANIFEST_COLUMNS)], sorted(rejects), index, out, None)
    text = _summary(
        index.dataset,
        len(df),
        sorted(rejects),
        time.perf_counter() - start,
        out,
        None,
        fingerprints,
        warnings,
    )
    emit(f"merged {n} shards\n{text}")
    return {"ok": len(df), "rejected": len(rejects), "fingerprints": fingerprints}


def run(
    *,
    dataset: str,
    raw: Path,
    out: Path,
    workers: int = 1,
    size: int = 160,
    index_only: bool = False,
    codec: str = "h264",
    from_video: bool = False,
    reencode: bool = False,
    shard: str | None = None,
    merge: bool = False,
    device: str | None = None,
    detect_every: int = 4,
    limit: int | None = None,
    min_frames: int = MIN_FRAMES,
    min_face_ratio: float = MIN_FACE_RATIO,
    retry_rejects: bool = False,
    dataset_options: dict[str, Any] | None = None,
    show: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Index a raw dataset, prepare its clips, write manifest and rejects (docs/design.md).

    The options are :class:`maedfer.preprocess.options.PrepareConfig`'s (declared and checked
    there); ``dataset_options`` are the dataset's own (its registry entry's ``options``).

    Args:
        dataset: a registered name (`maedfer.manifests.list_datasets()`).
        raw: the dataset's folder as downloaded; out: where manifest, rejects and clips go.
        workers: processes; size: side of the square clips (even); codec: "h264" or "vp9".
        index_only: write the manifest from the layout alone (planned paths, null pixel fields).
        from_video: DFEW/FERV39k/MAFW: detect faces in the original clips instead of using the
            official face frames. reencode: VoxCeleb2: write cropped clips.
        shard: "i/N" to prepare one shard, "auto" for this Slurm array task's; merge: combine
            the N shard manifests in `out`.
        device: face detection device (None = CUDA when present); detect_every: detect on
            every k-th frame, track in between; limit: prepare only the first N clips.
        min_frames: videos with fewer frames are rejected ("too short"); min_face_ratio:
            face-detected clips with a face in fewer of their frames are rejected
            ("face_ratio"); retry_rejects: judge the rejects of an earlier run again.
        dataset_options: the dataset's own options (`Protocol.configure`; ``folder``:
            labels, subject_from, unlabeled, classes, folds, seed, in_place).
        show: takes the summary's lines (the command line prints them); nothing is printed
            here.

    Returns:
        A summary: ``ok``, ``rejected``, ``reasons`` (prefix -> count), ``seconds``,
        ``fingerprints``.

    Raises:
        MaedferError: bad options, unknown dataset, a raw tree without the dataset's layout,
            or clips that failed for environmental reasons (after the summary is printed).
    """
    start = time.perf_counter()
    PrepareConfig(
        workers=workers, size=size, index_only=index_only, codec=codec, from_video=from_video,
        reencode=reencode, shard=shard, merge=merge, device=device, detect_every=detect_every,
        limit=limit, min_frames=min_frames, min_face_ratio=min_face_ratio,
        retry_rejects=retry_rejects,
    ).validate()  # fmt: skip
    part = parse_shard(shard)
    if not index_only and not merge:
        resolve_device(device)  # a CUDA request without CUDA fails here, not once per clip
    out = Path(out).expanduser().resolve()
    with hold(out, shard=output_names(part)[2] if part is not None else None):
        return _run_held(
            dataset=dataset,
            raw=raw,
            out=out,
            part=part,
            workers=workers,
            size=size,
            index_only=index_only,
            codec=codec,
            from_video=from_video,
            reencode=reencode,
            merge=merge,
            device=device,
            detect_every=detect_every,
            limit=limit,
            min_frames=min_frames,
            min_face_ratio=min_face_ratio,
            retry_rejects=retry_rejects,
            dataset_options=dataset_options,
            start=start,
            emit=show or (lambda _line: None),
        )


def _run_held(
    *,
    dataset,
    raw,
    out: Path,
    part,
    workers,
    size,
    index_only,
    codec,
    from_video,
    reencode,
    merge,
    device,
    detect_every,
    limit,
    min_frames,
    min_face_ratio,
    retry_rejects,
    dataset_options,
    start,
    emit: Callable[[str], None],
) -> dict[str, Any]:
    """:func:`run` once it holds ``out``'s lock."""
    remove_stale(out)  # a killed run's half-written manifest or rejects
    if workers > 1 and not index_only and not merge:
        _start_pool_server()
    info = get_dataset(dataset)
    protocol = info.protocol.configure(**(dataset_options or {}))
    in_place = info.in_place if protocol.in_place is None else protocol.in_place
    index = protocol.index(Path(raw), from_video=from_video)
    for warning in index.warnings:
        logger.warning(warning)
    if merge:
        return _merge(index, out, emit)
    _check_apart(index.raw_root, out, in_place=in_place and not reencode)
    options = PrepareOptions(
        dataset=index.dataset,
        raw_root=index.raw_root,
        out=out,
        size=size,
        codec=codec,
        reencode=reencode,
        min_frames=min_frames,
        min_face_ratio=min_face_ratio,
        crop_rule=info.crop if in_place else None,
    )
    work = entry_work(index.entries, index.raw_root) if part is not None else None
    entries = shard_entries(index.entries, part, work)[:limit]
    # Files the protocol leaves out are listed once: by the unsharded run or by shard 1.
    rejects = list(index.rejects) if part is None or part[0] == 1 else []
    if index_only:
        df = index.to_frame(lambda e: planned_path(e, options))
        df = df[df["clip_id"].isin({e.clip_id for e in entries})].reset_index(drop=True)
        fingerprints = _write_outputs(df, rejects, index, out, part)
        ok = len(df)
    else:
        results, failures, judged = _prepare(
            entries,
            options,
            out,
            part,
            workers=workers,
            device=device,
            detect_every=detect_every,
            from_video=from_video,
            retry_rejects=retry_rejects,
        )
        if failures:
            _report_failures(index.dataset, failures, len(results), out, emit)
        rejects += [(r.clip_id, r.source, r.reason) for r in results if not r.ok]
        carried = sum(not r.ok and r.clip_id not in judged for r in results)
        df = _frame(results, entries, index)
        fingerprints = _write_outputs(df, rejects, index, out, part)
        ok = len(df)
    seconds = time.perf_counter() - start
    emit(
        _summary(
            index.dataset,
            ok,
            rejects,
            seconds,
            out,
            part,
            fingerprints,
            index.warnings,
            processed=None if index_only else len(judged),
            carried=0 if index_only else carried,
        )
    )
    return {
        "ok": ok,
        "rejected": len(rejects),
        "reasons": dict(_reason_counts(rejects)),
        "seconds": seconds,
        "fingerprints": fingerprints,
    }


def _check_apart(raw_root: Path, out: Path, *, in_place: bool) -> None:
    """Refuse an ``--out`` whose ``clips/`` folder holds the raw tree: prepared clips would be
    written over the raw videos they are made from."""
    clips = out / "clips"
    if not in_place and (raw_root == clips or clips in raw_root.parents):
        raise MaedferError(
            f"--raw {raw_root} lies inside {clips}, where prepared clips are "
            "written: they would replace the raw videos; choose another --out"
        )


def _report_failures(
    dataset: str, failures: list[ClipResult], done: int, out: Path, emit: Callable[[str], None]
) -> None:
    """Say which clips failed for environmental reasons and end the run non-zero."""
    emit(
        f"prepare {dataset}: {done} clips done, {len(failures)} failed for environmental "
        f"reasons (not rejected; the manifest in {out} is not written):"
    )
    failures = sorted(failures, key=lambda f: f.clip_id)
    for f in failures[:10]:
        emit(f"  {f.clip_id}: {f.failure}")
    if len(failures) > 10:
        emit(f"  ... (+{len(failures) - 10} more)")
    first = failures[0]
    raise MaedferError(
        f"{len(failures)} clip(s) failed for environmental reasons (e.g. {first.clip_id}: "
        f"{first.failure}); fix the cause and run the same command again to retry them"
    )


def _needs_work(
    entry: ClipEntry, result: ClipResult | None, options: PrepareOptions, retry_rejects: bool
) -> bool:
    """A clip to (re)do: never done, its clip file gone, its source changed since it was
    judged, or a reject to judge again."""
    if result is None:
        return True
    if not result.ok and retry_rejects:
        return True
    if result.ok and not options.in_place and not (options.out / result.path).is_file():
        return True
    if result.stamp is None:  # a journal from before stamps: trust it
        return False
    return source_stamp(options.raw_root / entry.source) != result.stamp


def _prepare(
    entries,
    options: PrepareOptions,
    out: Path,
    part,
    *,
    workers,
    device,
    detect_every,
    from_video,
    retry_rejects=False,
) -> tuple[list[ClipResult], list[ClipResult], set[str]]:
    """Process the entries not finished yet; the results of all of them, from the journal,
    the environmental failures that remain, and the clips this run judged."""
    config = {k: str(v) for k, v in asdict(options).items() if k != "out"}
    config["from_video"] = str(from_video)
    journal = Journal(out / STATE_DIR / f"{output_names(part)[2]}.jsonl", config)
    try:
        done = journal.results
        todo = [e for e in entries if _needs_work(e, done.get(e.clip_id), options, retry_rejects)]
        removed = _remove_partials(out, todo, options)
        if removed:
            logger.info("removed %d temporary file(s) of an interrupted run", removed)
        if len(todo) < len(entries):
            logger.info(
                "resuming: %d of %d clips already done", len(entries) - len(todo), len(entries)
            )
        aligner_kwargs = dict(size=options.size, device=device, detect_every=detect_every)
        failures = _process(
            todo, journal, options, aligner_kwargs, workers, len(entries) - len(todo)
        )
    finally:
        journal.close()
    failed = {f.clip_id for f in failures}
    done = [
        journal.results[e.clip_id]
        for e in entries
        if e.clip_id in journal.results and e.clip_id not in failed
    ]
    return done, failures, {e.clip_id for e in todo}
