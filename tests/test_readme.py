"""The README is a user guide of the current state: its tables match ``conf/``, its commands run,
its list of run files matches what a run writes, its links exist, and it stays short."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cl_bench.config import check_node, validate

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONF = ROOT / "conf"


def section(title: str) -> str:
    """The README's text under ``## <title>`` up to the next ``## `` heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in ``text``, cells stripped."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash)?\n(.*?)```", text, re.S)


def options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def test_short_with_contents_and_no_diary():
    lines = README.splitlines()
    assert len(lines) <= 350
    assert "## Contents" in README
    # every heading the contents link to exists
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", README, re.M)}
    for target in re.findall(r"\]\(#([^)]+)\)", README):
        assert target in anchors, target
    # current state only: no dated diary, no issue numbers, no session talk
    for pattern in (r"\btoday\b", r"\bstop \d+", r"\bissue[ -]?\d+", r"\bsession\b",
                    r"\b20\d\d-\d\d-\d\d\b(?!_)"):
        hits = [ln for ln in lines if re.search(pattern, ln, re.I)]
        assert not hits, (pattern, hits)


def test_group_table_matches_conf():
    rows = {r[0].strip("`"): {o.strip("`") for o in re.findall(r"`[^`]+`", r[1])}
            for r in table_rows(section("Config groups"))}
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"}
    assert set(rows) == groups
    for group in groups:
        assert rows[group] == options(group), group


def test_strategy_table_matches_conf():
    names = set()
    for r in table_rows(section("Strategies")):
        names |= {o.strip("`") for o in re.findall(r"`[^`]+`", r[0])}
    assert names == options("strategy")


def test_stream_table_covers_every_stream():
    patterns = [o.strip("`") for r in table_rows(section("Streams"))
                for o in re.findall(r"`[^`]+`", r[0])]
    for name in options("tasks"):
        assert any(re.fullmatch(p.replace("*", ".*"), name) for p in patterns), name


def test_test_command_is_the_makefiles():
    make = (ROOT / "Makefile").read_text()
    workers = re.search(r"^TEST_WORKERS \?= (.*)$", make, re.M).group(1).strip()
    recipe = re.search(r"^test: install\n\t\$\(PY\) (.*)$", make, re.M).group(1).strip()
    command = recipe.replace("$(TEST_WORKERS)", workers)
    assert f".venv/bin/python {command}" in section("Install")


def test_linked_files_exist():
    for path in re.findall(r"\]\(((?:docs|results|scripts|cl_bench)/[^)#]+)", README):
        assert (ROOT / path).exists(), path
    for path in re.findall(r"`((?:docs|results/reference|scripts|tests|cl_bench)/[\w./-]+)`",
                           README):
        assert (ROOT / path.rstrip("/")).exists(), path


def _clbench_lines() -> list[list[str]]:
    """Every one-line ``clbench`` command of the README's code blocks that needs no data,
    checkpoint, GPU, cluster or multirun: its overrides (subcommands such as ``clbench ls`` have
    tests of their own)."""
    out = []
    for block in code_blocks(README):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if not line.startswith("clbench ") or line.endswith("\\"):
                continue
            args = shlex.split(line)[1:]
            if any(a.startswith(("-", "resume=", "backbone.weights=", "hydra/"))
                   or a in ("hardware=gpu", "hardware=slurm") or "=" not in a for a in args):
                continue
            out.append(args)
    return out


@pytest.mark.parametrize("args", _clbench_lines(), ids=" ".join)
def test_readme_commands_compose_and_validate(args, tmp_path):
    """Each command's config composes and passes every check a run makes before building."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*args, f"results_dir={tmp_path}"])
    validate(cfg)
    for key in ("backbone", "tasks", "strategy", "hardware"):
        if key in cfg and "_target_" in cfg[key]:
            check_node(cfg[key], key)


def run_file_names() -> list[str]:
    """The names the README's 'What a run writes' list gives (first word of each entry)."""
    block = section("What a run writes").split("<!-- run-files")[1]
    listing = code_blocks(block)[0]
    return [line.split()[0].rstrip("/") for line in listing.splitlines()
            if line and not line.startswith(" ")]


def test_first_run_command_runs_and_writes_only_listed_files(tmp_path):
    """The 'first run' command, as written, exits 0 and writes R; every file it writes is in
    the README's list, and every listed name is written by cl_bench's own code."""
    block = code_blocks(section("A first run in seconds"))[0]
    line = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.startswith("clbench")][0]
    args = shlex.split(line)[1:]
    proc = subprocess.run(
        [sys.executable, "-m", "cl_bench.cli", *args, f"results_dir={tmp_path}",
         "train.progress_bar=false", "hardware.num_threads=1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = [p.parent for p in tmp_path.rglob("matrix.csv")]
    rows = (run / "matrix.csv").read_text().splitlines()
    assert rows[0].startswith("row,") and len(rows) == 1 + 1 + 3   # header, init, 3 tasks
    listed = set(run_file_names())
    written = {p.name for p in run.iterdir()}
    assert written <= listed, written - listed
    source = "\n".join(p.read_text() for p in (ROOT / "cl_bench").rglob("*.py"))
    for name in listed - {".hydra"}:
        assert f'"{name}' in source or f"'{name}" in source, name
