"""What the runner's per-step cost over a plain loop is made of (issue 25, provenance script).

Measurement only: in one process, the first task of ``bench_overhead.py``'s ``split_mnist_cil``
workload (300 steps, one thread, fp32) runs by hand (``plain_steps``) and through the runner's
``cl_bench.training.fit_task``, alternately, from the same weights and seed; then ``fit_task``
again with one of cl_bench's own per-step pieces taken out by patching the module in this
process (the progress callback, the batches' sample indices, the Ctrl-C check hook). What is
left over the plain loop with all of them in is Lightning's fit loop. A second part times
one-step fits, the per-task fixed cost of a new Trainer (``--rounds`` of each).

    .venv/bin/python results/reference/bench/swin_speed_options/floor_parts.py --rounds 7
"""
import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_overhead as bo  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

import cl_bench.training as tr  # noqa: E402
from cl_bench.cli import quiet_libraries  # noqa: E402


class NoIndex(tr.IndexedDataset):
    """The training batches without the ``"index"`` key (what IndexedDataset adds)."""

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, indices):
        return {k: v for k, v in super().__getitems__(indices).items() if k != "index"}


ORIG = dict(pc=tr.progress_callback, ds=tr.IndexedDataset, tbe=tr.LitTask.on_train_batch_end)
VARIANTS = {"runner": {}, "without the progress callback": {"pc": lambda *a, **k: Callback()},
            "without sample indices": {"ds": NoIndex},
            "without the Ctrl-C check hook": {"tbe": None}}


def patch(p: dict) -> None:
    tr.progress_callback = p.get("pc", ORIG["pc"])
    tr.IndexedDataset = p.get("ds", ORIG["ds"])
    if "tbe" in p:
        tr.LitTask.on_train_batch_end = L_HOOK  # Lightning's own (empty) hook
    else:
        tr.LitTask.on_train_batch_end = ORIG["tbe"]


L_HOOK = tr.L.LightningModule.on_train_batch_end


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    quiet_libraries()
    for steps in (300, 1):
        cfg, model, stream, strategy = bo.setup(bo.WORKLOADS["split_mnist_cil"] + bo.COMMON
                                                + [f"train.max_steps={steps}"])
        task = stream[0]
        bo.begin_task(cfg, model, strategy, 0, task)
        start = copy.deepcopy(model.state_dict())

        def run(variant):
            model.load_state_dict(start)
            bo.seed_all(cfg.seed)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                if variant is None:
                    bo.plain_steps(cfg, model, strategy, 0, task)
                else:
                    patch(VARIANTS[variant])
                    try:
                        tr.fit_task(cfg, Path(tmp), model, strategy, task, 0, len(stream), None,
                                    "32-true")
                    finally:
                        patch({})
                return (time.perf_counter() - t0) * 1000

        names = ["plain"] + (list(VARIANTS) if steps > 1 else ["runner"])
        ms = {n: [] for n in names}
        for _ in range(args.rounds):
            for n in names:
                ms[n].append(run(None if n == "plain" else n))
        plain = statistics.median(ms["plain"])
        unit = "ms/step" if steps > 1 else "ms per 1-step fit"
        print(f"\n{steps} step(s) x {args.rounds} rounds (medians, {unit})")
        for n in names:
            m = statistics.median(ms[n])
            print(f"  {n:32s} {m / steps:8.3f}  (+{(m - plain) / steps:.3f})")


if __name__ == "__main__":
    main()
