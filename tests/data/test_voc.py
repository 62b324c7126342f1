"""The PASCAL VOC 2012 CISS loader on a tiny generated VOC tree (JPEGs, palette/gray PNG masks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from cl_bench.config import check_node
from cl_bench.data.voc import IMAGENET_MEAN, IMAGENET_STD, VOCStepDataset, make_voc
from cl_bench.errors import ConfigError, DataError

CONF = str(Path(__file__).resolve().parents[2] / "conf")
W, H, SIZE = 16, 12, 8  # originals are 16 wide, 12 high; the loader resizes them to 8x8

# per image: (class in the top-left quadrant, class in the top-right quadrant); the bottom-left
# quadrant is background, the bottom-right one 255 (ignore) when the third field is True
TRAIN = {
    "2007_000000": (1, 0, False),
    "2007_000001": (2, 16, True),
    "2007_000002": (16, 0, False),
    "2007_000003": (20, 0, False),
    "2007_000004": (15, 20, True),
    "2007_000005": (3, 0, True),
    "2007_000006": (19, 0, False),
    "2007_000007": (19, 20, False),
    "2007_000008": (5, 17, False),
    "2007_000009": (0, 0, True),   # background only: in no step
    "2007_000010": (10, 0, False),
    "2007_000011": (18, 4, False),
}
VAL = {
    "2008_000000": (1, 20, True),
    "2008_000001": (16, 0, False),
    "2008_000002": (7, 0, True),
    "2008_000003": (19, 11, False),
}
TRAIN_IDS, VAL_IDS = list(TRAIN), list(VAL)


def voc_palette() -> list[int]:
    """VOC's colour map (the bit-interleaved one of the devkit), 256 RGB triples."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def mask_array(spec) -> np.ndarray:
    left, right, ignore = spec
    m = np.zeros((H, W), dtype=np.uint8)
    m[: H // 2, : W // 2] = left
    m[: H // 2, W // 2:] = right
    if ignore:
        m[H // 2:, W // 2:] = 255
    return m


def write_mask(path: Path, m: np.ndarray, palette: bool) -> None:
    im = Image.fromarray(m, mode="L")
    if palette:
        im = im.convert("P")
        im.putpalette(voc_palette())
        assert np.array_equal(np.asarray(im), m)
    im.save(path)


def colour(k: int) -> tuple[int, int, int]:
    """A uniform colour that identifies image k of the tree."""
    return (20 * k, 200 - 15 * k, 60)


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """A 12 + 4 image VOC 2012 tree: train_aug.txt lists ids, val.txt MiB's two-path lines."""
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    for k, (sid, spec) in enumerate(list(TRAIN.items()) + list(VAL.items())):
        Image.new("RGB", (W, H), colour(k)).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
        write_mask(root / "SegmentationClassAug" / f"{sid}.png", mask_array(spec),
                   palette=k % 2 == 0)
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(TRAIN_IDS) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text(
        "".join(f"/JPEGImages/{s}.jpg /SegmentationClassAug/{s}.png\n" for s in VAL_IDS))
    return root


def expected_label(spec, keep: set[int] | None) -> torch.Tensor:
    """The 8x8 label: quadrants 4x4, classes outside ``keep`` -> 0, ignore stays 255."""
    left, right, ignore = spec
    out = torch.zeros(1, SIZE, SIZE, dtype=torch.long)
    h = SIZE // 2
    out[0, :h, :h] = left if keep is None or left in keep else 0
    out[0, :h, h:] = right if keep is None or right in keep else 0
    if ignore:
        out[0, h:, h:] = 255
    return out


def step_ids(task) -> list[str]:
    return [TRAIN_IDS[i] for i in task.train.index]


@pytest.mark.parametrize("protocol,setting,expected", [
    ("15-5", "overlapped", [[0, 1, 4, 5, 8, 10, 11], [1, 2, 3, 4, 6, 7, 8, 11]]),
    ("15-5", "disjoint", [[0, 5, 10], [1, 2, 3, 4, 6, 7, 8, 11]]),
    ("19-1", "overlapped", [[0, 1, 2, 4, 5, 6, 7, 8, 10, 11], [3, 4, 7]]),
    ("19-1", "disjoint", [[0, 1, 2, 5, 6, 8, 10, 11], [3, 4, 7]]),
])
def test_steps_select_images_and_remap_labels(voc_root, protocol, setting, expected):
    tasks = make_voc(root=str(voc_root), protocol=protocol, setting=setting, size=SIZE)
    base = int(protocol.split("-")[0])
    steps = [list(range(1, base + 1)), list(range(base + 1, 21))]
    assert [t.name for t in tasks] == ["voc_s0", "voc_s1"]
    assert [t.classes for t in tasks] == steps
    assert all(t.num_classes == 21 and t.kind == "class_incremental_segmentation"
               and t.stream_classes == list(range(1, 21)) for t in tasks)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for t, task in enumerate(tasks):
        assert step_ids(task) == [TRAIN_IDS[i] for i in expected[t]]
        assert isinstance(task.train, VOCStepDataset) and task.train.images.dtype == torch.uint8
        for j, i in enumerate(expected[t]):
            item = task.train[j]
            # old and future classes -> 0, the step's own classes kept, 255 kept
            assert item["label"].dtype == torch.long
            assert torch.equal(item["label"], expected_label(TRAIN[TRAIN_IDS[i]], set(steps[t])))
            assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
            want = (torch.tensor(colour(i), dtype=torch.float32).view(3, 1, 1) / 255 - mean) / std
            assert torch.allclose(item["image"], want.expand(3, SIZE, SIZE), atol=4 / 255 / 0.224)
    # the test set is shared by the steps and keeps every label
    assert tasks[0].test is tasks[1].test and len(tasks[0].test) == len(VAL)
    for j, sid in enumerate(VAL_IDS):
        assert torch.equal(tasks[1].test[j]["label"], expected_label(VAL[sid], None))


def test_exact_pixel_values_of_an_old_future_mix(voc_root):
    """Image 2007_000004 (15 | 20 | bg | 255) in both steps of 15-5 overlapped."""
    s0, s1 = make_voc(root=str(voc_root), protocol="15-5", size=SIZE)
    lab0 = s0.train[step_ids(s0).index("2007_000004")]["label"][0]
    lab1 = s1.train[step_ids(s1).index("2007_000004")]["label"][0]
    assert lab0[0].tolist() == [15] * 4 + [0] * 4 and lab0[-1].tolist() == [0] * 4 + [255] * 4
    assert lab1[0].tolist() == [0] * 4 + [20] * 4 and lab1[-1].tolist() == [0] * 4 + [255] * 4
    assert set(torch.unique(lab0).tolist()) == {0, 15, 255}
    assert set(torch.unique(lab1).tolist()) == {0, 20, 255}
    joint = s1.train.with_classes(list(range(1, 21)))  # e.g. a joint baseline's view
    assert isinstance(joint, VOCStepDataset)
    assert set(torch.unique(joint[step_ids(s1).index("2007_000004")]["label"]).tolist()) == {
        0, 15, 20, 255}


def test_protocols_class_order_and_subsets(voc_root):
    tasks = make_voc(root=str(voc_root), protocol="15-1", setting="disjoint", size=SIZE)
    assert [t.classes for t in tasks] == [list(range(1, 16)), [16], [17], [18], [19], [20]]
    assert [step_ids(t) for t in tasks[1:]] == [
        ["2007_000001", "2007_000002"], ["2007_000008"], ["2007_000011"], ["2007_000006"],
        ["2007_000003", "2007_000004", "2007_000007"]]
    # a step without images (class 11 is only in val) is a config error naming the step
    with pytest.raises(ConfigError, match=r"tasks.protocol=10-1 tasks.setting=overlapped: step 1 "
                                          r"\(classes \[11\]\) has no training image"):
        make_voc(root=str(voc_root), protocol="10-1", size=SIZE)
    order = [20] + list(range(1, 20))
    s0, s1 = make_voc(root=str(voc_root), protocol="19-1", class_order=order, size=SIZE)
    assert s0.classes == order[:19] and s1.classes == [19]
    assert step_ids(s1) == ["2007_000006", "2007_000007"]
    a = make_voc(root=str(voc_root), protocol="19-1", size=SIZE, max_train=6, max_test=2)
    b = make_voc(root=str(voc_root), protocol="19-1", size=SIZE, max_train=6, max_test=2)
    assert len(a[0].test) == 2 and a[0].info["listed_train"] == 12
    assert step_ids(a[0]) == step_ids(b[0]) and set(step_ids(a[0])) <= set(TRAIN_IDS)


def test_missing_split_file_names_it(voc_root):
    split = voc_root / "ImageSets/Segmentation/train_aug.txt"
    split.unlink()
    with pytest.raises(DataError, match=re.escape(str(split))) as e:
        make_voc(root=str(voc_root), size=SIZE)
    assert "tasks.train_list" in str(e.value) and "JPEGImages" in str(e.value)


def test_missing_root_names_the_path_or_the_key(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"tasks.root: no folder at {tmp_path / 'nope'}")):
        make_voc(root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="tasks.root is not set"):
        make_voc(root=None)


def test_out_of_range_class_id_names_the_mask_and_the_ids(voc_root):
    bad = voc_root / "SegmentationClassAug" / "2007_000005.png"
    m = mask_array(TRAIN["2007_000005"])
    m[0, 0], m[1, 1] = 21, 40
    write_mask(bad, m, palette=False)
    with pytest.raises(DataError, match=re.escape(f"mask {bad} holds class ids [21, 40]")):
        make_voc(root=str(voc_root), size=SIZE)


@pytest.mark.parametrize("which", ["JPEGImages/2007_000003.jpg",
                                   "SegmentationClassAug/2008_000002.png"])
def test_listed_file_missing_names_it(voc_root, which):
    gone = voc_root / which
    gone.unlink()
    with pytest.raises(DataError, match=re.escape(f"{gone} is missing")):
        make_voc(root=str(voc_root), size=SIZE)


def test_bad_protocol_fails_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="tasks.protocol"):
        make_voc(root=str(tmp_path / "not_there"), protocol="7-3")


def compose_voc(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("shortcut,steps", [("voc_15-1", 6), ("voc_15-5", 2), ("voc_19-1", 2),
                                            ("voc_10-1", 11)])
def test_task_configs(shortcut, steps):
    cfg = compose_voc(f"tasks={shortcut}")
    assert cfg.tasks.name == shortcut and cfg.tasks.protocol == shortcut[4:]
    assert cfg.backbone.name == "unet2d" and cfg.backbone.in_channels == 3
    assert cfg.backbone.img_size == cfg.tasks.size
    assert OmegaConf.is_missing(cfg.tasks, "root")  # root: ??? (required)


def test_root_unset_in_config_is_a_clear_error():
    cfg = compose_voc("tasks=voc_15-5")
    with pytest.raises(ConfigError, match=r"tasks\.root"):
        check_node(cfg.tasks, "tasks")  # what run() calls before building anything


def test_run_end_to_end(voc_root, tmp_path):
    from cl_bench.runner import run

    cfg = compose_voc("tasks=voc_15-5", f"tasks.root={voc_root}", f"tasks.size={SIZE * 2}",
                      "strategy=seq_ft", "train.max_steps=2", "train.batch_size=2",
                      "train.progress_bar=false", "train.checkpoint_every_n_epochs=0",
                      "hardware.num_threads=1", "logger=none")
    run(cfg, tmp_path / "run")
    R = pd.read_csv(tmp_path / "run" / "matrix.csv", index_col=0)
    assert list(R.columns) == ["voc_15-5_s0", "voc_15-5_s1"]
    assert list(R.index) == ["init", "after_voc_15-5_s0", "after_voc_15-5_s1"]
    assert np.isfinite(R.loc["after_voc_15-5_s1"].to_numpy(dtype=float)).all()
    assert ((R >= 0) & (R <= 1)).all().all()  # mIoU
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["complete"] is True and set(metrics["per_task"]) == set(R.columns)
