"""``clbench-probe``: closed-form probes of a frozen backbone's stages, beside a random backbone.

The library is :mod:`cl_bench.representation_probes`; this module only composes the config,
prints the table and writes the files (:data:`USAGE`).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Sequence

PROG = "clbench-probe"

#: the command's own keys (``probe.<key>=value``), their defaults and what they mean
PROBE_KEYS = {
    "out": (None, "write the table as CSV there, and as JSON beside it (.json)"),
    "max_voxels": (4000, "training voxels per subject and stage of the segmentation probes (>= 2)"),
    "batch_size": (4, "volumes per backbone pass (> 0)"),
}

USAGE = f"""\
usage: {PROG} [OVERRIDE ...]

Closed-form probes of what a frozen backbone's stages know, on the validation subjects of the
configured stream (tasks.n_val; the test subjects, said in the header, where a task has none),
beside the same backbone config at random initialisation (backbone.weights=null, built after
torch.manual_seed(seed)):
  regression     per stage, the global average -> standardised -> ridge (alpha by
                 leave-one-out on the training subjects): validation MAE in the task's units
                 and R^2; a `mean` row is the training mean's MAE
  segmentation   per stage, a per-voxel logistic regression on the stage's grid (C=1, not
                 tuned), up-sampled trilinearly: validation Dice as in R
