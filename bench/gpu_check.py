"""Every GPU figure of the toolkit in one bounded run that cannot lose a figure.

    python3 bench/gpu_check.py --out DIR             # on a CUDA node: ≤ 8 min with set-up
    python3 bench/gpu_check.py --out DIR --quick      # the decisive part, ≤ 3 min
    python3 bench/gpu_check.py --out DIR --dry-run    # anywhere: every step's plumbing on CPU
    python3 bench/gpu_check.py --list                 # the measurements, what each needs

Each measurement runs in its own subprocess (``bench/gpu_measures.py``) with its own time
budget and timeout, in the order of what decides most (the table below). ``DIR/gpu_check.json``
is rewritten after every step, so a crash, a timeout or a kill of one measurement leaves every
other figure in the file; a table of the results ends the run. A missing piece (DALI, PyAV,
facenet-pytorch, NVDEC's driver library ``libnvcuvid``, CUDA, git) turns only the measurements
that need it into ``not run: <reason>``. The clips are made before the clock starts (H.264 in
the prepared encoding; VP9 for the dry run, which DALI decodes on the CPU) or read from
``--cache DIR``. This script imports only the standard library: it runs on a node where nothing
but its own Python and torch is installed (docs/cluster.md: a wheelhouse brings the rest).

``--dry-run`` runs every measurement's subprocess, budget and JSON path on the CPU (DALI's CPU
decoder on VP9, tiny models): the plumbing of the GPU run, checked in CI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURE = HERE / "gpu_measures.py"
RESULT = "gpu_check.json"


@dataclass(frozen=True)
class Measurement:
    """One step: what it measures, what it needs, its budget in seconds (GPU, --quick, dry)."""

    name: str
    what: str
    needs: tuple[str, ...]
    budget: tuple[float, float, float]

    def seconds(self, mode: str) -> float:
        return self.budget[("gpu", "quick", "dry").index(mode)]


# In the order of what decides most. Needs: cuda (a GPU, not asked of the dry run), dali, av
# (PyAV), faces (facenet-pytorch), nvdec (libnvcuvid, GPU run only), clips (made by set-up).
# A budget of 0 skips the measurement in that mode.
MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement(
        "preflight",
        "versions (torch, CUDA, driver, DALI, PyAV, timm, facenet), device, "
        "libnvcuvid, CPU count, commit",
        (),
        (20, 20, 60),
    ),
    Measurement(
        "ceilings",
        "bf16 GEMM 8192^3 TFLOP/s and device-to-device copy GB/s",
        ("cuda",),
        (20, 15, 60),
    ),
    Measurement(
        "frame_identity",
        "DALI returns exactly the planned frame numbers on marker "
        "clips in the prepared encoding: random train windows (two rules), both test "
        "views, windows past the end",
        ("cuda", "dali", "nvdec", "clips"),
        (30, 20, 60),
    ),
    Measurement(
        "pixel_equality",
        "DALI vs PyAV on the same plan: test (max, p99.99) and train "
        "+ RandAugment (mean, share > 2/255), >= 64 samples at 160^2",
        ("cuda", "dali", "nvdec", "av", "clips"),
        (40, 25, 60),
    ),
    Measurement(
        "hybrid_equality",
        "the hybrid backend (PyAV decodes planes, the GPU converts "
        "and augments) vs PyAV on the same plan: test (max) and train + RandAugment",
        ("cuda", "av", "clips"),
        (25, 0, 60),
    ),
    Measurement(
        "nvdec_ceiling",
        "decoded frames/s of DALI's video decoder on every frame of the prepared 160^2 clips",
        ("cuda", "dali", "nvdec", "clips"),
        (30, 15, 60),
    ),
    Measurement(
        "loader_dali",
        "DALI loader clips/s, batch 32: train + RandAugment, test (per "
        "view), pretrain; 2 warm-up, >= 10 timed batches, 2,048-row manifests",
        ("cuda", "dali", "nvdec", "clips"),
        (75, 35, 90),
    ),
    Measurement(
        "loader_pyav",
        "PyAV loader clips/s on nproc-1 workers, same manifests and "
        "modes (>= 3 batches per worker timed)",
        ("av", "clips"),
        (50, 30, 90),
    ),
    Measurement(
        "loader_hybrid",
        "hybrid loader clips/s (decode on nproc-1 workers, colour and "
        "augmentation on the GPU), same manifests and modes",
        ("cuda", "av", "clips"),
        (50, 25, 90),
    ),
    Measurement(
        "step_eager",
        "fine-tune and pre-train steps of the base models, eager: clips/s, "
        "share of the measured GEMM ceiling, peak memory; the reference-style step "
        "beside",
        ("cuda",),
        (50, 30, 90),
    ),
    Measurement(
        "fed_step_dali",
        "the fine-tune step fed by the DALI loader: clips/s, share of time waiting for data",
        ("cuda", "dali", "nvdec", "clips"),
        (35, 20, 90),
    ),
    Measurement(
        "fed_step_pyav",
        "the fine-tune step fed by the PyAV loader (nproc-1 workers): clips/s, share waiting",
        ("cuda", "av", "clips"),
        (35, 0, 90),
    ),
    Measurement(
        "fed_step_hybrid",
        "the fine-tune step fed by the hybrid loader: clips/s, share waiting",
        ("cuda", "av", "clips"),
        (35, 0, 90),
    ),
    Measurement(
        "recipe_step",
        "maedfer finetune itself (official defaults, base model, its own loader): steady "
        "clips/s over 2 log windows of 10 steps, host syncs per step of the real TrainLoop",
        ("cuda", "clips"),
        (60, 40, 120),
    ),
    Measurement(
        "syncs",
        "host syncs per batch: one DALI loader batch, one training step "
        "(torch.cuda.set_sync_debug_mode; on the CPU, calls that would sync)",
        ("cuda",),
        (25, 10, 60),
    ),
    Measurement(
        "step_compiled",
        "the same steps under torch.compile: clips/s, compile time, graph breaks",
        ("cuda",),
        (120, 0, 90),
    ),
    Measurement(
        "faces",
        "prepare's face alignment on CUDA at 720p: alignment alone and end to "
        "end (decode, align, encode), frames/s",
        ("cuda", "faces", "av"),
        (40, 0, 90),
    ),
    Measurement(
        "first_batch",
        "time to the first batch on a 1,000,000-row manifest (DALI, a fresh process)",
        ("cuda", "dali", "nvdec", "clips"),
        (30, 0, 90),
    ),
)
BY_NAME = {m.name: m for m in MEASUREMENTS}
#: The whole run, set-up included (seconds): 8 min, --quick 3 min; the dry run is not bounded
#: by the GPU's budget but by its own.
TOTAL = {"gpu": 480.0, "quick": 180.0, "dry": 900.0}
SETUP_BUDGET = {"gpu": 120.0, "quick": 120.0, "dry": 300.0}


class Results:
    """``gpu_check.json``, rewritten whole (atomically) after every change."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.data = {
            **header,
            "setup": {"status": "pending"},
            "measurements": {
                m.name: {"status": "pending", "needs": list(m.needs)} for m in MEASUREMENTS
            },
            "summary": {},
        }
        self.write()

    def set(self, name: str, value: dict) -> None:
        if name == "setup":
            self.data["setup"] = value
        else:
            self.data["measurements"][name] = {**value, "needs": list(BY_NAME[name].needs)}
        self.data["summary"] = summary(self.data["measurements"])
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)


