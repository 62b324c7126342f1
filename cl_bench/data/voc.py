"""PASCAL VOC 2012 (with the SBD augmentation) from a local folder, as a CISS stream.

Nothing is downloaded. The layout is the one MiB, PLOP and STAR train on (VOC 2012 plus the
SBD masks converted to VOC's label ids, "SegmentationClassAug")::

    <root>/JPEGImages/2007_000032.jpg                 RGB images
    <root>/SegmentationClassAug/2007_000032.png       palette or grayscale PNG of class ids:
                                                      0 background, 1..20 the VOC classes
                                                      (aeroplane .. tvmonitor), 255 boundary/ignore
    <root>/ImageSets/Segmentation/train_aug.txt       training ids (10,582 in the full set)
    <root>/ImageSets/Segmentation/val.txt             test ids (VOC 2012 val, 1,449)

A split file holds one entry per line, either an id (``2007_000032``) or MiB's two paths
relative to ``root`` (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``);
blank lines and ``#`` comments are skipped. ``tasks.train_list`` / ``tasks.val_list`` may name
other files (relative to ``root`` or absolute).

**Stream.** The 20 foreground classes are learned in the steps of a protocol ``"A-B"`` --
``19-1`` (2 steps), ``15-5`` (2), ``15-1`` (6), ``10-1`` (11) -- in the ``overlapped`` or
``disjoint`` setting, exactly as :mod:`cl_bench.data.ciss` defines them (Cermelli et al. 2020,
MiB, arXiv 2002.00718, §4; the protocols and settings of PLOP and STAR). Training labels keep
only the step's classes (old and future classes become background 0; 255 stays 255); the test
set (``val_list``) is shared by every step and keeps every label.

**Preprocessing.** Every image is resized to ``size x size`` (bilinear; its mask nearest) once,
when the stream is built, and kept in memory as ``uint8`` (3 + 1 bytes per pixel: the full
10,582 + 1,449 images take about 0.8 GB at ``size=128``); each item is converted to float and
normalised with the ImageNet mean/std when it is read. Every listed file is checked to exist
before any is decoded; every mask is checked to hold only ids 0..20 and 255.

**Deviations from the literature** (MiB/PLOP/STAR train at 512x512 with random-resized crops and
flips and test at full resolution on val): images are resized, not cropped, the aspect ratio is
not kept, there is no augmentation, test masks are resized (nearest) too, so mIoU is measured at
``size x size``; ``max_train``/``max_test`` optionally keep a seeded random subset of each list
(before the step filter) for CPU-sized runs.

Sources: M. Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 88,
2010; B. Hariharan et al., "Semantic Contours from Inverse Detectors" (SBD), ICCV 2011;
F. Cermelli et al., "Modeling the Background for Incremental Learning in Semantic
Segmentation" (MiB), CVPR 2020, arXiv 2002.00718.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from cl_bench.data.base import Task
from cl_bench.data.ciss import SegStepDataset, ciss_stream, protocol_steps
from cl_bench.errors import DataError
from cl_bench.kinds import IGNORE_INDEX
from cl_bench.ranges import NonNegativeInt, PositiveFloat, PositiveInt, checked

#: the 20 foreground classes, id 1..20 in this order (id 0 is background)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
N_CLASSES = len(VOC_CLASSES)
#: ImageNet RGB statistics (as MiB/PLOP/STAR normalise their inputs)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VOC_LAYOUT = """expected the VOC 2012 + SBD ("SegmentationClassAug") layout:
    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClassAug/<id>.png     class ids 0..20, 255 = ignore
    <root>/ImageSets/Segmentation/train_aug.txt and val.txt   one id per line (or MiB's
        "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png")"""


class VOCStepDataset(SegStepDataset):
    """A :class:`SegStepDataset` over ``uint8`` images, normalised per item.

    Items: ``{"image": (3, H, W) float, ImageNet-normalised, "label": (1, H, W) long}``.
    """

    _mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    _std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        item["image"] = (item["image"] / 255.0 - self._mean) / self._std
        return item


def read_split(path: Path, root: Path, image_dir: str, mask_dir: str,
               key: str) -> list[tuple[str, Path, Path]]:
    """``[(id, image path, mask path), ...]`` from a split file, in file order, duplicates dropped.

    Raises:
        DataError: a missing, unreadable or empty file, or a line of more than two fields
        (names the file, the line and ``key``).
    """
    if not path.is_file():
        raise DataError(f"{key}: no split file at {path}\n  {VOC_LAYOUT}")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{key}: cannot read {path}: {e}") from None
    out, seen = [], set()
    for n, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) == 1:
            sid = fields[0]
            image, mask = root / image_dir / f"{sid}.jpg", root / mask_dir / f"{sid}.png"
        elif len(fields) == 2:
            image, mask = (root / f.lstrip("/") for f in fields)
            sid = image.stem
        else:
            raise DataError(f"{key}: {path} line {n}: expected an id or '<image> <mask>', "
                            f"got {line.strip()!r}")
        if sid not in seen:
            seen.add(sid)
            out.append((sid, image, mask))
    if not out:
        raise DataError(f"{key}: {path} lists no image\n  {VOC_LAYOUT}")
    return out


def _subset(items: list, limit: int | None, seed: int) -> list:
    """A seeded random subset of at most ``limit`` items, in list order (``None``: all)."""
    if limit is None or limit >= len(items):
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def load_pair(image_path: Path, mask_path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One resized ``(3, size, size)`` uint8 image and ``(1, size, size)`` uint8 mask.

    Raises:
        DataError: an unreadable file, a mask that is not one channel of ids, a mask of another
        size than its image, or ids outside 0..20 and 255 (names the file and the bad ids).
    """
    from PIL import Image

    try:
        with Image.open(image_path) as im:
            im.load()
            image = im.convert("RGB")
    except Exception as e:
        raise DataError(f"cannot read image {image_path}: {e}") from None
    try:
        with Image.open(mask_path) as m:
            m.load()
            mode = m.mode
            mask = np.asarray(m)  # palette PNGs give their indices, which are VOC's class ids
    except Exception as e:
        raise DataError(f"cannot read mask {mask_path}: {e}") from None
    if mask.ndim != 2:
        raise DataError(f"mask {mask_path}: expected a palette or grayscale PNG of class ids, "
                        f"got mode {mode} with shape {mask.shape}")
    if mask.shape != (image.height, image.width):
        raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{image_path} is {image.width}x{image.height}")
    ids = np.unique(mask)
    bad = sorted(int(v) for v in ids if not (0 <= v <= N_CLASSES or v == IGNORE_INDEX))
    if bad:
        raise DataError(f"mask {mask_path} holds class ids {bad} outside 0..{N_CLASSES} "
                        f"and {IGNORE_INDEX} (ignore)")
    image = image.resize((size, size), Image.BILINEAR)
    mask = Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST)
    return (np.asarray(image, dtype=np.uint8).transpose(2, 0, 1),
            np.asarray(mask, dtype=np.uint8)[None])


