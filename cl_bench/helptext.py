"""``clbench --help``: Hydra's help template filled in from ``conf/`` itself, so it cannot go stale.

Every config group (a folder of ``conf/``) is listed with its options (the YAML files) and, for
each option, the first sentence of the file's leading comment (cut to one line); the default
option of each group (``conf/config.yaml``'s defaults list) is marked ``*``. Hydra substitutes
``$FLAGS_HELP`` (its flags) if the template names them; this one points to
``clbench --hydra-help`` instead. The keys are listed from the schema's dataclasses
(:class:`~cl_bench.config.ClBenchConfig`). Wired as ``hydra.help.template: ${clbench_help:}``
(the resolver is registered in :mod:`cl_bench.cli`).
"""

from __future__ import annotations

from typing import Any
from pathlib import Path

USAGE = """\
clbench: run a continual-learning task stream through a strategy on a backbone, and write the
accuracy matrix R (R[i][j] = task j after training task i), BWT/FWT/forgetting and MFN/MFT/MAA.

Usage:
  clbench strategy=lora tasks=brain_seg_age             one run (the main job, `make run`)
  clbench -m experiment=brain_mri_fm                    a sweep: strategies x seeds (Hydra multirun)
  clbench -m experiment=brain_mri_fm hardware=slurm     the same sweep as SLURM jobs (submitit)
  clbench-report results/multirun/<date>                mean ± std over seeds, paper numbers beside
  clbench resume=<run dir>                              continue an interrupted run bit-identically
  clbench train.max_steps=50 seed=1 strategy.rank=4     override any key (key=value)
"""


def _meaning(path: Path, width: int = 78) -> str:
    """First sentence of the YAML file's leading comment block (``@package`` lines skipped)."""
    words: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            if words or line.strip():
                break
            continue
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text:
            if words:
                break
            continue
        words.append(text)
    text = " ".join(words).rstrip(":")
    depth = 0
    for i, ch in enumerate(text):  # end of the first sentence, outside parentheses
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if (ch == "." and depth == 0 and text[i + 1:i + 2] in (" ", "")
                and not text[:i].endswith((" al", "e.g", "i.e"))):
            text = text[:i + 1]
            break
    if len(text) > width:
        text = text[:width - 1].rsplit(" ", 1)[0] + " …"
    return text


def _defaults(conf_dir: Path) -> dict[str, str]:
    """The default option of each group: ``config.yaml``'s defaults list, read as YAML."""
    from omegaconf import OmegaConf

    out = {}
    for item in OmegaConf.load(conf_dir / "config.yaml").get("defaults", []):
        if not isinstance(item, str):
            out.update({str(k): v for k, v in item.items() if isinstance(v, str)})
    return out


def _schema_keys() -> str:
    """The keys of the top-level schema (:class:`~cl_bench.config.ClBenchConfig`), a nested
    dataclass as ``name.{field, ...}``; the groups without a schema (``Any``) left out."""
    import dataclasses

    from cl_bench.config import ClBenchConfig

    out = []
    for f in dataclasses.fields(ClBenchConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            out.append(f"{f.name}.{{{', '.join(g.name for g in dataclasses.fields(default))}}}")
        elif f.type not in ("Any", Any):
            out.append(f.name)
    return ", ".join(out)


def groups_text(conf_dir: str | Path) -> str:
    """Every group of ``conf_dir`` with its options and their one-line meanings."""
    conf_dir = Path(conf_dir)
    defaults = _defaults(conf_dir)
    lines = ["Config groups (group=option; * = default):"]
    for group in sorted(p for p in conf_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        options = sorted(group.glob("*.yaml"))
        if not options:
            continue
        lines.append(f"  {group.name}")
        width = max(len(o.stem) for o in options) + 2
        for opt in options:
            mark = "*" if defaults.get(group.name) == opt.stem else " "
            lines.append(f"   {mark}{opt.stem.ljust(width)}{_meaning(opt)}")
    return "\n".join(lines)


def search_text(conf_dir: str | Path) -> str:
    """The search keys: ``search.objective`` with its statistics, and every key of
    ``conf/hydra/sweeper/optuna.yaml`` with its inline comment (read from the file)."""
    import re

    from cl_bench.search.objective import ALIASES, STATS

    lines = ["Hyperparameter search on the validation R (Optuna; README \"Search\", docs/search.md):",
             "  clbench -m hydra/sweeper=optuna tasks.n_val=100 'strategy.lr=tag(log,interval(1e-4,1e-2))'",
             "  clbench-best <sweep dir> seed=0,1,2    the best trial's config on the test split, "
             "mean ± std",
             "  clbench-report <sweep dir>             best config, trials table, history and "
             "importance plots",
             "  continue a killed search: the same command with hydra.sweep.dir=<its dir>",
             "  search.objective               val.<stat> or val.<metric>.<stat> (default val.maa), "
             "stat one of",
             f"                                 {', '.join(list(STATS) + list(ALIASES))}"]
    path = Path(conf_dir) / "hydra" / "sweeper" / "optuna.yaml"
    for line in path.read_text().splitlines() if path.is_file() else []:
        found = re.match(r"^([a-z_]+):[^#]*#\s*(.+)$", line)
        if found and not line.startswith("_"):
            lines.append(f"  hydra.sweeper.{found.group(1).ljust(17)}{found.group(2).strip()}")
    return "\n".join(lines)


def help_template(conf_dir: str | Path) -> str:
    """The whole ``--help`` text (a :class:`string.Template`: ``$$`` for a literal ``$``)."""
    import textwrap

    from cl_bench.config import STREAM_KEYS

    stream = ", ".join(f"tasks.{k}" for k in STREAM_KEYS)
    keys = (f"Keys: {_schema_keys()}, {stream} (every "
            "stream: validation samples per task, the first k tasks only), and every key of the "
            "chosen group options (clbench <overrides> --cfg job prints the composed config).")
    body = "\n".join([
        USAGE, groups_text(conf_dir), "",
        textwrap.fill(keys, width=100, subsequent_indent="  "),
        "", search_text(conf_dir).replace("$", "$$"), "",
        "Shell completion (bash; zsh and fish likewise): eval \"$$(clbench -sc install=bash)\"",
        "README.md: the option tables, results files and metrics conventions;",
        "clbench --hydra-help: Hydra's own flags (--cfg, --info, --multirun, ...)."])
    return body
