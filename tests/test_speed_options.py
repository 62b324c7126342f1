"""The speed options of issue 25: precision auto, bf16 autocast on CPU, fused window attention,
early stopping on the validation loss."""

from __future__ import annotations

import json

import pytest
import torch

from cl_bench import hardware
from cl_bench.models.backbones import UNetEncoder, ViTEncoder
from cl_bench.models.swin import SwinEncoder
from cl_bench.runner import run


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "amx_bf16", "amx_tile"}, "bf16-mixed"),
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed"),
    ({"avx2", "avx512f"}, "32-true"),
    (set(), "32-true"),
])
def test_auto_precision_follows_the_cpu_flags_for_a_checked_encoder(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert hardware.resolve_precision("auto", "cpu", SwinEncoder) == expected
    assert hardware.resolve_precision("auto", "gpu", SwinEncoder) == "bf16-mixed"
    # an encoder whose quality was not checked under bf16 stays fp32 on every CPU
    for encoder in (ViTEncoder, UNetEncoder, None):
        assert hardware.resolve_precision("auto", "cpu", encoder) == "32-true"
        assert hardware.resolve_precision("auto", "gpu", encoder) == "32-true"
    # an explicit choice is kept whatever the CPU and encoder
    assert hardware.resolve_precision("32-true", "cpu", SwinEncoder) == "32-true"
    assert hardware.resolve_precision("bf16-mixed", "cpu", ViTEncoder) == "bf16-mixed"


def test_cpu_flags_are_read_from_this_machine():
    flags = hardware.cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags here")
    assert hardware.native_bf16() == bool({"amx_bf16", "avx512_bf16"} & flags)


def test_bf16_mixed_runs_on_cpu_and_is_recorded(compose_cfg, tmp_path):
    cfg = compose_cfg("strategy=lora", "hardware.precision=bf16-mixed", "hardware.num_threads=1")
    out = run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"] == "bf16-mixed" and metrics["cpu"]
    r = out.metrics["per_task"]
    assert all(torch.isfinite(torch.tensor(v["final"])) for v in r.values())
    # the adapters of task 1 are untouched by task 2: BWT exactly 0 under bf16 too
    assert metrics["groups"]["dice"]["bwt_gem"] == 0.0


def test_fused_window_attention_is_the_same_function():
    from cl_bench.models.swin import FusedWindowAttention, SwinEncoder

    torch.manual_seed(0)
    explicit = SwinEncoder(weights=None, fused_attention=False)
    fused = SwinEncoder(weights=None, fused_attention=True)
    fused.load_state_dict(explicit.state_dict())  # same keys
    assert sum(isinstance(m, FusedWindowAttention) for m in fused.modules()) == 8
    assert not any(isinstance(m, FusedWindowAttention) for m in explicit.modules())
    x = torch.randn(1, 1, 64, 64, 64)
    a, b = explicit(x)[0], fused(x)[0]
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    a.square().mean().backward()
    b.square().mean().backward()
    for (name, p), q in zip(explicit.named_parameters(), fused.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-3), name


def test_compile_gives_the_eager_result(compose_cfg, tmp_path):
    """hardware.compile (torch.compile of encoder and heads) trains to the same R matrix as
    eager execution, up to float rounding of the fused kernels."""
    over = ("strategy=lora", "backbone.num_layers=1", "+tasks.max_tasks=1", "hardware.num_threads=1")
    eager = run(compose_cfg(*over), tmp_path / "eager").metrics
    compiled = run(compose_cfg(*over, "hardware.compile=true"), tmp_path / "compiled").metrics
    for name, v in eager["per_task"].items():
        assert compiled["per_task"][name]["final"] == pytest.approx(v["final"], abs=1e-3)


def test_fp32_and_channels_last_decoder_compute_the_same_function():
    # backbone.decoder_fp32 / decoder_channels_last: the same seeded weights; under bf16
    # autocast the fp32 decoder returns float32 logits equal to the fp32 ones (the default
    # decoder's are bfloat16, ~1e-2 off), and its gradients are float32
    from cl_bench.models.swin import SwinDecoder

    chs = [24, 48, 96, 192, 384]
    gen = torch.Generator().manual_seed(0)
    stages = [torch.randn(1, c, 32 // 2 ** k, 32 // 2 ** k, 32 // 2 ** k, generator=gen)
              for k, c in enumerate(chs)]
    image = torch.randn(1, 1, 64, 64, 64, generator=gen)
    torch.manual_seed(1)
    plain = SwinDecoder(1, chs, 12, 4)
    torch.manual_seed(1)
    other = SwinDecoder(1, chs, 12, 4, fp32=True, channels_last=True)
    for (name, p), q in zip(plain.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name
    assert other.out.conv.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    ref = plain(None, None, stages, image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = plain(None, None, stages, image)
        out = other(None, None, stages, image)
    assert low.dtype == torch.bfloat16 and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)  # layout: rounding only
    assert (low.float() - ref).abs().max() > 1e-3  # the default decoder computes in bf16
    out.square().mean().backward()
    assert all(p.grad.dtype == torch.float32 for p in other.parameters())



def test_shifted_window_seams_as_minus_inf_give_monai_minus_100_bit_for_bit():
    # FusedWindowAttention masks the token pairs across a shifted window's seams with -inf
    # (exact zero weights) where MONAI adds -100 (weights ~e^-100, float32 denormals that slow
    # the fused backward): the same output and gradients, to the bit
    from monai.networks.nets.swin_unetr import compute_mask

    from cl_bench.models.swin import FusedWindowAttention

    torch.manual_seed(0)
    c, ws, batch = 24, (4, 4, 4), 2
    attn = FusedWindowAttention(c, 3, ws, qkv_bias=True)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_(0, 1.0)
    mask = compute_mask([16, 16, 16], ws, (2, 2, 2), "cpu")  # (64 windows, 64, 64): 0 / -100
    assert set(mask.unique().tolist()) == {0.0, -100.0} and FusedWindowAttention.seam_value < -1e30
    x = torch.randn(batch * mask.shape[0], mask.shape[1], c, requires_grad=True)
    outs, grads = [], []
    for seam in (FusedWindowAttention.seam_value, -100.0):  # ours, MONAI's
        attn.seam_value = seam
        x.grad, attn.qkv.weight.grad = None, None
        out = attn(x, mask)
        out.square().sum().backward()
        outs.append(out)
        grads.append((x.grad, attn.qkv.weight.grad))
    assert torch.isfinite(outs[0]).all()
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_the_shifted_window_bias_is_reused_only_while_nothing_it_depends_on_changes():
    from monai.networks.nets.swin_unetr import compute_mask

    from cl_bench.models.swin import FusedWindowAttention

    torch.manual_seed(0)
    attn = FusedWindowAttention(24, 3, (4, 4, 4), qkv_bias=True)
    table = attn.relative_position_bias_table
    mask = compute_mask([8, 8, 8], (4, 4, 4), (2, 2, 2), "cpu")  # 8 windows
    x = torch.randn(2 * 8, 64, 24)

    def fresh(x, m=mask):  # the same module, nothing cached
        attn._seam_bias = None
        return attn(x, m)

    table.requires_grad_(False)  # frozen (lora): built once, then reused
    with torch.inference_mode():  # evaluation builds its own (inference tensors)
        assert torch.equal(attn(x, mask), fresh(x))
    first = attn(x, mask)
    kept = attn._seam_bias[2]
    assert torch.equal(attn(x, mask), first) and attn._seam_bias[2] is kept
    assert not kept.is_inference()
    with torch.no_grad():
        table.add_(0.5)  # an in-place update (an optimiser, load_state_dict): rebuilt
    moved = attn(x, mask)
    assert attn._seam_bias[2] is not kept and torch.equal(moved, fresh(x))
    assert not torch.equal(moved, first)
    other = compute_mask([8, 8, 8], (4, 4, 4), (2, 2, 2), "cpu")
    other[0, 0, 1] = -100.0  # another mask of the same shape: rebuilt
    assert torch.equal(attn(x, other), fresh(x, other))
    assert attn(x[:8], mask[:4]).shape == (8, 64, 24)  # another batch
    # a training table: never cached, its gradient flows
    table.requires_grad_(True)
    attn._seam_bias = None
    attn(x, mask).square().sum().backward()
    assert attn._seam_bias is None and table.grad.abs().sum() > 0


def test_nan_filling_of_new_tensors_changes_no_result_and_is_run_local(compose_cfg, tmp_path):
    # hardware.fill_uninitialized_memory: PyTorch's debugging fill under deterministic mode, off
    # by default; on or off, the same R to the bit, and a run resumes under either setting
    over = ("strategy=seq_ft", "train.max_steps=3", "hardware.num_threads=1")
    run(compose_cfg(*over, "hardware.fill_uninitialized_memory=true"), tmp_path / "filled")
    assert torch.utils.deterministic.fill_uninitialized_memory
    run(compose_cfg(*over), tmp_path / "default")
    assert not torch.utils.deterministic.fill_uninitialized_memory
    assert torch.are_deterministic_algorithms_enabled()
    filled, default = ((tmp_path / d / "matrix.csv").read_text() for d in ("filled", "default"))
    assert filled == default
    out = run(compose_cfg(*over), tmp_path / "filled")  # resumed: nothing left to train
    assert out.metrics["complete"] and (tmp_path / "filled" / "matrix.csv").read_text() == filled


def test_swin_stages_build_the_shifted_window_mask_once_per_grid(monkeypatch):
    # MaskReusingLayer: MONAI's stage forward, bit for bit, with the mask made once per grid
    # (and per inference mode) instead of at every call
    from monai.networks.nets.swin_unetr import BasicLayer

    from cl_bench.models import swin

    made = []

    def counting(dims, *args):
        made.append(tuple(dims))
        return swin_compute_mask(dims, *args)

    swin_compute_mask = swin.compute_mask
    monkeypatch.setattr(swin, "compute_mask", counting)
    torch.manual_seed(0)
    enc = swin.SwinEncoder(weights=None, depths=(2, 2, 2, 2))
    layers = [m for m in enc.modules() if isinstance(m, BasicLayer)]
    assert len(layers) == 4 and all(isinstance(m, swin.MaskReusingLayer) for m in layers)
    layer = layers[0]
    x = torch.randn(2, 24, 32, 32, 32, requires_grad=True)
    ours = layer(x)
    ours.square().mean().backward()
    grads = [x.grad.clone(), *(p.grad.clone() for p in layer.parameters())]
    x.grad = None
    layer.zero_grad()
    theirs = BasicLayer.forward(layer, x)  # MONAI's forward on the same module
    theirs.square().mean().backward()
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(grads, [x.grad, *(p.grad for p in layer.parameters())]))
    made.clear()
    for _ in range(3):
        layer(x)
    with torch.inference_mode():
        layer(x)
        layer(x[:, :, :16, :16, :16])
    assert made == [(32, 32, 32), (16, 16, 16)]  # inference mode's own, and a new grid
    layer(x).sum().backward()  # training after evaluation uses its own (autograd) mask
