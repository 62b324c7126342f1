"""Real brain MRI from local paths: BraTS (two layouts) and IXI, as the ``brats_ixi`` stream.

Nothing is downloaded. Supported layouts:

* **MSD Task01_BrainTumour** (Antonelli et al. 2022, arXiv 2106.05735)::

      <brats_root>/imagesTr/BRATS_001.nii.gz   4-D, channels FLAIR, T1w, T1gd, T2w (last axis)
      <brats_root>/labelsTr/BRATS_001.nii.gz   0 background, 1 edema, 2 non-enhancing, 3 enhancing

* **BraTS 2021 per subject** (Baid et al. 2021, arXiv 2107.02314)::

      <brats_root>/BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz
      labels 0, 1 necrotic/non-enhancing core, 2 edema, 4 enhancing -> remapped to MSD: 2->1, 1->2, 4->3

* **IXI T1** (brain-development.org/ixi-dataset)::

      <ixi_root>/IXI-T1/IXI002-Guys-0828-T1.nii.gz   (or the files directly in <ixi_root>)
      <ixi_root>/IXI.xls or IXI.csv                   columns IXI_ID, AGE (or tasks.ixi_demographics)

Preprocessing is MONAI dictionary transforms: ``LoadImaged``, ``EnsureChannelFirstd``,
``Orientationd(RAS)``, ``Spacingd`` (optional), ``NormalizeIntensityd(nonzero, channel_wise)``,
``CropForegroundd``, ``Resized`` to ``size``³ (image trilinear, label nearest). Few-shot subsets are
loaded eagerly, so every file is read (and checked) when the stream is built.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cl_bench.data.base import ArrayDataset, Task, regression_scale
from cl_bench.errors import ConfigError, DataError
from cl_bench.ranges import NonEmptyStrList, NonNegativeInt, PositiveFloat, PositiveInt, checked

MSD_CHANNELS = {"flair": 0, "t1": 1, "t1gd": 2, "t1ce": 2, "t2": 3}
BRATS21_SUFFIX = {"flair": "flair", "t1": "t1", "t1gd": "t1ce", "t1ce": "t1ce", "t2": "t2"}
BRATS21_REMAP = {0: 0, 1: 2, 2: 1, 4: 3}

BRATS_LAYOUT = """expected one of:
    <brats_root>/imagesTr/BRATS_001.nii.gz + <brats_root>/labelsTr/BRATS_001.nii.gz   (MSD Task01)
    <brats_root>/BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz       (BraTS 2021)"""
IXI_LAYOUT = """expected:
    <ixi_root>/IXI-T1/IXI002-Guys-0828-T1.nii.gz  (or the T1 files directly in <ixi_root>)
    <ixi_root>/IXI.xls or IXI.csv with columns IXI_ID, AGE (or set tasks.ixi_demographics)"""


def _dir(path: str | None, key: str, layout: str) -> Path:
    if path is None or str(path).strip() == "":
        raise DataError(f"{key} is not set; give the folder on the command line ({key}=/path)\n"
                        f"  {layout}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DataError(f"{key}: no folder at {p}\n  {layout}")
    return p


def _nii(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.nii*") if not p.name.startswith("._"))


def find_brats(root: str | None, modalities: list[str]) -> tuple[str, list[dict]]:
    """List BraTS subjects as MONAI data dicts ``{"image": [...], "label": path}``.

    Returns:
        ``(layout name, subjects)``; for MSD, ``image`` is the 4-D file and ``channels`` the indices.

    Raises:
        DataError: missing/empty folder or an unknown layout (names ``tasks.brats_root``).
    """
    base = _dir(root, "tasks.brats_root", BRATS_LAYOUT)
    if (base / "imagesTr").is_dir():
        images = _nii(base / "imagesTr")
        subjects = []
        for img in images:
            lab = base / "labelsTr" / img.name
            if not lab.is_file():
                raise DataError(f"tasks.brats_root: {img} has no label file {lab}\n  {BRATS_LAYOUT}")
            subjects.append({"image": str(img), "label": str(lab), "id": img.name.split(".")[0]})
        layout = "msd"
    else:
        subjects = []
        for sub in sorted(p for p in base.iterdir() if p.is_dir()):
            files = {}
            for m in list(BRATS21_SUFFIX.values()) + ["seg"]:
                hits = sorted(sub.glob(f"*_{m}.nii*"))
                if hits:
                    files[m] = hits[0]
            if "seg" in files:
                need = [BRATS21_SUFFIX[m] for m in modalities]
                missing = [m for m in need if m not in files]
                if missing:
                    raise DataError(f"tasks.brats_root: {sub} lacks {missing} "
                                    f"(tasks.modalities={list(modalities)})\n  {BRATS_LAYOUT}")
                subjects.append({"image": [str(files[m]) for m in need],
                                 "label": str(files["seg"]), "id": sub.name})
        layout = "brats2021"
    if not subjects:
        raise DataError(f"tasks.brats_root: no BraTS subjects under {base}\n  {BRATS_LAYOUT}")
    return layout, subjects


def read_demographics(path: Path) -> dict[int, float]:
    """``{IXI_ID: AGE}`` from IXI.xls or a CSV; rows without an age map to NaN.

    Raises:
        DataError: unreadable table, missing columns, or ``.xls`` without ``xlrd`` installed.
    """
    import pandas as pd

    try:
        if path.suffix.lower() in (".xls", ".xlsx"):
            try:
                df = pd.read_excel(path)
            except ImportError:
                raise DataError(f"tasks.ixi_demographics: reading {path} needs xlrd "
                                "(pip install xlrd) or save it as CSV") from None
        else:
            df = pd.read_csv(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"tasks.ixi_demographics: cannot read {path}: {e}") from None
    cols = {c.strip().upper(): c for c in df.columns}
    if "IXI_ID" not in cols or "AGE" not in cols:
        raise DataError(f"tasks.ixi_demographics: {path} needs columns IXI_ID and AGE, "
                        f"has {list(df.columns)}")
    ages = pd.to_numeric(df[cols["AGE"]], errors="coerce")
    ids = pd.to_numeric(df[cols["IXI_ID"]], errors="coerce")
    out: dict[int, float] = {}
    for i, a in zip(ids, ages):
        if not np.isnan(i):
            out.setdefault(int(i), float(a))
            if np.isnan(out[int(i)]):
                out[int(i)] = float(a)
    return out


def find_ixi(root: str | None, demographics: str | None,
             impute_missing_age: float | None) -> tuple[list[dict], dict]:
    """List IXI T1 subjects with ages as ``{"image": path, "label": age}``.

    Raises:
        DataError: missing folder/table or no usable subject (names the config key).
    """
    base = _dir(root, "tasks.ixi_root", IXI_LAYOUT)
    folder = base / "IXI-T1" if (base / "IXI-T1").is_dir() else base
    files = [p for p in _nii(folder) if re.match(r"IXI\d+-.*-T1\.nii", p.name)]
    if not files:
        raise DataError(f"tasks.ixi_root: no IXI###-<site>-####-T1.nii.gz files in {folder}\n"
                        f"  {IXI_LAYOUT}")
    if demographics:
        table = Path(demographics).expanduser()
        if not table.is_file():
            raise DataError(f"tasks.ixi_demographics: no file at {table}\n  {IXI_LAYOUT}")
    else:
        found = [base / n for n in ("IXI.xls", "IXI.csv", "IXI.xlsx") if (base / n).is_file()]
        if not found:
            raise DataError(f"tasks.ixi_demographics: no IXI.xls/IXI.csv in {base}; set "
                            f"tasks.ixi_demographics\n  {IXI_LAYOUT}")
        table = found[0]
    ages = read_demographics(table)
    subjects, info = [], {"no_demographics_row": 0, "missing_age": 0, "imputed_age": 0}
    for f in files:
        sid = int(re.match(r"IXI(\d+)", f.name).group(1))
        if sid not in ages:
            info["no_demographics_row"] += 1
            continue
        age = ages[sid]
        if np.isnan(age):
            info["missing_age"] += 1
            if impute_missing_age is None:
                continue
            age, info["imputed_age"] = float(impute_missing_age), info["imputed_age"] + 1
        subjects.append({"image": str(f), "label": age, "id": f.name.split("-T1")[0]})
    if not subjects:
        raise DataError(f"tasks.ixi_root: none of the {len(files)} IXI T1 files has an age in "
                        f"{table} ({info})")
    info["demographics"] = str(table)
    return subjects, info


def _transforms(size: int, spacing, with_label: bool):
    from monai import transforms as T

    keys = ["image", "label"] if with_label else ["image"]
    mode = ("bilinear", "nearest") if with_label else ("bilinear",)
    chain = [T.LoadImaged(keys, image_only=True), T.EnsureChannelFirstd(keys),
             T.Orientationd(keys, axcodes="RAS")]
    if spacing is not None:
        chain.append(T.Spacingd(keys, pixdim=tuple(spacing), mode=mode))
    chain += [T.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
              T.CropForegroundd(keys, source_key="image", allow_smaller=True),
              T.Resized(keys, spatial_size=(size,) * 3,
                        mode=("trilinear", "nearest") if with_label else ("trilinear",))]
    return T.Compose(chain)


def _load(subjects: list[dict], transform, desc: str, msd_channels: list[int] | None,
          remap: dict[int, int] | None, labels: set[int] | None) -> tuple[np.ndarray, np.ndarray]:
    images, targets = [], []
    for s in tqdm(subjects, desc=desc, leave=False, disable=None):
        data = {"image": s["image"]} if labels is None else {"image": s["image"], "label": s["label"]}
        where = s["image"] if isinstance(s["image"], str) else ", ".join(s["image"])
        try:
            if labels is not None:
                import nibabel as nib
                shp_i = nib.load(s["image"] if isinstance(s["image"], str) else s["image"][0]).shape[:3]
                shp_l = nib.load(s["label"]).shape[:3]
                if shp_i != shp_l:
                    raise DataError(f"image {where} has shape {shp_i} but label {s['label']} has "
                                    f"{shp_l}")
            out = transform(data)
        except DataError:
            raise
        except Exception as e:
            msg = str(e).strip().splitlines()
            raise DataError(f"cannot load {where}"
                            f"{'' if labels is None else ' / ' + s['label']}: "
                            f"{msg[-1] if msg else type(e).__name__}") from None
        img = torch.as_tensor(out["image"]).float()
        if msd_channels is not None:
            img = img[msd_channels]
        images.append(img.numpy())
        if labels is None:
            targets.append(float(s["label"]))
            continue
        lab = torch.as_tensor(out["label"]).round().long().numpy()
        found = set(np.unique(lab).tolist())
        if not found <= labels:
            raise DataError(f"label file {s['label']} holds values {sorted(found - labels)} "
                            f"outside the layout's label set {sorted(labels)}")
        if remap:
            lab = np.vectorize(remap.get)(lab)
        targets.append(lab.astype(np.int64))
    return np.stack(images), np.stack(targets)


def _split(items: list, n_train: int, n_test: int, seed: int, key: str) -> tuple[list, list]:
    if len(items) < n_train + n_test:
        raise DataError(f"{key}: {len(items)} usable subjects, but tasks.n_train + tasks.n_test = "
                        f"{n_train + n_test}")
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order[:n_train]], [items[i] for i in order[n_train:n_train + n_test]]


@checked("tasks")
def brats_ixi(name: str = "brats_ixi", brats_root: str | None = None, ixi_root: str | None = None,
              ixi_demographics: str | None = None, modalities: NonEmptyStrList = ("flair",),
              size: PositiveInt = 64, n_train: PositiveInt = 24, n_test: PositiveInt = 16,
              seed: NonNegativeInt = 0, spacing: list[PositiveFloat] | None = (1.0, 1.0, 1.0),
              impute_missing_age: float | None = None,
              age_scale: PositiveFloat | None = None) -> list[Task]:
    """The real two-task stream: BraTS tumour segmentation, then IXI brain-age regression.

    Args:
        name: stream name.
        brats_root, ixi_root, ixi_demographics: local paths (see module docstring).
        modalities: BraTS channels to use, among ``flair``, ``t1``, ``t1gd`` (= ``t1ce``), ``t2``.
        size: output cube side in voxels; n_train, n_test: subjects per task and split.
        seed: subject selection seed; spacing: target voxel size in mm (``None``: native).
        impute_missing_age: ``None`` drops IXI subjects without an age; a number fills it in
            (50 reproduces the brain-MRI paper's quirk, arXiv 2602.23533).
        age_scale: years per unit of the normalised age MAE (``None``: training ages' SD).

    Returns:
        ``[Task("tumour_seg", "segmentation", num_classes=4), Task("brain_age", "regression")]``;
        images ``(C, size, size, size)`` with C = ``len(modalities)`` (BraTS) and 1 (IXI).

    Raises:
        ConfigError: unknown modality; DataError: missing/empty paths, corrupt files, labels out
        of range, too few subjects — each naming the config key or the file.
    """
    modalities = [m.lower() for m in modalities]
    unknown = [m for m in modalities if m not in MSD_CHANNELS]
    if unknown:
        raise ConfigError(f"tasks.modalities: unknown {unknown}; choose among "
                          f"{sorted(MSD_CHANNELS)}")
    layout, brats = find_brats(brats_root, modalities)        # validate every path first
    ixi, ixi_info = find_ixi(ixi_root, ixi_demographics, impute_missing_age)
    b_train, b_test = _split(brats, n_train, n_test, seed, "tasks.brats_root")
    i_train, i_test = _split(ixi, n_train, n_test, seed, "tasks.ixi_root")

    seg_t = _transforms(size, spacing, with_label=True)
    channels = [MSD_CHANNELS[m] for m in modalities] if layout == "msd" else None
    labels, remap = ({0, 1, 2, 3}, None) if layout == "msd" else ({0, 1, 2, 4}, BRATS21_REMAP)
    seg = [_load(s, seg_t, f"BraTS {split}", channels, remap, labels)
           for split, s in (("train", b_train), ("test", b_test))]
    age_t = _transforms(size, spacing, with_label=False)
    age = [_load(s, age_t, f"IXI {split}", None, None, None)
           for split, s in (("train", i_train), ("test", i_test))]
    ages = age[0][1].astype(np.float32)
    info = {"stream": name, "size": size, "seed": seed, "spacing": spacing}
    return [
        Task("tumour_seg", "segmentation", ArrayDataset(*seg[0]), ArrayDataset(*seg[1]),
             num_classes=4, info={**info, "layout": layout, "root": str(brats_root),
                                  "modalities": modalities, "subjects": len(brats)}),
        Task("brain_age", "regression", ArrayDataset(age[0][0], ages),
             ArrayDataset(age[1][0], age[1][1].astype(np.float32)),
             target_mean=float(ages.mean()), target_std=regression_scale(ages, age_scale),
             target_scale=age_scale,
             units="years",
             info={**info, **ixi_info, "root": str(ixi_root), "subjects": len(ixi)}),
    ]
