"""Real-data layouts (MSD Task01, BraTS 2021, IXI) on tiny NIfTI files made here with nibabel."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from cl_bench.data.real_stream import brats_ixi
from cl_bench.errors import ConfigError, DataError

SHAPE = (20, 24, 18)
AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])


def blob_labels(values=(1, 2, 3)) -> np.ndarray:
    """Nested boxes: outer values[0], middle values[1], inner values[2]."""
    lab = np.zeros(SHAPE, np.int16)
    lab[4:16, 5:19, 3:15] = values[0]
    lab[6:14, 8:16, 5:13] = values[1]
    lab[8:12, 10:14, 7:11] = values[2]
    return lab


def brain(offset: float, rng) -> np.ndarray:
    img = np.zeros(SHAPE, np.float32)
    img[2:18, 2:22, 2:16] = offset + rng.normal(0, 1, (16, 20, 14))
    return img


def save(arr, path, dtype=None):
    nib.save(nib.Nifti1Image(arr.astype(dtype or arr.dtype), AFFINE), str(path))


def make_msd(root, n=6):
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(1, n + 1):
        # channels FLAIR, T1w, T1gd, T2w; the T1gd channel is brightest inside the inner box
        chans = [brain(10.0 * (c + 1), rng) for c in range(4)]
        chans[2][8:12, 10:14, 7:11] += 50
        save(np.stack(chans, -1), root / "imagesTr" / f"BRATS_{i:03d}.nii.gz")
        save(blob_labels(), root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", np.uint8)
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"mac resource fork")
    return root


def make_brats21(root, n=4):
    rng = np.random.default_rng(1)
    for i in range(n):
        sub = root / f"BraTS2021_{i:05d}"
        sub.mkdir(parents=True)
        for m in ("flair", "t1", "t1ce", "t2"):
            save(brain(5.0, rng), sub / f"{sub.name}_{m}.nii.gz")
        # BraTS 2021: 2 edema (outer), 1 necrotic core (middle), 4 enhancing (inner)
        save(blob_labels((2, 1, 4)), sub / f"{sub.name}_seg.nii.gz", np.uint8)
    return root


def make_ixi(root, ages=(25.0, 40.0, None, 61.5, 70.0, 33.0), extra_file=True):
    rng = np.random.default_rng(2)
    (root / "IXI-T1").mkdir(parents=True)
    rows = ["IXI_ID,SEX_ID,AGE"]
    for k, age in enumerate(ages, start=2):
        save(brain(3.0, rng), root / "IXI-T1" / f"IXI{k:03d}-Guys-{1000 + k}-T1.nii.gz")
        rows.append(f"{k},1,{'' if age is None else age}")
    if extra_file:  # a scan with no demographics row
        save(brain(3.0, rng), root / "IXI-T1" / "IXI999-HH-9999-T1.nii.gz")
    (root / "IXI.csv").write_text("\n".join(rows) + "\n")
    return root


def stream(tmp_path, brats, **kw):
    args = dict(brats_root=str(brats), ixi_root=str(tmp_path / "ixi"), size=16, n_train=2,
                n_test=1, spacing=None)
    args.update(kw)
    return brats_ixi(**args)


@pytest.fixture
def msd(tmp_path):
    make_ixi(tmp_path / "ixi")
    return make_msd(tmp_path / "Task01_BrainTumour")


def test_msd_layout_shapes_labels_and_modalities(tmp_path, msd):
    seg, age = stream(tmp_path, msd, modalities=["flair", "t1gd"])
    item = seg.train[0]
    assert item["image"].shape == (2, 16, 16, 16) and item["image"].dtype.is_floating_point
    assert item["label"].shape == (1, 16, 16, 16)
    assert set(item["label"].unique().tolist()) == {0, 1, 2, 3}
    # the T1gd channel (second selected) is the one bright in the enhancing core
    img, lab = item["image"], item["label"][0]
    core = lab == 3
    assert img[1][core].mean() > img[0][core].mean() + 1.0
    assert age.train[0]["image"].shape == (1, 16, 16, 16)
    assert seg.info["layout"] == "msd" and seg.info["subjects"] == 6


def test_brats2021_labels_are_remapped_to_msd(tmp_path):
    make_ixi(tmp_path / "ixi")
    root = make_brats21(tmp_path / "brats21")
    seg, _ = stream(tmp_path, root, modalities=["t1ce"])
    lab = seg.train[0]["label"][0]
    ref = stream(tmp_path, make_msd(tmp_path / "msd"))[0].train[0]["label"][0]
    # outer edema 2 -> 1, middle core 1 -> 2, inner enhancing 4 -> 3: same nesting as MSD
    assert set(lab.unique().tolist()) == {0, 1, 2, 3}
    counts = [(lab == k).sum().item() for k in (1, 2, 3)]
    assert counts == [(ref == k).sum().item() for k in (1, 2, 3)]
    assert counts[0] > counts[1] > counts[2] > 0
    assert seg.info["layout"] == "brats2021"


def test_ixi_ages_from_csv_drop_or_impute(tmp_path, msd):
    _, age = stream(tmp_path, msd, n_train=3, n_test=2)
    all_ages = sorted(age.train.labels.tolist() + age.test.labels.tolist())
    assert all_ages == [25.0, 33.0, 40.0, 61.5, 70.0]
    assert age.info["missing_age"] == 1 and age.info["no_demographics_row"] == 1
    assert age.units == "years" and age.target_mean == pytest.approx(age.train.labels.mean().item())
    _, imputed = stream(tmp_path, msd, n_train=4, n_test=2, impute_missing_age=50.0)
    assert 50.0 in imputed.train.labels.tolist() + imputed.test.labels.tolist()
    assert imputed.info["imputed_age"] == 1


@pytest.mark.parametrize("kw, err, needles", [
    ({"brats_root": None}, DataError, ["tasks.brats_root", "imagesTr"]),
    ({"brats_root": "/no/such/dir"}, DataError, ["tasks.brats_root", "/no/such/dir"]),
    ({"ixi_root": "/no/ixi"}, DataError, ["tasks.ixi_root", "/no/ixi", "IXI-T1"]),
    ({"ixi_demographics": "/no/IXI.xls"}, DataError, ["tasks.ixi_demographics", "/no/IXI.xls"]),
    ({"modalities": ["dwi"]}, ConfigError, ["tasks.modalities", "dwi"]),
    ({"n_train": 5, "n_test": 2}, DataError, ["tasks.brats_root", "6 usable subjects"]),
])
def test_bad_paths_and_values_name_the_key(tmp_path, msd, kw, err, needles):
    with pytest.raises(err) as e:
        stream(tmp_path, msd, **kw)
    for needle in needles:
        assert needle in str(e.value)


def test_empty_folder_is_reported(tmp_path):
    make_ixi(tmp_path / "ixi")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no BraTS subjects under"):
        stream(tmp_path, tmp_path / "empty")


@pytest.mark.parametrize("which", ["brats_image", "brats_label", "ixi_t1", "ixi_truncated"])
def test_an_unreadable_nifti_in_a_valid_tree_is_one_line_naming_the_file(tmp_path, msd, which):
    bad = {"brats_image": msd / "imagesTr" / "BRATS_002.nii.gz",
           "brats_label": msd / "labelsTr" / "BRATS_002.nii.gz",
           "ixi_t1": tmp_path / "ixi" / "IXI-T1" / "IXI003-Guys-1003-T1.nii.gz",
           "ixi_truncated": tmp_path / "ixi" / "IXI-T1" / "IXI003-Guys-1003-T1.nii.gz"}[which]
    if which == "ixi_truncated":  # a copy cut short: a valid gzip header, then nothing
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_bytes(gzip.compress(b"not a nifti at all"))
    with pytest.raises(DataError) as e:
        stream(tmp_path, msd, n_train=4, n_test=2, impute_missing_age=50.0)
    message = str(e.value)
    assert str(bad) in message and "\n" not in message


def test_label_out_of_range_names_the_file(tmp_path, msd):
    lab = msd / "labelsTr" / "BRATS_001.nii.gz"
    save(blob_labels((1, 2, 7)), lab, np.uint8)
    with pytest.raises(DataError) as e:
        stream(tmp_path, msd, n_train=4, n_test=2, impute_missing_age=50.0)
    assert str(lab) in str(e.value) and "[7]" in str(e.value)


def test_demographics_without_columns(tmp_path, msd):
    (tmp_path / "ixi" / "IXI.csv").write_text("ID,YEARS\n2,30\n")
    with pytest.raises(DataError, match="IXI_ID and AGE"):
        stream(tmp_path, msd)
