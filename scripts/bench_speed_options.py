#!/usr/bin/env python
"""Step time of the main job under each speed option, measured side by side.

Builds one :class:`bench_step_profile.StepBench` per option (the main job's model, strategy and
task as the runner builds them, plus the option) and times their training steps *interleaved*:
round after round, one step of each option in turn. Whatever else the machine does then slows
every option alike, so the ratios hold on a busy machine too (the absolute times do not).
Both tasks of the stream are timed (task 1 tumour_seg, task 2 brain_age).

Options (each alone against ``base``, the main job's defaults):

* ``base``: the shipped config (``hardware.precision=32-true``, fused window attention);
* ``unfused``: ``backbone.fused_attention=false`` (MONAI's explicit attention under autograd);
* ``bf16``: ``hardware.precision=bf16-mixed`` (bfloat16 autocast; fast on AMX / avx512_bf16);
* ``bf16_unfused``: both of the above;
* ``channels_last``: model and images in ``torch.channels_last_3d`` (oneDNN's preferred layout);
* ``linear_decoder``: ``backbone.decoder=linear`` (the paper-like budget; no decoder cost);
* ``narrow_decoder``: ``backbone.decoder_feature_size=6`` (half the decoder width);
* ``compile``: ``torch.compile`` of the Swin encoder and the heads (its compile time is
  reported apart; off unless ``--compile``, it takes minutes).

Prints and writes (``--out``: Markdown + JSON) median step times, ratios to ``base`` and the CPU.
Validation quality of an option is measured by full runs, not here (results/reference/bench/).

    python scripts/bench_speed_options.py --rounds 8 --out results/reference/bench/speed_options
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step_profile import StepBench, cpu_name  # noqa: E402

OPTIONS = {
    "base": ([], {}),
    "unfused": (["backbone.fused_attention=false"], {}),
    "bf16": (["hardware.precision=bf16-mixed"], {}),
    "bf16_unfused": (["hardware.precision=bf16-mixed", "backbone.fused_attention=false"], {}),
    "channels_last": ([], {"channels_last": True}),
    "linear_decoder": (["backbone.decoder=linear"], {}),
    "narrow_decoder": (["backbone.decoder_feature_size=6"], {}),
    "compile": ([], {"compile": True}),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", default="lora")
    p.add_argument("--options", nargs="+", default=[o for o in OPTIONS if o != "compile"])
    p.add_argument("--compile", action="store_true", help="add the compile option")
    p.add_argument("--tasks", nargs="+", type=int, default=[0, 1], help="task indices")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every option")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    options = list(args.options) + (["compile"] if args.compile else [])
    if "base" not in options:
        options.insert(0, "base")
    rows = []
    for t in args.tasks:
        benches, setup_s = {}, {}
        for name in options:
            over, kw = OPTIONS[name]
            t0 = time.perf_counter()
            benches[name] = StepBench(args.strategy, [*args.overrides, *over], t, **kw)
            for _ in range(args.warmup):  # includes torch.compile's compilation
                benches[name].step()
            setup_s[name] = time.perf_counter() - t0
        times = {name: [] for name in options}
        for _ in range(args.rounds):
            for name in options:
                _, _, phases = benches[name].step()
                times[name].append(sum(phases.values()))
        base = statistics.median(times["base"])
        task = benches["base"].task.name
        for name in options:
            med = statistics.median(times[name])
            rows.append({"task": task, "option": name, "step_ms": round(1000 * med, 1),
                         "ratio_to_base": round(med / base, 3),
                         "warmup_s": round(setup_s[name], 1)})
            print(json.dumps(rows[-1]), flush=True)
        del benches
    head = (f"CPU: {cpu_name()}, {args.threads} thread(s), strategy {args.strategy}, "
            f"median of {args.rounds} interleaved steps per option")
    lines = [head, "", "| task | option | step ms | x base | build + warm-up s |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['option']} | {r['step_ms']} | {r['ratio_to_base']} | "
              f"{r['warmup_s']} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(
            f"# Speed options, step time\n\n    python scripts/bench_speed_options.py "
            f"{' '.join(sys.argv[1:])}\n\n{text}\n")
        out.with_suffix(".json").write_text(json.dumps(
            {"cpu": cpu_name(), "threads": args.threads, "strategy": args.strategy,
             "rounds": args.rounds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
