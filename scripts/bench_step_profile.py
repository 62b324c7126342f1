#!/usr/bin/env python
"""Where one training step of the main job goes: the step split into its parts, per strategy.

For each ``--strategies`` entry, builds the default stream and model exactly as the runner does
(``clbench strategy=<s> tasks=brain_seg_age`` plus the given overrides), then on the first task
(``tumour_seg``, batch ``train.batch_size``):

1. **Phases of the real step**, timed over ``--steps`` steps after ``--warmup`` steps: data
   loading (the next batch from the task's DataLoader), forward (backbone + head), the loss,
   backward, the optimiser (``zero_grad`` + AdamW ``step``). Medians in ms.
2. **Components** (forward + backward of each module alone, on the inputs and with the
   ``requires_grad`` it got in a real step, gradient of the output a fixed random tensor):
   the patch embedding, each Swin stage (its blocks and patch merging), and each block of the
   tumour decoder (``encoder*`` at the stage resolutions, ``decoder5`` ... ``decoder1`` from 1/16
   up to full resolution, the 1x1 ``out``), plus the loss. Their sum is compared with the
   measured forward + loss + backward (the rest is autograd's own work between modules).
3. **Top operators** by self CPU time over 3 steps (``torch.profiler``).

Prints a table and writes it (Markdown + JSON) to ``--out``; the CPU is named in both. Timings
are wall clock on ``--threads`` threads: run it on an otherwise idle machine.

    python scripts/bench_step_profile.py --out results/reference/bench/step_profile
    python scripts/bench_step_profile.py --strategies lora --threads 2 hardware.precision=bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from cl_bench.hardware import cpu_name, resolve_precision  # noqa: E402


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


class StepBench:
    """One task's training step of a clbench config, built as the runner builds it.

    ``StepBench("lora", ["hardware.precision=bf16-mixed"], task_index=0)``: the stream, the
    model and the strategy from :func:`cl_bench.runner.build_run` (strategy set up; the task
    begun and activated here), the task loss, AdamW on the strategy's
    parameter groups, a shuffled DataLoader of the task's training set, and bf16 autocast if
    ``hardware.precision`` says so. ``channels_last`` puts model and images in
    ``torch.channels_last_3d``; ``compile`` wraps the Swin encoder and the heads in
    ``torch.compile`` (in place, ``nn.Module.compile``); ``attention`` (a dict) sets those
    attributes on every fused window attention (:class:`~cl_bench.models.swin.FusedWindowAttention`:
    ``seam_value``, MONAI's is -100; ``reuse_bias``).
    :meth:`step` runs one step and returns its phase times (s).
    """

    PHASES = ("data", "forward", "loss", "backward", "optimiser")

    def __init__(self, strategy_name: str, overrides: list[str], task_index: int = 0,
                 channels_last: bool = False, compile: bool = False,
                 attention: dict | None = None):
        import torch
        from hydra import compose, initialize_config_dir
        from monai.networks.nets.swin_unetr import SwinTransformer
        from torch.utils.data import DataLoader

        from cl_bench.models.losses import TaskLoss
        from cl_bench.models.swin import FusedWindowAttention, SwinDecoder
        from cl_bench.runner import build_run

        threads = torch.get_num_threads()  # the caller's (--threads), kept through the build
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[f"strategy={strategy_name}",
                                               f"hardware.num_threads={threads}", *overrides])
        self.cfg = cfg
        model, strategy, stream, _ = build_run(cfg)  # as the runner builds it
        for t in range(task_index + 1):  # earlier tasks begun and ended untrained
            if t:
                strategy.after_task(t - 1, stream[t - 1])
            model.begin_task(stream[t])
            strategy.before_task(t, stream[t])
        task = stream[task_index]
        strategy.activate(task)
        model.train()
        for m in model.modules():
            if isinstance(m, FusedWindowAttention):
                for name, value in (attention or {}).items():
                    setattr(m, name, value)
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last_3d)
        if compile:
            for m in model.modules():
                if isinstance(m, (SwinTransformer, SwinDecoder)):
                    m.compile()
        self.model, self.strategy, self.task = model, strategy, task
        self.loss_fn = TaskLoss(task, cfg.train.class_weights)
        self.opt = torch.optim.AdamW(strategy.param_groups(task),
                                     weight_decay=strategy.weight_decay)
        self.loader = DataLoader(task.train, batch_size=cfg.train.batch_size, shuffle=True)
        self._batches = iter(())
        self.precision = resolve_precision(str(cfg.hardware.precision), "cpu", model.encoder)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                                       enabled=self.precision.startswith("bf16"))
        # the runner's deterministic mode (Lightning's Trainer(deterministic=...)) and its
        # NaN-filling switch, set again at every step: options interleave
        self.deterministic = bool(cfg.hardware.deterministic)
        self.fill = bool(cfg.hardware.fill_uninitialized_memory)
        self.trainable = sum(p.numel() for g in strategy.param_groups(task) for p in g["params"])

    def next_batch(self) -> dict:
        import torch
        try:
            batch = next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            batch = next(self._batches)
        if self.channels_last and batch["image"].dim() == 5:
            batch = {**batch, "image": batch["image"].contiguous(
                memory_format=torch.channels_last_3d)}
        return batch

    def step(self) -> tuple[dict, object, dict]:
        """One training step: ``(batch, output, {phase: seconds})``."""
        import torch
        torch.use_deterministic_algorithms(self.deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = self.fill
        t0 = time.perf_counter()
        batch = self.next_batch()
        t1 = time.perf_counter()
        with self.autocast:
            out = self.model(batch["image"], self.task.name)
            t2 = time.perf_counter()
            loss = self.loss_fn(out, batch["label"])
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        return batch, out, dict(zip(self.PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)))


def profile_strategy(strategy_name: str, overrides: list[str], threads: int, warmup: int,
                     steps: int, reps: int) -> dict:
    """The three tables above for one strategy: ``{"phases_ms", "components", "top_ops", ...}``."""
    import torch
    from monai.networks.nets.swin_unetr import SwinTransformer

    from cl_bench.models.swin import SwinDecoder

    torch.set_num_threads(threads)
    bench = StepBench(strategy_name, overrides)
    model, task, loss_fn, opt = bench.model, bench.task, bench.loss_fn, bench.opt
    autocast, precision = bench.autocast, bench.precision
    phases = {k: [] for k in StepBench.PHASES}

    def step(record: bool):
        batch, out, times = bench.step()
        if record:
            for k, v in times.items():
                phases[k].append(v)
        return batch, out

    for _ in range(warmup):
        step(False)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(True)
    step_ms = 1000 * (time.perf_counter() - t0) / steps
    phase_ms = {k: 1000 * statistics.median(v) for k, v in phases.items()}

    # components: capture each module's inputs in one real forward, then time it alone
    swin = next(m for m in model.modules() if isinstance(m, SwinTransformer))
    decoders = [(n, m) for n, m in model.named_modules() if isinstance(m, SwinDecoder)]
    # the task's own decoder (backbone.decoder=unetr) or the backbone's shared one
    decoder = next((m for n, m in decoders if task.name in n), decoders[0][1])
    parts = [("backbone: patch embedding (1/2)", swin.patch_embed)]
    parts += [(f"backbone: stage {k} (Swin blocks + merging, 1/{2 ** (k + 1)})",
               getattr(swin, f"layers{k}")[0]) for k in range(1, 5)]
    res = {"encoder1": "1", "encoder2": "1/2", "encoder3": "1/4", "encoder4": "1/8",
           "encoder5": "1/16", "encoder10": "1/32", "decoder5": "1/32->1/16",
           "decoder4": "1/16->1/8", "decoder3": "1/8->1/4", "decoder2": "1/4->1/2",
           "decoder1": "1/2->1", "out": "1"}
    parts += [(f"decoder: {n} ({res.get(n, '?')})", m) for n, m in decoder.named_children()
              if not isinstance(m, torch.nn.Identity)]
    captured: dict[str, tuple] = {}
    hooks = [m.register_forward_hook(
        (lambda name: lambda mod, args, out: captured.__setitem__(name, args))(name))
        for name, m in parts]
    batch, out = step(False)
    for h in hooks:
        h.remove()
    gen = torch.Generator().manual_seed(0)

    def timed(module, args):
        inputs = [a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor)
                  else a for a in args]

        def run():
            with autocast:
                y = module(*inputs)
            y = y[0] if isinstance(y, (tuple, list)) else y
            if y.requires_grad:
                y.backward(grad)
        with autocast:
            y0 = module(*inputs)
        y0 = y0[0] if isinstance(y0, (tuple, list)) else y0
        grad = torch.randn(y0.shape, generator=gen, dtype=y0.dtype)
        run()
        ms = _median_ms(run, reps)
        opt.zero_grad(set_to_none=True)
        for a in inputs:
            if isinstance(a, torch.Tensor):
                a.grad = None
        return ms, y0.requires_grad

    components = []
    for name, m in parts:
        if name not in captured:
            continue
        ms, grads = timed(m, captured[name])
        components.append({"part": name, "ms": round(ms, 1), "backward": grads})
    logits = out.detach().requires_grad_(True)

    def loss_run():
        loss_fn(logits, batch["label"]).backward()
    loss_run()
    components.append({"part": "loss (DiceCE)", "ms": round(_median_ms(loss_run, reps), 1),
                       "backward": True})

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step(False)
    top = [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / 3, 1),
            "calls_per_step": e.count // 3}
           for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]]
    trainable = bench.trainable
    return {"strategy": strategy_name, "overrides": overrides, "step_ms": round(step_ms, 1),
            "phases_ms": {k: round(v, 1) for k, v in phase_ms.items()},
            "components": components, "top_ops": top, "trainable_params": trainable,
            "precision": precision}


def to_markdown(results: list[dict], threads: int) -> str:
    """The tables of :func:`profile_strategy` results, one section per strategy."""
    lines = [f"CPU: {cpu_name()}, {threads} thread(s); times in ms per step (batch of the "
             "main job, task 1 tumour_seg)", ""]
    for r in results:
        f_l_b = sum(r["phases_ms"][k] for k in ("forward", "loss", "backward"))
        lines += [f"## {r['strategy']} {' '.join(r['overrides'])}".rstrip(), "",
                  f"step {r['step_ms']} ms ({r['precision']}, {r['trainable_params']:,} trainable "
                  "parameters)", "", "| phase | ms | % of step |", "|---|---:|---:|"]
        for k, v in r["phases_ms"].items():
            lines.append(f"| {k} | {v} | {100 * v / r['step_ms']:.0f} |")
        total = sum(c["ms"] for c in r["components"])
        lines += ["", "| component (forward + backward, alone) | ms | % of fwd+loss+bwd |",
                  "|---|---:|---:|"]
        for c in r["components"]:
            note = "" if c["backward"] else " (no backward)"
            lines.append(f"| {c['part']}{note} | {c['ms']} | {100 * c['ms'] / f_l_b:.0f} |")
        lines += [f"| sum of components | {total:.1f} | {100 * total / f_l_b:.0f} |",
                  f"| measured forward + loss + backward | {f_l_b:.1f} | 100 |", "",
                  "| top operator (self CPU) | ms per step | calls |", "|---|---:|---:|"]
        lines += [f"| `{o['op']}` | {o['self_ms_per_step']} | {o['calls_per_step']} |"
                  for o in r["top_ops"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategies", nargs="+", default=["lora", "seq_ft"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--reps", type=int, default=5, help="repetitions per component")
    p.add_argument("--out", default=None, help="write <out>.md and <out>.json")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone.decoder=linear")
    args = p.parse_args(argv)
    results = [profile_strategy(s, args.overrides, args.threads, args.warmup, args.steps,
                                args.reps) for s in args.strategies]
    text = to_markdown(results, args.threads)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(f"# Per-step profile of the main job\n\n"
                                          f"    python scripts/bench_step_profile.py "
                                          f"{' '.join(sys.argv[1:])}\n\n{text}")
        out.with_suffix(".json").write_text(json.dumps(
            {"cpu": cpu_name(), "threads": args.threads, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
