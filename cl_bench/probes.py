"""Two probes of what a run's backbone does, written beside R after every task (``probes.json``).

* **Movement**: for each stage of the backbone, ``||W - W_0|| / ||W_0||`` over its weights
  (Frobenius norm of all its parameters together), ``W_0`` the backbone at the start of the
  stream, after every task; and, for a strategy with per-task peft LoRA adapters, the same
  ratio for the task's adapter, ``||scale * B A|| / ||W_0||`` (Hu et al. 2021, arXiv
  2106.09685), whose base weights do not move. A strategy that "fine-tunes the backbone" but
  moves only its first stage shows here.
* **Reliance** (segmentation decoders on the stages of a Swin encoder): the first segmentation
  task's Dice with each input of its decoder (each encoder stage, stages 1-4 together, every
  stage but one, and the raw image when the decoder has Swin UNETR's image skip) replaced by
  that input's mean over the task's training samples (a voxel-wise mean map, on the current
  backbone; before a shared decoder): an ablation by mean substitution,
  as in the "mean ablation" of interpretability work (e.g. Wang et al. 2022, arXiv 2211.00593).
  A decoder that keeps its Dice without stages 1-4 segments from the stage-0 patch embedding
  (a linear re-encoding of the image) and does not test the foundation model. Scored on the
  validation subjects (``tasks.n_val``), or on the test subjects where a run has none (said in
  ``split``), in the run's precision (bfloat16 autocast where R's evaluation uses it), so its
  ``none`` entry is R's validation Dice.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from cl_bench.data.base import Task
from cl_bench.kinds import kind_spec


def stage_of(name: str) -> str:
    """The stage a backbone parameter belongs to, from its name: ``stage0`` (a Swin encoder's
    patch embedding), ``stage1``...``stage4`` (its ``layers1``...``layers4``, each with the patch
    merging that ends it), ``decoder`` (a shared Swin UNETR decoder, ``backbone.decoder=
    shared``); for other backbones the module path up to its first block index
    (``vit.blocks.3``), else its first two components (``vit.patch_embedding``)."""
    if name.startswith("decoder."):
        return "decoder"
    m = re.search(r"swinViT\.(patch_embed|layers(\d))", name)
    if m:
        return "stage0" if m.group(1) == "patch_embed" else f"stage{m.group(2)}"
    parts = name.replace(".base_layer", "").split(".")[:-1] or [name]
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return ".".join(parts[:2])


def weight_snapshot(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the encoder's own weights (peft adapters left out; names without peft's
    ``.base_layer``): the reference ``W_0`` of :func:`movement`."""
    return {n.replace(".base_layer", ""): p.detach().clone()
            for n, p in encoder.named_parameters() if "lora_" not in n}


@torch.no_grad()
def movement(encoder: nn.Module, reference: dict[str, torch.Tensor],
             adapter: str | None = None, previous: dict[str, torch.Tensor] | None = None
             ) -> dict[str, dict[str, float]]:
    """Per stage, how far the weights are from ``reference`` (see module docstring).

    Args:
        encoder: the backbone (unwrapped from peft: ``ContinualModel.encoder``).
        reference: :func:`weight_snapshot` at the start of the stream.
        adapter: a peft LoRA adapter name whose delta is measured too (None: none).
        previous: :func:`weight_snapshot` at the start of the task just trained (None: none).

    Returns:
        ``{stage: {"rel_change": float[, "rel_change_task": float][, "adapter_rel": float]}}``:
        ``||W - W_0|| / ||W_0||``, ``||W - W_task start|| / ||W_0||`` and the adapter's
        ``||dW|| / ||W_0||`` (0 = unchanged); stages in the order their parameters appear.
    """
    change: dict[str, float] = {}
    task_change: dict[str, float] = {}
    norm: dict[str, float] = {}
    for n, p in encoder.named_parameters():
        if "lora_" in n:
            continue
        key = n.replace(".base_layer", "")
        ref, w = reference[key].float(), p.detach().float()
        s = stage_of(key)
        change[s] = change.get(s, 0.0) + float((w - ref).pow(2).sum())
        norm[s] = norm.get(s, 0.0) + float(ref.pow(2).sum())
        if previous is not None:
            task_change[s] = task_change.get(s, 0.0) + float(
                (w - previous[key].float()).pow(2).sum())
    delta: dict[str, float] = {}
    if adapter is not None:
        for n, m in encoder.named_modules():
            lora_a = getattr(m, "lora_A", None)
            if isinstance(lora_a, nn.ModuleDict) and adapter in lora_a:
                s = stage_of(n + ".weight")
                delta[s] = delta.get(s, 0.0) + float(m.get_delta_weight(adapter).float()
                                                      .pow(2).sum())
    out = {}
    for s in change:
        den = max(norm[s], 1e-30) ** 0.5
        out[s] = {"rel_change": change[s] ** 0.5 / den}
        if previous is not None:
            out[s]["rel_change_task"] = task_change[s] ** 0.5 / den
        if adapter is not None:
            out[s]["adapter_rel"] = delta.get(s, 0.0) ** 0.5 / den
    return out


def _stack(dataset, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(lo, hi)]
    return (torch.stack([d["image"] for d in items]),
            torch.stack([torch.as_tensor(d["label"]) for d in items]))