def summary(measured: dict) -> dict:
    """Figures that take two measurements: DALI/PyAV per mode (guarded), the data share."""
    out: dict = {}
    loaders = {
        name: measured.get(f"loader_{name}", {}).get("figures", {})
        for name in ("dali", "hybrid", "pyav")
    }
    for mode in ("train", "test", "pretrain"):
        for a, b in (("dali", "pyav"), ("hybrid", "pyav"), ("dali", "hybrid")):
            x = loaders[a].get(mode, {}).get("clips_per_s")
            y = loaders[b].get(mode, {}).get("clips_per_s")
            if x and y:
                out[f"loader_{mode}_{a}_over_{b}"] = round(x / y, 3)
    step = measured.get("step_eager", {}).get("figures", {}).get("finetune", {})
    synthetic = step.get("ours", {}).get("clips_per_s")
    for name in ("dali", "hybrid", "pyav"):
        fed = measured.get(f"fed_step_{name}", {}).get("figures", {}).get("clips_per_s")
        if synthetic and fed:
            out[f"fed_{name}_over_synthetic_step"] = round(fed / synthetic, 3)
    return out


def run_child(
    kind: str, args: list[str], *, timeout: float, env: dict, results: Results, name: str
) -> tuple[int | None, str]:
    """Runs one subprocess in its own session (so a timeout kills its workers too)."""
    proc = subprocess.Popen(
        [sys.executable, str(MEASURE), kind, *args], env=env, start_new_session=True
    )
    results.set(
        name,
        {
            "status": "running",
            "pid": proc.pid,
            "started": dt.datetime.now().isoformat(timespec="seconds"),
        },
    )
    try:
        return proc.wait(timeout=timeout), ""
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return None, f"timed out after {timeout:.0f} s"
    except KeyboardInterrupt:
        stop_group(proc)
        raise


def stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def outcome(code: int | None, why: str, result: Path, seconds: float) -> dict:
    """The step's entry: what the subprocess wrote, or why it wrote nothing."""
    value = json.loads(result.read_text()) if result.exists() else {}
    if value and value.get("status") != "partial":
        pass  # the step finished and said how
    elif code is None:
        value = {**value, "status": "timed out", "reason": why}
    elif code < 0:
        value = {
            **value,
            "status": "killed",
            "reason": f"killed by signal {-code} ({signal.Signals(-code).name})",
        }
    else:
        value = {
            **value,
            "status": "failed",
            "reason": f"exited {code} without a result (see the log)",
        }
    return {**value, "seconds": round(seconds, 1)}


def headline(entry: dict) -> str:
    if entry.get("status") != "ok":
        kept = " (figures so far kept)" if entry.get("figures") else ""
        return (entry.get("reason", "") + kept)[:70]
    return str(entry.get("figures", {}).get("headline", ""))[:70]


def table(data: dict) -> str:
    rows = [("setup", data["setup"])] + list(data["measurements"].items())
    lines = [f"{'measurement':16} {'status':10} {'s':>6}  result", "-" * 100]
    for name, entry in rows:
        seconds = entry.get("seconds")
        lines.append(
            f"{name:16} {entry.get('status', ''):10} "
            f"{'' if seconds is None else f'{seconds:6.1f}':>6}  {headline(entry)}"
        )
    for key, value in data.get("summary", {}).items():
        lines.append(f"{'':16} {'summary':10} {'':>6}  {key} = {value}")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=os.environ.get("MAEDFER_OUT"),
        help="folder for gpu_check.json (required, or $MAEDFER_OUT)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder of the clips (made there once, reused; default: a temporary folder)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="every measurement's plumbing on the CPU (tiny, VP9)"
    )
    parser.add_argument("--quick", action="store_true", help="the decisive part, <= 3 min")
    parser.add_argument("--only", default=None, help="comma-separated measurements to run")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run (default 480; --quick 180)",
    )
    parser.add_argument("--list", action="store_true", help="list the measurements and stop")
    parser.add_argument(
        "--make-cache",
        action="store_true",
        help="make the clips of the mode in --cache and stop (to carry them to "
        "a node without PyAV, or to start the clock sooner)",
    )
    args = parser.parse_args(argv)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(BY_NAME))
        if unknown:
            parser.error(
                f"--only: unknown measurement(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}"
            )
    if args.make_cache and args.cache is None:
        parser.error("--make-cache needs --cache DIR")
    if not args.list and not args.make_cache and args.out is None:
        parser.error("--out DIR is required (or set $MAEDFER_OUT)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    mode = "dry" if args.dry_run else "quick" if args.quick else "gpu"
    if args.list:
        for m in MEASUREMENTS:
            needs = ", ".join(m.needs) or "-"
            print(f"{m.name:16} [{needs}] {m.seconds(mode):.0f} s  {m.what}")
        return 0
    if args.make_cache:
        return make_cache(Path(args.cache).resolve(), mode)
    selected = [
        m
        for m in MEASUREMENTS
        if (not args.only or m.name in args.only.split(",")) and m.seconds(mode) > 0
    ]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="maedfer-gpu-check-"))
    cache = Path(args.cache).resolve() if args.cache else work / "clips"
    cache.mkdir(parents=True, exist_ok=True)
    total = args.budget or TOTAL[mode]
    results = Results(
        out / RESULT,
        {
            "check": "bench/gpu_check.py",
            "mode": mode,
            "budget_s": total,
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "argv": sys.argv[1:] if argv is None else argv,
            "cache": str(cache),
        },
    )
    for m in MEASUREMENTS:
        if m not in selected:
            why = "not selected (--only)" if args.only else f"skipped in {mode} mode"
            results.set(m.name, {"status": "not run", "reason": why})
    print(
        f"gpu_check: {mode} run, {len(selected)} measurement(s), {total:.0f} s budget; "
        f"results in {out / RESULT}",
        flush=True,
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # `timeout`, a scheduler or kill send SIGTERM: stop the running step's process group too
    signal.signal(signal.SIGTERM, interrupted)
    context = {
        "mode": mode,
        "cache": str(cache),
        "work": str(work),
        "clips": {},
        "prior": {},
        "needs_clips": any("clips" in m.needs for m in selected),
    }
    start = time.monotonic()
    try:
        run_setup(context, results, env, work, mode)
        deadline = start + total  # set-up included
        for m in selected:
            left = deadline - time.monotonic()
            if left < 5:
                results.set(
                    m.name, {"status": "not run", "reason": f"the {total:.0f} s budget was spent"}
                )
                continue
            run_one(m, context, results, env, work, min(m.seconds(mode), left))
    except KeyboardInterrupt:
        for name, entry in results.data["measurements"].items():
            if entry["status"] in ("pending", "running"):
                results.set(name, {"status": "not run", "reason": "interrupted"})
        print(table(results.data))
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.data["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    results.data["seconds"] = round(time.monotonic() - start, 1)
    results.write()
    print(table(results.data))
    print(f"gpu_check: wrote {out / RESULT} in {results.data['seconds']:.0f} s")
    return 0


def make_cache(cache: Path, mode: str) -> int:
    """The set-up step alone: the clips of ``mode`` in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maedfer-gpu-check-") as work:
        results = Results(Path(work) / RESULT, {"mode": mode})
        context = {"mode": mode, "cache": str(cache), "work": work, "needs_clips": True}
        run_setup(context, results, {**os.environ, "PYTHONUNBUFFERED": "1"}, Path(work), mode)
        entry = results.data["setup"]
    print(f"gpu_check: set-up {entry['status']}: {headline(entry)}")
    return 0 if entry["status"] == "ok" else 1


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_setup(context: dict, results: Results, env: dict, work: Path, mode: str) -> None:
    if not context["needs_clips"]:
        results.set("setup", {"status": "not run", "reason": "no selected measurement needs clips"})
        return
    ctx_path, result = work / "setup-context.json", work / "setup-result.json"
    ctx_path.write_text(json.dumps(context))
    started = time.monotonic()
    code, why = run_child(
        "setup",
        [str(ctx_path), str(result)],
        timeout=SETUP_BUDGET[mode],
        env={**env, "MAEDFER_GPU_CHECK_STEP": "setup"},
        results=results,
        name="setup",
    )
    entry = outcome(code, why, result, time.monotonic() - started)
    results.set("setup", entry)
    context["clips"] = entry.get("figures", {}).get("clips", {})
    context["clips_missing"] = entry.get("reason") or "set-up made no clips"


def run_one(
    m: Measurement, context: dict, results: Results, env: dict, work: Path, timeout: float
) -> None:
    ctx_path, result = work / f"{m.name}-context.json", work / f"{m.name}-result.json"
    context = {
        **context,
        "needs": list(m.needs),
        "budget_s": timeout,
        "prior": {
            k: v.get("figures", {})
            for k, v in results.data["measurements"].items()
            if v.get("status") == "ok"
        },
    }
    ctx_path.write_text(json.dumps(context))
    print(f"gpu_check: {m.name} (<= {timeout:.0f} s): {m.what}", flush=True)
    started = time.monotonic()
    code, why = run_child(
        m.name,
        [str(ctx_path), str(result)],
        timeout=timeout,
        env={**env, "MAEDFER_GPU_CHECK_STEP": m.name},
        results=results,
        name=m.name,
    )
    entry = outcome(code, why, result, time.monotonic() - started)
    results.set(m.name, entry)
    print(f"gpu_check: {m.name}: {entry['status']} {headline(entry)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