def _load(items: list[tuple[str, Path, Path]], size: int, desc: str
          ) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.empty((len(items), 3, size, size), dtype=np.uint8)
    masks = np.empty((len(items), 1, size, size), dtype=np.uint8)
    for i, (_, image, mask) in enumerate(tqdm(items, desc=desc, leave=False, disable=None)):
        images[i], masks[i] = load_pair(image, mask, size)
    return torch.from_numpy(images), torch.from_numpy(masks)


@checked("tasks")
def make_voc(name: str = "voc", root: str | None = None, protocol: str = "15-1",
             setting: Literal["overlapped", "disjoint"] = "overlapped",
             class_order: list[PositiveInt] | None = None, size: PositiveInt = 128,
             train_list: str = "ImageSets/Segmentation/train_aug.txt",
             val_list: str = "ImageSets/Segmentation/val.txt",
             max_train: PositiveInt | None = None, max_test: PositiveInt | None = None,
             seed: NonNegativeInt = 0, image_dir: str = "JPEGImages",
             mask_dir: str = "SegmentationClassAug", pos_weight: PositiveFloat = 4.0) -> list[Task]:
    """The PASCAL VOC 2012 CISS stream (see module docstring).

    Args:
        name: stream name (steps are ``<name>_s0``, ...).
        root: the VOC 2012 folder (``.../VOCdevkit/VOC2012``) holding the layout above.
        protocol: ``"19-1"``, ``"15-5"``, ``"15-1"``, ``"10-1"`` (any ``"A-B"`` splitting 20).
        setting: ``"overlapped"`` or ``"disjoint"``.
        class_order: learning order of the ids 1..20 (default ascending, as in MiB).
        size: side in pixels every image and mask is resized to.
        train_list, val_list: split files, relative to ``root`` or absolute.
        max_train, max_test: keep a random subset of at most this many listed images
            (``None``: all); seed: the subset's seed.
        image_dir, mask_dir: folders of ``<id>.jpg`` / ``<id>.png`` for id-only split lines.
        pos_weight: weight of positive pixels in the per-class BCE (STAR's VOC value: 4).

    Returns:
        One :class:`~cl_bench.data.base.Task` per step, 21 classes (background included).

    Raises:
        ConfigError: bad protocol/setting/order/size/limits (names the ``tasks.*`` key), or a
            step left without training images;
        DataError: root not set or missing, a missing or empty split file, a listed image or
            mask missing or unreadable, a mask with ids outside 0..20 and 255 (names the file).
    """
    if root is None or str(root).strip() in ("", "???"):
        raise DataError("tasks.root is not set; give the VOC 2012 folder on the command line "
                        f"(tasks.root=/data/VOCdevkit/VOC2012)\n  {VOC_LAYOUT}")
    protocol_steps(protocol, N_CLASSES, class_order)  # config errors before any file is read
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"tasks.root: no folder at {base}\n  {VOC_LAYOUT}")

    splits = {}
    for key, rel, limit in (("train_list", train_list, max_train),
                            ("val_list", val_list, max_test)):
        items = read_split(base / rel, base, image_dir, mask_dir, f"tasks.{key}")
        splits[key] = (base / rel, len(items), _subset(items, limit, seed))
    for key, (listing, _, items) in splits.items():  # every file present before any is decoded
        for _, image, mask in items:
            for kind, p in (("image", image), ("mask", mask)):
                if not p.is_file():
                    raise DataError(f"tasks.{key}: {kind} {p} is missing (listed in {listing})"
                                    f"\n  {VOC_LAYOUT}")

    tr_x, tr_y = _load(splits["train_list"][2], size, "VOC train")
    te_x, te_y = _load(splits["val_list"][2], size, "VOC val")
    info = {"stream": name, "root": str(base), "size": size, "seed": seed,
            "train_list": str(splits["train_list"][0]), "val_list": str(splits["val_list"][0]),
            "listed_train": splits["train_list"][1], "listed_test": splits["val_list"][1],
            "class_names": list(VOC_CLASSES)}
    return ciss_stream(tr_x, tr_y, te_x, te_y, N_CLASSES, protocol, setting, name,
                       class_order, info, pos_weight, dataset=VOCStepDataset)
