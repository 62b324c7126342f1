"""The package's floors (docs/architecture.md): a module imports only from its own floor or the
floors below, and no import cycle exists. Read from the source of ``cl_bench/`` and of our Hydra
plugin (``hydra_plugins/``, which ``cl_bench.cli`` imports and which imports the sweeper), every
import statement (module level and inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cl_bench"
#: the source trees scanned: the package and the Hydra plugin namespace (our sweeper's plugin)
SOURCES = (PACKAGE, ROOT / "hydra_plugins")

#: floor of each module (a package prefix covers its modules); docs/architecture.md draws them
FLOORS = {
    # 0: no cl_bench imports (errors, value ranges, CPU facts, pure metrics, paper data)
    "cl_bench": 0, "cl_bench.errors": 0, "cl_bench.files": 0, "cl_bench.ranges": 0, "cl_bench.hardware": 0,
    "cl_bench.metrics": 0, "cl_bench.reference": 0, "cl_bench.summary": 0, "cl_bench.slurm": 0,
    "cl_bench.signals": 0,
    # 1: task kinds, tasks and streams, the config schema, files of a run directory
    "cl_bench.kinds": 1, "cl_bench.data": 1, "cl_bench.config": 1, "cl_bench.results": 1,
    "cl_bench.lock": 1, "cl_bench.checkpoint": 1,
    # 2: networks, heads, losses
    "cl_bench.models": 2,
    # 3: strategies (hooks over a model)
    "cl_bench.strategies": 3,
    # 4: what trains and measures one task: Lightning module, evaluation, probes, progress, loggers
    "cl_bench.training": 4, "cl_bench.evaluation": 4, "cl_bench.probes": 4,
    "cl_bench.progress": 4, "cl_bench.loggers": 4, "cl_bench.representation_probes": 4,
    # 5: the stream loop
    "cl_bench.runner": 5,
    # 6: entry points
    "cl_bench.cli": 6, "cl_bench.report": 6, "cl_bench.helptext": 6, "cl_bench.probe_cli": 6,
    # the hyperparameter search: its objective is a pure function (1), the sweeper, the study's
    # report and clbench-best are entry points (6)
    "cl_bench.search": 6, "cl_bench.search.objective": 1,
    # where the config is composed from and what a failed composition says (every entry point)
    "cl_bench.composition": 1,
    # Hydra's plugin class of hydra/sweeper=optuna: an entry point wrapping cl_bench.search.sweeper
    "hydra_plugins": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    best = max((k for k in FLOORS if module == k or module.startswith(k + ".")), key=len)
    return FLOORS[best]


def imports() -> dict[str, set[str]]:
    """Module of ``SOURCES`` -> the modules of ``SOURCES`` it imports."""
    modules = {module_name(p): p for src in SOURCES for p in src.rglob("*.py")}
    out = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        out[name] = deps
    return out


def test_every_module_has_a_floor():
    for name in imports():
        floor(name)  # raises ValueError (max of nothing) for a module outside FLOORS


def test_the_scan_reads_the_hydra_plugin_and_what_it_imports():
    """The plugin is in the graph (a cycle through it would be found): it imports the sweeper,
    and the command line imports it (cl_bench.cli._register_sweeper)."""
    graph = imports()
    plugin = "hydra_plugins.clbench_optuna_sweeper.optuna_sweeper"
    assert "cl_bench.search.sweeper" in graph[plugin]
    assert plugin in graph["cl_bench.cli"]


def test_no_module_imports_from_a_floor_above_its_own():
    upward = sorted(f"{m} (floor {floor(m)}) imports {d} (floor {floor(d)})"
                    for m, deps in imports().items() for d in deps if floor(d) > floor(m))
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = imports()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, dep]))
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_importing_the_runner_leaves_warning_filters_and_log_levels_alone():
    """A library import changes no global state: the command line quiets the libraries
    (cl_bench.cli.quiet_libraries), not ``import cl_bench.runner``."""
    import subprocess
    import sys

    code = ("import logging, warnings\n"
            "level = logging.getLogger('lightning.pytorch.utilities.rank_zero').level\n"
            "import cl_bench.runner\n"
            "ours = ('logging interval', 'manual optimization', 'srun', 'many workers')\n"
            "print(any(f[1] is not None and any(o in f[1].pattern for o in ours) "
            "for f in warnings.filters), "
            "logging.getLogger('lightning.pytorch.utilities.rank_zero').level == level)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]  # none of cl_bench's filters; level kept