def reliance_variants(n_stages: int = 5, image: bool = False) -> dict[str, frozenset]:
    """The reliance probe's ablations: ``{name: inputs replaced by their training mean}``.

    ``none`` (intact); ``stage0``...``stage4``, one stage each; ``stages1-4``, the Swin blocks'
    stages together (what is left is the patch embedding, a linear re-encoding of the image);
    ``all_but_stage1``...``all_but_stage4``, every stage but one (``all_but_stage0`` is
    ``stages1-4``); ``image`` (a decoder with Swin UNETR's raw-image skip). Stage indices,
    ``"image"`` for the image."""
    stages = range(n_stages)
    out = {"none": frozenset()}
    out.update({f"stage{k}": frozenset({k}) for k in stages})
    out[f"stages1-{n_stages - 1}"] = frozenset(range(1, n_stages))
    out.update({f"all_but_stage{k}": frozenset(set(stages) - {k}) for k in range(1, n_stages)})
    if image:
        out["image"] = frozenset({"image"})
    return out


@torch.no_grad()
def reliance(model: nn.Module, strategy, task: Task, batch_size: int = 4,
             device: str | torch.device = "cpu", bf16: bool = False) -> dict:
    """Dice of ``task``'s segmentation head with encoder stages replaced by their training means.

    The ablations are :func:`reliance_variants` (single stages and the joint rows). A head on a
    shared decoder (``backbone.decoder=shared``) gets the decoder's output on the ablated
    stages: the substitution happens before the decoder, so a decoder that could segment from
    the patch embedding alone shows it in ``stages1-4``.

    Args:
        model: a :class:`~cl_bench.models.continual.ContinualModel` on a Swin encoder (``stage_channels``);
        strategy: activates the task's adapter; task: a segmentation task; batch_size: images
        per forward pass; device: where the model is; bf16: the forward passes under bfloat16
        autocast, as R's evaluation runs them (``hardware.precision=bf16-mixed``).

    Returns:
        ``{"task", "split": "val" | "test", "dice": {"none": d, "stage0": d, ..., "stage4": d,
        "stages1-4": d, "all_but_stage1": d, ... [, "image": d]}}``, Dice in [0, 1] (mean over
        foreground labels, as in R).

    Raises:
        ValueError: a task that is not a segmentation task, or an encoder without stages.
    """
    from cl_bench.kinds import TaskScorer

    enc = model.encoder
    if kind_spec(task.kind).head != "decoder" or not hasattr(enc, "stage_channels"):
        raise ValueError(f"reliance probe: task {task.name!r} is not a segmentation task on a "
                         "staged (Swin) encoder")
    was = model.training
    model.eval()
    strategy.activate(task)
    head, to_grid = model.heads[task.name], enc.tokens_to_grid
    shared = getattr(head, "reads_decoder", False)
    variants = reliance_variants(len(enc.stage_channels), getattr(head, "image_skip", False))
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)

    def encode(x: torch.Tensor) -> list[torch.Tensor]:
        with autocast:
            return enc.encode(x) if hasattr(enc, "encode") else list(model.backbone(x)[1])

    sums: list[torch.Tensor] | None = None
    image_sum = None
    n = len(task.train)
    for i in range(0, n, batch_size):
        x, _ = _stack(task.train, i, min(i + batch_size, n))
        x = x.to(device)
        batch = [s.float().sum(0) for s in encode(x)]
        sums = batch if sums is None else [a + b for a, b in zip(sums, batch)]
        image_sum = x.sum(0) if image_sum is None else image_sum + x.sum(0)
    means = [s / n for s in sums]
    image_mean = image_sum / n
    split, data = ("val", task.val) if task.val is not None else ("test", task.test)
    scorers = {k: TaskScorer(task) for k in variants}
    for i in range(0, len(data), batch_size):
        x, label = _stack(data, i, min(i + batch_size, len(data)))
        x = x.to(device)
        stages = encode(x)
        for k, scorer in scorers.items():
            replaced = variants[k]
            st = [means[j].to(s.dtype).expand_as(s) if j in replaced else s
                  for j, s in enumerate(stages)]
            img = image_mean.expand_as(x) if "image" in replaced else x
            with autocast:
                if shared:
                    st.append(enc.decode(st))
                out = head(to_grid, st[4], st, img)
            scorer.update(out.float().argmax(1).cpu(), label)
    model.train(was)
    return {"task": task.name, "split": split,
            "dice": {k: s.result()["dice"] for k, s in scorers.items()}}


def reliance_task(model: nn.Module, stream: list[Task]) -> Task | None:
    """The task whose decoder the reliance probe ablates: the stream's first task with a
    decoder head (segmentation), on an encoder with stages (``stage_channels``); else None."""
    if not hasattr(model.encoder, "stage_channels"):
        return None
    return next((t for t in stream if kind_spec(t.kind).head == "decoder"), None)


def row_probes(model: nn.Module, strategy, stream: list[Task], task: Task,
               reference: dict[str, torch.Tensor], task_start: dict[str, torch.Tensor],
               batch_size: int = 4, device: str = "cpu", bf16: bool = False
               ) -> tuple[dict, dict | None]:
    """The probes of the row after training ``task``: ``(movement, reliance)``.

    ``movement``: :func:`movement` of each backbone stage since ``reference`` (W_0) and since
    ``task_start`` (the weights before ``task``), with ``task``'s own adapter if the strategy
    keeps one (``strategy.adapters``). ``reliance``: :func:`reliance` of the
    :func:`reliance_task` once it is trained (it is ``task`` or before it), else ``None``; in
    bfloat16 autocast if ``bf16`` (the run's precision, as its evaluation).
    """
    adapters = getattr(strategy, "adapters", None) or []
    moved = movement(model.encoder, reference, task.name if task.name in adapters else None,
                     task_start)
    rt = reliance_task(model, stream)
    if rt is None or stream.index(rt) > stream.index(task):
        return moved, None
    return moved, reliance(model, strategy, rt, batch_size, device, bf16)