Stages: stage0..stage4 (Swin encoder, 1/2 .. 1/32 of the side) and `decoder` (a shared
decoder's full-resolution features, when the backbone has one). better = the backbone beats
random init (lower MAE, higher Dice / R^2).

Overrides are clbench's (the same config tree, conf/; `clbench --help` lists it), e.g.
  {PROG}                                            the default backbone and stream
  {PROG} backbone.weights=/path/ckpt.safetensors    another checkpoint
  {PROG} tasks.n_val=16 seed=1 hardware.num_threads=1
plus the command's own keys, taken out before the config is composed:
""" + "".join(f"  probe.{k}={'' if d is None else d}".ljust(30) + f"{h}\n"
              for k, (d, h) in PROBE_KEYS.items()) + f"""\
The backbone must have staged feature maps (backbone=swin_unetr). A user error prints one line
`{PROG}: error: ...` and exits with code 2.
"""


def split_probe_args(args: Sequence[str]) -> tuple[dict, list[str]]:
    """``(probe settings, the other overrides)``: ``probe.<key>=v`` / ``+probe.<key>=v`` taken
    out of ``args`` and parsed (:data:`PROBE_KEYS`' defaults filled in).

    Raises:
        ConfigError: an unknown ``probe.`` key or a value out of range, naming it.
    """
    from cl_bench.errors import ConfigError

    settings = {k: d for k, (d, _) in PROBE_KEYS.items()}
    rest = []
    for arg in args:
        key, eq, value = arg.lstrip("+").partition("=")
        if not key.startswith("probe.") and key != "probe":
            rest.append(arg)
            continue
        name = key[len("probe."):]
        if name not in PROBE_KEYS or not eq:
            raise ConfigError(f"{arg}: unknown key; the command's keys: "
                              + ", ".join(f"probe.{k}=..." for k in PROBE_KEYS))
        if name == "out":
            settings[name] = None if value in ("", "null", "None") else value
            continue
        low = 2 if name == "max_voxels" else 1
        try:
            settings[name] = int(value)
        except ValueError:
            settings[name] = None
        if settings[name] is None or settings[name] < low:
            raise ConfigError(f"probe.{name}: expected an int >= {low}, got {value!r}")
    return settings, rest


def compose_config(overrides: Sequence[str]):
    """The ``clbench`` config of ``overrides`` (Hydra's compose API on :data:`CONF_DIR`), its
    top-level ranges and ``tasks`` / ``backbone`` keys checked as a run checks them.

    Raises:
        ClBenchError: one line naming the bad override or key.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from cl_bench.composition import CONF_DIR, composition_error_line
    from cl_bench.config import check_node, spell_stream_keys, validate
    from cl_bench.errors import ClBenchError

    overrides = spell_stream_keys(list(overrides), CONF_DIR)  # tasks.max_tasks as --help spells it
    if GlobalHydra.instance().is_initialized():  # an app ran in this process before (tests)
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except HydraException as e:
        raise ClBenchError(composition_error_line(e, list(overrides))) from None
    validate(cfg)
    for key in ("tasks", "backbone"):
        check_node(cfg[key], key)
    return cfg


def _number(metric: str, value) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.2f}" if metric == "mae" else f"{value:.3f}"


def format_table(table) -> str:
    """The printed table: ``task stage metric backbone random better [note]`` (``better``:
    yes / no, blank for the ``mean`` rows; ``note`` only if a row has one), MAE to 2 decimals
    (units in :func:`header`), Dice and R² to 3."""
    import pandas as pd
    from tabulate import tabulate

    shown = pd.DataFrame({
        "task": table["task"], "stage": table["stage"],
        "metric": table["metric"],
        "backbone": [_number(m, v) for m, v in zip(table["metric"], table["value"])],
        "random": [_number(m, v) for m, v in zip(table["metric"], table["random"])],
        "better": ["" if b is None or b != b else ("yes" if b else "no")
                   for b in table["better"]],
        "note": table["note"].fillna(""),
    })
    if not shown["note"].any():
        shown = shown.drop(columns="note")
    align = ["right" if c in ("backbone", "random") else "left" for c in shown.columns]
    return tabulate(shown.values.tolist(), headers=list(shown.columns), tablefmt="plain",
                    disable_numparse=True, colalign=align).rstrip()


def header(cfg, table, settings: dict, seconds: float) -> str:
    """Two lines: what was probed (backbone, weights, tasks, seed) and on which split."""
    weights = cfg.backbone.get("weights")
    weights = "null" if weights is None else weights
    units = {f"{u} ({t})" for t, u in zip(table["task"], table["units"]) if u}
    splits = []
    for task, rows in table.groupby("task", sort=False):
        first = rows.iloc[0]
        splits.append(f"{task} {int(first.n_train)} train / {int(first.n_eval)} {first.split}")
    split = "/".join(sorted(set(table["split"]))) or "-"
    return (f"{PROG}: backbone {cfg.backbone.get('name', cfg.backbone._target_)} (weights: "
            f"{weights}) vs random init (weights: null, torch seed {cfg.seed}); tasks "
            f"{cfg.tasks.get('name', cfg.tasks._target_)}, size {cfg.tasks.get('size', '?')}; "
            f"max_voxels {settings['max_voxels']}; {seconds:.0f} s\n"
            f"split: {split} ({'; '.join(splits)} subjects); frozen features, ridge (regression) "
            f"and per-voxel logistic (segmentation) probes"
            + (f"; MAE in {', '.join(sorted(units))}" if units else ""))


def write_outputs(table, out: str, cfg, settings: dict, overrides: Sequence[str]) -> list[Path]:
    """Write ``table`` as CSV to ``out`` (its suffix replaced by ``.csv``) and as JSON beside it
    (``{"config": ..., "rows": [...]}``, NaN as null); atomically (:mod:`cl_bench.files`).

    Raises:
        StorageError: a file could not be written.
    """
    from omegaconf import OmegaConf

    from cl_bench.files import atomic_write, write_json

    path = Path(out)
    csv_path, json_path = path.with_suffix(".csv"), path.with_suffix(".json")
    atomic_write(csv_path, lambda tmp: table.to_csv(tmp, index=False))
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in table.astype(object).to_dict("records")]
    write_json(json_path, {
        "command": [PROG, *overrides],
        "backbone": OmegaConf.to_container(cfg.backbone, resolve=True),
        "tasks": OmegaConf.to_container(cfg.tasks, resolve=True),
        "seed": int(cfg.seed), "probe": settings, "rows": rows})
    return [csv_path, json_path]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``clbench-probe [OVERRIDE ...]`` (:data:`USAGE`).

    Prints the header and the table to stdout, writes ``probe.out`` if given. A user mistake
    (a bad override or key, a missing or misfitting ``backbone.weights``, a backbone without
    staged feature maps) prints one line ``clbench-probe: error: ...`` on stderr and exits with
    code 2; Ctrl-C exits with 130.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    flags = [a for a in args if a.startswith("-")]
    if flags:
        print(f"{PROG}: error: {flags[0]}: unknown option; usage: {PROG} [OVERRIDE ...] (--help)",
              file=sys.stderr)
        sys.exit(2)
    from cl_bench.errors import ClBenchError

    try:
        settings, overrides = split_probe_args(args)
        cfg = compose_config(overrides)
        if settings["out"]:
            from cl_bench.config import check_creatable

            check_creatable(Path(settings["out"]).resolve().parent, "probe.out")
        import torch

        from cl_bench.cli import quiet_libraries
        from cl_bench.representation_probes import probe_table

        quiet_libraries()
        torch.set_num_threads(int(cfg.hardware.num_threads))
        start = time.perf_counter()
        table = probe_table(cfg, batch_size=settings["batch_size"],
                            max_voxels=settings["max_voxels"])
        print(header(cfg, table, settings, time.perf_counter() - start))
        print(format_table(table))
        if settings["out"]:
            paths = write_outputs(table, settings["out"], cfg, settings, args)
            print(f"{PROG}: wrote {' and '.join(map(str, paths))}")
    except ClBenchError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{PROG}: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
