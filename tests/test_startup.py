"""The ``clbench`` command's start-up and exit: the garbage collector paused while the runner is
imported, the imported objects frozen, collection on again for the run (cl_bench.cli.console)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

DIGITS = ["tasks=digits", "train.max_steps=2", "train.batch_size=16", "train.progress_bar=false",
          "logger=none", "hardware.num_threads=1"]

PROBE = textwrap.dedent("""
    import gc, json, sys
    full = []  # full (generation 2) collections: whether the run had started
    gc.callbacks.append(lambda phase, info: info["generation"] == 2 and phase == "stop" and
                        full.append(started))
    started = False
    import cl_bench.lock
    _claim = cl_bench.lock.RunLock.__enter__
    def claim(self):  # the run starts once its directory is claimed (the imports are done)
        global started
        started = True
        return _claim(self)
    cl_bench.lock.RunLock.__enter__ = claim
    from cl_bench import cli
    sys.argv = ["clbench", *json.loads(sys.argv[1])]
    try:
        {call}
    except SystemExit as e:
        assert not e.code, e.code
    print(json.dumps({{"full_before_run": full.count(False),
                      "full_in_run": full.count(True), "enabled": gc.isenabled(),
                      "frozen": gc.get_freeze_count(),
                      "runner": "cl_bench.runner" in sys.modules}}))
""")


def _probe(tmp_path, call: str) -> dict:
    args = DIGITS + [f"results_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/run"]
    proc = subprocess.run([sys.executable, "-c", PROBE.format(call=call), json.dumps(args)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "matrix.csv").is_file()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_command_imports_the_runner_without_full_collections_then_collects_again(tmp_path):
    got = _probe(tmp_path, "cli.console()")
    assert got["runner"]
    assert got["full_before_run"] == 0  # without the pause: about eight, ~0.8 s
    assert got["enabled"]  # the run itself is collected as usual
    assert got["frozen"] > 100_000, got  # torch, MONAI, Lightning... in the permanent generation


def test_main_called_in_a_process_of_its_own_leaves_its_collector_alone(tmp_path):
    got = _probe(tmp_path, "cli.main()")
    assert got["runner"] and got["enabled"]
    assert got["frozen"] == 0
    assert got["full_before_run"] > 0, got  # the imports collected as in any process
