#!/usr/bin/env python
"""Step time of the main job under each speed option, measured side by side.

Builds one :class:`bench_step_profile.StepBench` per option (the main job's model, strategy and
task as the runner builds them, plus the option) and times their training steps *interleaved*:
round after round, one step of each option in turn. Whatever else the machine does then slows
every option alike, so the ratios hold on a busy machine too (the absolute times do not).
Both tasks of the stream are timed (task 1 tumour_seg, task 2 brain_age), on the protocol
these options were chosen for, issue 25's (:data:`ISSUE25`, put before every option's keys).

Every option runs in the runner's deterministic mode (``hardware.deterministic``); the tables
made before b27d46a ran without it (their ratios hold for that bench).

Options (ratios are to ``before``, the main job as it was: fp32, MONAI's explicit attention):

* ``before``: ``hardware.precision=32-true backbone.fused_attention=false``;
* ``fp32``: fp32 with the fused window attention (``backbone.fused_attention=true``, default);
* ``bf16_unfused``: bfloat16 autocast (``hardware.precision=bf16-mixed``), explicit attention;
* ``bf16``: bfloat16 autocast and fused attention: the shipped default on a CPU with native
  bfloat16 (``hardware.precision=auto``);
* ``bf16_channels_last``: ``bf16`` with model and images in ``torch.channels_last_3d``;
* ``bf16_linear_decoder``: ``bf16`` with ``backbone.decoder=linear`` (the paper-like budget);
* ``bf16_narrow_decoder``: ``bf16`` with ``backbone.decoder_feature_size=6`` (half the width);
* ``seq_ft_before`` / ``seq_ft_bf16``: strategy seq_ft as ``before`` / ``bf16`` (what a LoRA
  step costs against full fine-tuning);
* ``bf16_fp32_decoder``: ``bf16`` with the segmentation decoder in float32
  (``backbone.decoder_fp32=true``): bfloat16 for the encoder only;
* ``bf16_fp32_decoder_cl``: that, with the decoder in ``channels_last_3d``
  (``backbone.decoder_channels_last=true``); ``bf16_decoder_cl``: ``bf16`` with only the decoder
  in ``channels_last_3d`` (``bf16_channels_last`` puts the encoder there too);
* ``default``: issue 25's shipped defaults (``hardware.precision=auto``: ``bf16_fp32_decoder_cl`` on a
  CPU with native bfloat16, fp32 with the fp32 channels_last decoder elsewhere);
  ``default_seams_100``: that with the shifted-window seams masked by MONAI's -100 instead of
  -inf and the shifted-window bias built at every step (the default before 5e3e50d: same
  results to the bit, see ``FusedWindowAttention.seam_value``); ``default_uncached``: the
  default with only the bias built at every step (``FusedWindowAttention.reuse_bias``);
  ``default_filled``: the default with PyTorch's NaN-filling of new tensors under deterministic
  mode (``hardware.fill_uninitialized_memory=true``, the default before it had a key);
* ``bf16_compile``: ``bf16`` plus ``torch.compile`` of encoder and heads (``--compile``; its
  compilation, minutes, is in the build + warm-up column).

Prints and writes (``--out``: Markdown + JSON) median step times, ratios to ``before`` and the CPU.
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
from bench_step_profile import StepBench, cpu_name

FP32, BF16 = "hardware.precision=32-true", "hardware.precision=bf16-mixed"
UNFUSED = "backbone.fused_attention=false"


def _decoder(fp32: bool = False, channels_last: bool = False) -> list[str]:
    """The decoder keys spelt out: the options before issue 25's decoder change ran the decoder
    in the encoder's precision and contiguous (both keys false), as ``before`` must."""
    return [f"backbone.decoder_fp32={str(fp32).lower()}",
            f"backbone.decoder_channels_last={str(channels_last).lower()}"]


#: the protocol every option is measured on (issue 25's main job: a Swin UNETR decoder per task,
#: the final-stage age head with per-subject layer norm, the SSL encoder), given before the
#: option's own keys; issue 37 changed those defaults (``bench_step_profile.py`` profiles them)
ISSUE25 = ["backbone.decoder=unetr", "backbone.regression_stages=[4]",
           "backbone.regression_norm=layer", "backbone.weights=swin_brain_ssl"]


#: the options measured before hardware.fill_uninitialized_memory had a key ran with PyTorch's
#: NaN-filling of new tensors (its default)
FILLED = "hardware.fill_uninitialized_memory=true"
OLD = [*_decoder(), FILLED]
#: name -> (overrides, StepBench keywords, strategy or None for --strategy)
OPTIONS = {
    "before": ([FP32, UNFUSED, *OLD], {}, None),
    "fp32": ([FP32, *OLD], {}, None),
    "bf16_unfused": ([BF16, UNFUSED, *OLD], {}, None),
    "bf16": ([BF16, *OLD], {}, None),
    "bf16_channels_last": ([BF16, *OLD], {"channels_last": True}, None),
    "bf16_linear_decoder": ([BF16, "backbone.decoder=linear", *OLD], {}, None),
    "bf16_narrow_decoder": ([BF16, "backbone.decoder_feature_size=6", *OLD], {}, None),
    "seq_ft_before": ([FP32, UNFUSED, *OLD], {}, "seq_ft"),
    "seq_ft_bf16": ([BF16, *OLD], {}, "seq_ft"),
    "bf16_compile": ([BF16, *OLD], {"compile": True}, None),
    "bf16_fp32_decoder": ([BF16, *_decoder(fp32=True), FILLED], {}, None),
    "bf16_fp32_decoder_cl": ([BF16, *_decoder(fp32=True, channels_last=True), FILLED], {}, None),
    "bf16_decoder_cl": ([BF16, *_decoder(channels_last=True), FILLED], {}, None),
    "default": ([], {}, None),
    "default_seams_100": ([], {"attention": {"seam_value": -100.0, "reuse_bias": False}}, None),
    "default_uncached": ([], {"attention": {"reuse_bias": False}}, None),
    "default_filled": ([FILLED], {}, None),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", default="lora")
    p.add_argument("--options", nargs="+", default=[o for o in OPTIONS if o != "bf16_compile"])
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
    options = list(args.options) + (["bf16_compile"] if args.compile else [])
    if "before" not in options:
        options.insert(0, "before")
    rows = []
    for t in args.tasks:
        benches, setup_s = {}, {}
        for name in options:
            over, kw, strategy = OPTIONS[name]
            t0 = time.perf_counter()
            benches[name] = StepBench(strategy or args.strategy,
                                      [*ISSUE25, *args.overrides, *over], t, **kw)
            for _ in range(args.warmup):  # includes torch.compile's compilation
                benches[name].step()
            setup_s[name] = time.perf_counter() - t0
        times = {name: [] for name in options}
        for _ in range(args.rounds):
            for name in options:
                _, _, phases = benches[name].step()
                times[name].append(sum(phases.values()))
        base = statistics.median(times["before"])
        task = benches["before"].task.name
        for name in options:
            med = statistics.median(times[name])
            rows.append({"task": task, "option": name, "step_ms": round(1000 * med, 1),
                         "ratio_to_before": round(med / base, 3),
                         "warmup_s": round(setup_s[name], 1)})
            print(json.dumps(rows[-1]), flush=True)
        del benches
    head = (f"CPU: {cpu_name()}, {args.threads} thread(s), strategy {args.strategy}, "
            f"median of {args.rounds} interleaved steps per option")
    lines = [head, "", "| task | option | step ms | x before | build + warm-up s |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['option']} | {r['step_ms']} | {r['ratio_to_before']} | "
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
