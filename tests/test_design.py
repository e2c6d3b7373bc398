"""docs/design.md's rules hold in the code: every import of every module (lazy ones inside
functions included) points down the layers the page lists, or stays in its own package; the
page names every package; module docstrings cite the repository's docs/, never files outside it;
no file of the new wings passes ~600 lines; the old import paths still import, with a warning."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "maedfer"
DESIGN = REPO / "docs" / "design.md"
#: modules that belong to another package's wing (docs/design.md says so beside the package)
PART_OF = {"_timm": "model"}
OUTSIDE = re.compile(r"\b(DESIGN|MODEL|DATASETS|STYLE)\.md\b|\.\./shared")


def layers() -> dict[str, int]:
    """Package -> layer, from the table under "## Wings" of docs/design.md."""
    text = DESIGN.read_text(encoding="utf-8")
    table = text.split("## Wings", 1)[1].split("### Import rules", 1)[0]
    found: dict[str, int] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in re.findall(r"`([\w]+)`", cells[1]):
                found[name] = int(cells[0])
    return found


def unit(module: str) -> str:
    """The package of a dotted module name (``maedfer.training.loop`` -> ``training``)."""
    name = module.split(".")[1]
    return PART_OF.get(name, name)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every maedfer module ``path`` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("maedfer.") and len(n.split(".")) > 1}


def test_the_design_page_names_every_package() -> None:
    known = layers()
    packages = {unit(name) for name in modules() if name != "maedfer"}
    assert packages <= set(known), sorted(packages - set(known))


def test_imports_point_down_the_layers() -> None:
    known, wrong = layers(), []
    for name, path in modules().items():
        if name == "maedfer":  # the package itself stands above everything
            continue
        source = unit(name)
        for target in imports(path):
            other = unit(target)
            if other == source or other not in known:
                continue
            if known[other] >= known[source]:
                wrong.append(
                    f"{name} ({source}, layer {known[source]}) imports {target} "
                    f"({other}, layer {known[other]})"
                )
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_module_docstrings_cite_docs_and_nothing_outside_the_repository() -> None:
    outside, uncited = [], []
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if OUTSIDE.search(text):
            outside.append(name)
        doc = ast.get_docstring(ast.parse(text)) or ""
        cited = re.findall(r"docs/([\w-]+\.md)", doc)
        if not cited or not set(cited) <= pages:
            uncited.append(name)
    assert not outside, f"cite files outside the repository: {outside}"
    assert not uncited, f"module docstrings without a docs/ page: {uncited}"


def test_bench_scripts_and_tests_cite_nothing_outside_the_repository() -> None:
    """The repository stands on its own: its benchmarks, scripts and tests point at docs/ too
    (this file and the shipped-documents guard name the outside files to look for them)."""
    guards = {Path(__file__).resolve(), REPO / "tests" / "recipes" / "test_config.py"}
    found = [
        str(path.relative_to(REPO))
        for folder in ("bench", "scripts", "tests")
        for path in sorted((REPO / folder).rglob("*"))
        if path.suffix in (".py", ".sh")
        and path.resolve() not in guards
        and OUTSIDE.search(path.read_text(encoding="utf-8"))
    ]
    assert not found, f"cite files outside the repository: {found}"


def test_no_file_of_the_new_wings_is_over_600_lines() -> None:
    long = {}
    for wing in ("training", "recipes", "evaluation", "cli"):
        for path in (PACKAGE / wing).glob("*.py"):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > 600:
                long[str(path.relative_to(REPO))] = lines
    assert (PACKAGE / "config.py").read_text().count("\n") <= 600
    assert not long, long


@pytest.mark.parametrize(
    "old, new",
    [
        ("maedfer.train.finetune", "maedfer.recipes.finetune"),
        ("maedfer.train.config", "maedfer.recipes.config"),
        ("maedfer.train.checkpoint", "maedfer.training.checkpoint"),
        ("maedfer.train.loop", "maedfer.training.loop"),
        ("maedfer.train.evaluate_checkpoint", "maedfer.evaluation.testing"),
        ("maedfer.train.metrics", "maedfer.evaluation.metrics"),
        ("maedfer.options", "maedfer.config"),
    ],
)
def test_old_import_paths_still_import_with_a_warning(old: str, new: str) -> None:
    """In a fresh interpreter (a module is imported once per process)."""
    code = (
        f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print(w)\n"
        f"warnings.simplefilter('ignore')\nimport {old} as a, {new} as b\n"
        f"print(a is b)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "True" and new in lines[0], done.stdout


def test_every_train_module_has_a_new_home() -> None:
    from maedfer.train import MOVED

    for old, new in MOVED.items():
        assert (PACKAGE / "train" / f"{old}.py").is_file(), old
        importlib.import_module(new)
