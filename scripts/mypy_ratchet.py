"""The type check's ratchet: mypy over maedfer/ (mypy.ini) against .ci/mypy-baseline.txt.

The baseline lists the errors that existed when the check was added, one per line, as
``file: [code] message`` (no line numbers, so moving code does not break it). The check fails
on an error the baseline does not list (a new one: fix it), and on a listed one that is gone
(remove its line: the list only shrinks). The new wings (training/, recipes/, evaluation/,
config.py) may have none. ``--update`` rewrites the baseline from the current errors, only ever
removing lines.

Usage: python scripts/mypy_ratchet.py [--update]
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / ".ci" / "mypy-baseline.txt"
CLEAN = ("maedfer/training/", "maedfer/recipes/", "maedfer/evaluation/", "maedfer/config.py")
LINE = re.compile(r"^(?P<file>[^:]+):\d+(?::\d+)?: error: (?P<message>.*?)\s+\[(?P<code>[\w-]+)\]$")


def current() -> Counter[str]:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True,
                          text=True)  # fmt: skip
    errors: Counter[str] = Counter()
    for line in done.stdout.splitlines():
        found = LINE.match(line)
        if found:
            errors[f"{found['file']}: [{found['code']}] {found['message']}"] += 1
    if done.returncode not in (0, 1) or (done.returncode == 1 and not errors):
        sys.exit(f"mypy failed to run:\n{done.stdout}{done.stderr}")
    return errors


def main() -> int:
    now = current()
    listed = Counter(
        line for line in BASELINE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ) if BASELINE.is_file() else Counter()  # fmt: skip
    new, gone = now - listed, listed - now
    if "--update" in sys.argv:
        if new and BASELINE.is_file():  # the first baseline takes what there is
            print("mypy: not updating: these errors are new (fix them):", file=sys.stderr)
            print("\n".join(sorted(new.elements())), file=sys.stderr)
            return 1
        header = (
            "# mypy errors that predate the check (scripts/mypy_ratchet.py); only ever shrinks\n"
        )
        BASELINE.write_text(header + "".join(f"{e}\n" for e in sorted(now.elements())))
        print(f"mypy: baseline now {sum(now.values())} errors")
        return 0
    status = 0
    clean = [e for e in now.elements() if e.startswith(CLEAN)]
    if clean:
        print("mypy: the new wings must have no errors:\n" + "\n".join(sorted(clean)))
        status = 1
    if new:
        print(f"mypy: {sum(new.values())} new error(s), not in {BASELINE.name}:")
        print("\n".join(sorted(new.elements())))
        status = 1
    if gone:
        print(f"mypy: {sum(gone.values())} error(s) of {BASELINE.name} are fixed: remove their "
              "lines (python scripts/mypy_ratchet.py --update):")  # fmt: skip
        print("\n".join(sorted(gone.elements())))
        status = 1
    if status == 0:
        print(f"mypy: {sum(now.values())} errors, all in the baseline (which only shrinks)")
    return status


if __name__ == "__main__":
    sys.exit(main())
