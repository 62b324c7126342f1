"""The embedded stream ``brain_seg_age``: synthetic brains from nilearn's MNI152 template.

Reconstructs the two-task setting of the brain-MRI foundation-model study (arXiv 2602.23533:
BraTS tumour segmentation, then IXI brain-age regression) without any download. Every subject is
the MNI152 2 mm template's tissue maps (``load_mni152_gm_template``, ``..._wm_template``,
``load_mni152_brain_mask``; offline in nilearn), cropped to the brain, padded to a cube and resampled
to ``size``³, then:

* **all subjects**: a random smooth elastic deformation (low-resolution Gaussian displacement field,
  ~2 voxels at 64³), a head-size scaling of ±5 %, a smooth multiplicative bias field and Gaussian
  noise (3 % of the white-matter intensity); the T1-like image is a tissue mix CSF 0.25, GM 0.6,
  WM 1.0 of the deformed maps;
* **tumour_seg** ("BraTS-like", bias field ±15 %): a roughly ellipsoidal three-part tumour with an
  irregular border (radius perturbed by smooth noise), random orientation, 6–13 voxel semi-axes at
  64³, centred in white matter: non-enhancing/necrotic core (MSD label 2) at normalised radius
  < 0.35, enhancing rim (label 3) to 0.55, peritumoral edema (label 1) to 1.0; intensities like
  post-contrast T1 (core 0.4, rim 1.45, edema 0.75 of the local tissue), and a mass effect that
  pushes surrounding tissue radially away from the centre;
* **brain_age** ("IXI-like" healthy, bias-corrected: residual bias ±5 %): age ~ U(20, 86) years;
  atrophy a = (age − 20)/66 scaled by a per-subject "brain reserve" factor ~ N(1, 0.25): cortical
  GM thins (a share 0.35·a of GM turns into CSF, i.e. sulcal widening) and the ventricles enlarge
  (a radial inflation of the central region so that its volume grows by 1 + 2a, i.e. about
  threefold from the 20s to the 80s).

What it does not model: real scanner physics and contrasts (a single T1-like channel; no FLAIR/T2),
cortical folding differences between people, white-matter lesions, sex effects, non-linear ageing
trajectories or any site effect. Check that age is in the images (not a model's accuracy target): on
the default stream, a ridge regression on four intensity-histogram fractions of the brain (shares
of voxels below -1.5, -1, -0.5, 0 SD) predicts age with MAE 6.4 years from the 24 training
subjects, against 16.0 years for the mean; no parameter was tuned to a model's accuracy.

Volumes are z-scored over brain voxels with the background exactly 0 (as MONAI's
``NormalizeIntensityd(nonzero=True)``), cached on disk as one ``.npz`` per argument set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import annotated_types as at
import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from cl_bench.data.base import ArrayDataset, Task, regression_scale
from cl_bench.files import atomic_write
from cl_bench.ranges import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, checked

log = logging.getLogger(__name__)

#: bump when the generator's output changes, so old caches are not reused. 3: the smooth fields'
#: cubic zoom is separable (:func:`_cubic_zoom`), equal to version 2's 3-D zoom to float
#: rounding; of the default stream's arrays one float32 voxel of 44 million moved by one ulp
#: (1.5e-8), the labels and ages are unchanged
GENERATOR_VERSION = 3
_TISSUE = {"csf": 0.25, "gm": 0.6, "wm": 1.0}


@lru_cache(maxsize=4)
def _atlas(size: int) -> dict[str, np.ndarray]:
    """MNI152 GM/WM/CSF probability maps and brain mask, brain-cropped, cubed, at ``size``³
    (read-only: computed once per process and size)."""
    from nilearn import datasets

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=2).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=2).get_fdata(), np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata(), np.float32) > 0.5
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    side = int((hi - lo).max()) + 4
    maps = {}
    for name, arr in (("gm", gm), ("wm", wm), ("mask", mask.astype(np.float32))):
        crop = arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        cube = np.zeros((side,) * 3, np.float32)
        off = [(side - s) // 2 for s in crop.shape]
        cube[off[0]:off[0] + crop.shape[0], off[1]:off[1] + crop.shape[1],
             off[2]:off[2] + crop.shape[2]] = crop
        maps[name] = ndimage.zoom(cube, size / side, order=1)
    maps["mask"] = (maps["mask"] > 0.5).astype(np.float32)
    total = np.clip(maps["gm"] + maps["wm"], 0, 1)
    scale = np.where(maps["gm"] + maps["wm"] > 1, 1 / np.maximum(maps["gm"] + maps["wm"], 1e-6), 1)
    maps["gm"], maps["wm"] = maps["gm"] * scale * maps["mask"], maps["wm"] * scale * maps["mask"]
    maps["csf"] = np.clip(1 - total, 0, 1) * maps["mask"]
    return maps


@lru_cache(maxsize=16)
def _cubic_zoom_matrix(coarse: int, size: int) -> np.ndarray:
    """The 1-D cubic-spline zoom from ``coarse`` to ``size`` samples as a ``(size, coarse)``
    matrix (read-only): column ``j`` is ``ndimage.zoom(e_j, size / coarse, order=3)`` of the
    unit vector ``e_j``, cropped to ``size``, so it has that call's grid convention (end samples
    aligned, ``grid_mode=False``), boundary mode (``"constant"``), prefilter and output length."""
    m = np.stack([ndimage.zoom(e, size / coarse, order=3) for e in np.eye(coarse)], 1)[:size]
    m.setflags(write=False)
    return m


def _cubic_zoom(x: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.zoom(x, size / c, order=3)[:size, :size, :size]`` of a ``(c, c, c)`` array, one
    axis at a time: ``(size, size, size)`` float64.

    A tensor-product B-spline is separable (Unser 1999, "Splines: a perfect fit for signal and
    image processing", IEEE Signal Process. Mag. 16(6)): the 3-D prefilter is the 1-D one along
    each axis and the 3-D interpolation weights are products of 1-D ones, so the 3-D zoom is
    the 1-D zoom (:func:`_cubic_zoom_matrix`) applied along each axis in turn. It differs from
    the 3-D call only by float rounding (max abs difference 7.1e-15 over 900 unit-normal fields,
    sizes 16-64 including 48 and 50, coarse 3, 5, 6) and takes ~0.6 ms instead of ~0.25 s at
    64³ (the 3-D call evaluates 4³ spline taps per output voxel)."""
    c = x.shape[0]
    m = _cubic_zoom_matrix(c, size)
    y = x @ m.T                                                # last axis: (c, c, size)
    y = (m @ y.reshape(c, -1)).reshape(size, c, size)          # first axis: (size, c, size)
    return np.matmul(m, y)                                     # middle axis: (size,) * 3


def _smooth_field(rng: np.random.Generator, size: int, coarse: int = 5) -> np.ndarray:
    """A smooth random field ``(size,)*3`` with unit-ish std (cubic upsampling of ``coarse``³
    noise, :func:`_cubic_zoom`)."""
    return _cubic_zoom(rng.standard_normal((coarse,) * 3), size)


def _warp(maps: dict[str, np.ndarray], coords: np.ndarray) -> dict[str, np.ndarray]:
    return {k: ndimage.map_coordinates(v, coords, order=1, mode="constant") for k, v in maps.items()}


def _base_coords(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sampling coordinates ``(3, size, size, size)``: elastic deformation + head-size scaling."""
    grid = np.indices((size,) * 3, dtype=np.float32)
    centre = (size - 1) / 2
    scale = rng.uniform(0.95, 1.05)
    amp = 2.0 * size / 64
    disp = np.stack([_smooth_field(rng, size) * amp for _ in range(3)])
    return (grid - centre) / scale + centre + disp


def _image(maps: dict[str, np.ndarray], rng: np.random.Generator, bias: float) -> np.ndarray:
    size = maps["mask"].shape[0]
    img = sum(w * maps[k] for k, w in _TISSUE.items())
    img = img * np.exp(bias * _smooth_field(rng, size, 3))
    img = img + rng.normal(0, 0.03, img.shape)
    return img


def _normalise(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """z-score over the brain, background exactly 0 (MONAI NormalizeIntensityd(nonzero=True))."""
    brain = mask > 0.5
    out = np.zeros_like(img, dtype=np.float32)
    vals = img[brain]
    out[brain] = (vals - vals.mean()) / max(vals.std(), 1e-6)
    return out


#: the tissue classes of :func:`tissue_labels`, in label order
TISSUE_CLASSES = ("background", "csf", "gm", "wm")


def tissue_labels(maps: dict[str, np.ndarray]) -> np.ndarray:
    """Hard tissue labels ``(S, S, S)`` uint8 of a subject's warped tissue maps: 0 outside the
    brain mask, else the most probable of CSF (1), GM (2), WM (3) (:data:`TISSUE_CLASSES`).
    Deterministic: consumes no random numbers."""
    probs = np.stack([maps["csf"], maps["gm"], maps["wm"]])
    return np.where(maps["mask"] > 0.5, probs.argmax(0) + 1, 0).astype(np.uint8)


def tumour_subject(size: int, rng: np.random.Generator, tissue: bool = False):
    """One BraTS-like subject: image ``(1, S, S, S)`` float32 and labels ``(1, S, S, S)`` int64.

    Labels follow MSD Task01: 0 background, 1 edema, 2 non-enhancing core, 3 enhancing tumour.
    ``tissue``: also return the subject's :func:`tissue_labels` ``(S, S, S)`` uint8 (of the
    tissue the tumour displaced and overlays: the tumour is not a tissue class), third; the
    image and labels are the same either way.
    """
    atlas = _atlas(size)
    grid = np.indices((size,) * 3, dtype=np.float32)
    # centre in white matter, away from the border
    wm_idx = np.argwhere(ndimage.binary_erosion(atlas["wm"] > 0.5, iterations=max(size // 16, 1)))
    centre = wm_idx[rng.integers(len(wm_idx))].astype(np.float32)
    radii = rng.uniform(6, 13, 3) * size / 64
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    rel = np.tensordot(rot.T, grid - centre[:, None, None, None], axes=1)
    d = np.sqrt(sum((rel[i] / radii[i]) ** 2 for i in range(3)))
    d = d * (1 + 0.15 * _smooth_field(rng, size, 6))
    # mass effect: sample tissue from closer to the centre, i.e. push it outwards
    r = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    push = 0.6 * radii.mean() * np.exp(-(r / (1.5 * radii.mean())) ** 2)
    coords = _base_coords(rng, size)
    coords = coords - push * (grid - centre[:, None, None, None]) / np.maximum(r, 1e-3)
    maps = _warp(atlas, coords)
    mask = maps["mask"] > 0.5
    label = np.zeros((size,) * 3, np.int64)
    label[d < 1.0] = 1
    label[d < 0.55] = 3
    label[d < 0.35] = 2
    label[~mask] = 0
    img = _image(maps, rng, bias=0.15)
    factor = np.choose(label, [1.0, 0.75, 0.4, 1.45]) * 1.0
    tumour = label > 0
    img[tumour] = (factor[tumour] * np.maximum(img[tumour], 0.6)
                   + rng.normal(0, 0.03, tumour.sum()))
    if tissue:
        return _normalise(img, mask)[None], label[None], tissue_labels(maps)
    return _normalise(img, mask)[None], label[None]


def age_subject(size: int, age: float, rng: np.random.Generator, tissue: bool = False):
    """One IXI-like healthy subject of ``age`` years: image ``(1, S, S, S)`` float32
    (``tissue``: and its :func:`tissue_labels` ``(S, S, S)`` uint8, the same image)."""
    atlas = _atlas(size)
    a = np.clip((age - 20) / 66 * rng.normal(1.0, 0.25), 0, 1.5)
    grid = np.indices((size,) * 3, dtype=np.float32)
    centre = np.array([(size - 1) / 2] * 3, np.float32)[:, None, None, None]
    rel = grid - centre
    r = np.sqrt((rel ** 2).sum(0))
    # ventricular enlargement: radial inflation around the brain centre, the central ~8-voxel
    # (at 64^3) region growing by a factor (1 + 2a) in volume (lateral ventricles roughly triple
    # between the 20s and the 80s)
    r0 = 8.0 * size / 64
    inflate = r0 * ((1 + 2 * a) ** (1 / 3) - 1) * np.exp(-(r / (1.5 * r0)) ** 2)
    coords = _base_coords(rng, size) - inflate * rel / np.maximum(r, 1e-3)
    maps = _warp(atlas, coords)
    # cortical thinning: part of the grey matter becomes CSF (sulcal widening)
    lost = 0.35 * a * maps["gm"]
    maps = {"gm": maps["gm"] - lost, "wm": maps["wm"], "csf": np.clip(maps["csf"] + lost, 0, 1),
            "mask": maps["mask"]}
    # healthy research scans are bias-corrected (N4) before use: a smaller residual bias field
    img = _normalise(_image(maps, rng, bias=0.05), maps["mask"])[None]
    return (img, tissue_labels(maps)) if tissue else img


#: below this cube side a subject takes milliseconds, and worker processes would cost more than
#: they save
PARALLEL_MIN_SIZE = 48


def _subject(size: int, seed: int, task: int, split: int, i: int):
    """Subject ``i`` of ``split`` (0 train, 1 test) of ``task`` (1 tumour_seg, 2 brain_age):
    ``(image, labels)`` or ``(image, age)``. Its random numbers come from its own generator,
    seeded by ``(seed, task, split, i)`` alone, so subjects can be made in any order or process
    with bit-identical results."""
    rng = np.random.default_rng([seed, task, split, i])
    if task == 1:
        return tumour_subject(size, rng)
    age = float(rng.uniform(20, 86))
    return age_subject(size, age, rng), age


def _start_worker() -> None:
    """A generation worker's set-up: Ctrl-C is left to the parent, which cancels the work (the
    worker finishes its subject and exits without a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def generation_workers(size: int, subjects: int) -> int:
    """Processes :func:`_generate` uses: the run's torch threads (``hardware.num_threads``; the
    runner sets them first), at most the usable cores and ``subjects``; 1 (no worker processes)
    below :data:`PARALLEL_MIN_SIZE`."""
    if size < PARALLEL_MIN_SIZE:
        return 1
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)), subjects))


def _run_jobs(fn, jobs: list[tuple], size: int, desc: str) -> dict[tuple, object]:
    """``{job: fn(*job)}`` for every job, in :func:`generation_workers` processes when that is
    more than 1: forked, as PyTorch's DataLoader workers are (they inherit the atlas, and a
    script that builds the stream outside ``if __name__ == "__main__"`` still works; ``spawn``
    where the platform has no fork). Results are the same either way when each job seeds its
    own generator (:func:`_subject`). Ctrl-C or an error cancels the jobs not started."""
    workers = generation_workers(size, len(jobs))
    made = {}
    with tqdm(total=len(jobs), desc=desc, leave=False, disable=None) as bar:
        if workers == 1:
            for job in jobs:
                made[job] = fn(*job)
                bar.update()
        else:
            _atlas(size)  # once, before the fork
            fork = "fork" in multiprocessing.get_all_start_methods()
            pool = ProcessPoolExecutor(workers, multiprocessing.get_context(
                "fork" if fork else "spawn"), initializer=_start_worker)
            try:
                for job, result in zip(jobs, pool.map(fn, *zip(*jobs))):
                    made[job] = result
                    bar.update()
            finally:  # on an error or Ctrl-C: drop the subjects not started
                pool.shutdown(wait=True, cancel_futures=True)
    return made


def _generate(size: int, n_train: int, n_test: int, seed: int,
              age_n_train: int | None = None, age_n_test: int | None = None
              ) -> dict[str, np.ndarray]:
    """Every subject of the stream, stacked: ``seg_x``/``age_x`` ``(N, 1, S, S, S)`` float32,
    ``seg_y`` ``(N, 1, S, S, S)`` int8, ``age_y`` ``(N,)`` float32 years; ``N = n_train + n_test``
    for the tumour task, ``age_n_train + age_n_test`` for the age task (``None``: as the tumour
    task's), train first. Made by :func:`_run_jobs`; bit-identical however many processes, and
    a subject does not depend on how many others are made (:func:`_subject`)."""
    sizes = {1: (n_train, n_test), 2: (age_n_train or n_train, age_n_test or n_test)}
    jobs = [(size, seed, task, split, i) for task in (1, 2)
            for split in (0, 1) for i in range(sizes[task][split])]
    made = _run_jobs(_subject, jobs, size, f"generating brain_seg_age ({size}^3)")
    out: dict[str, list] = {k: [] for k in ("seg_x", "seg_y", "age_x", "age_y")}
    for split in (0, 1):
        for i in range(sizes[1][split]):
            x, y = made[(size, seed, 1, split, i)]
            out["seg_x"].append(x)
            out["seg_y"].append(y)
        for i in range(sizes[2][split]):
            x, age = made[(size, seed, 2, split, i)]
            out["age_x"].append(x)
            out["age_y"].append(age)
    return {k: np.stack(v).astype(np.float32 if k != "seg_y" else np.int8) for k, v in out.items()}


@checked("tasks")
def make_brain_seg_age(name: str = "brain_seg_age", size: Annotated[int, at.Ge(16)] = 64,
                       n_train: PositiveInt = 32, n_test: PositiveInt = 16,
                       seed: NonNegativeInt = 0, missing_age_fraction: Fraction = 0.0,
                       impute_age: float = 50.0, cache_dir: str | None = None,
                       age_scale: PositiveFloat | None = None,
                       age_n_train: PositiveInt | None = None,
                       age_n_test: PositiveInt | None = None) -> list[Task]:
    """Build the embedded two-task stream (see module docstring; design after arXiv 2602.23533).

    Args:
        name: stream name (recorded in ``Task.info``).
        size: cube side in voxels (≥ 16); images are ``(1, size, size, size)``.
        n_train, n_test: subjects per task and split (≥ 1).
        age_n_train, age_n_test: the brain-age task's own numbers (``None``: ``n_train`` /
            ``n_test``): its evaluation sets can be large enough to choose on (an MAE's standard
            error ≤ 1 year needs ~32 validation and ~64 test subjects) while training stays
            few-shot. The first subjects of a split are the same whatever the numbers.
        seed: data seed; the same arguments give bit-identical arrays.
        missing_age_fraction: share of *training* ages treated as missing and replaced by
            ``impute_age`` (the paper's quirk; test ages stay true), in [0, 1].
        impute_age: the imputed age in years.
        cache_dir: folder for the ``.npz`` cache (``None``: no cache).
        age_scale: years per unit of the normalised age (``mae_normalised = MAE / age_scale``,
            also the regression target's scale); ``None``: the training ages' SD.

    Returns:
        ``[Task("tumour_seg", "segmentation", num_classes=4), Task("brain_age", "regression",
        units="years")]`` with :class:`ArrayDataset` train/test sets.

    Raises:
        ConfigError: an argument out of range, naming ``tasks.<argument>``.
    """
    settings = {"version": GENERATOR_VERSION, "size": size, "n_train": n_train,
                "n_test": n_test, "seed": seed}
    # the age task's own sizes enter the key only when set: older caches stay valid
    settings.update({k: v for k, v in (("age_n_train", age_n_train), ("age_n_test", age_n_test))
                     if v is not None})
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / "brain_seg_age" / f"{key}.npz" if cache_dir else None
    arrays = None
    if path is not None and path.is_file():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in ("seg_x", "seg_y", "age_x", "age_y")}
        except Exception as e:  # a truncated or foreign file: regenerate
            log.warning("cache %s unreadable (%s); regenerating", path, e)
    if arrays is None:
        arrays = _generate(size, n_train, n_test, seed, age_n_train, age_n_test)
        if path is not None:
            atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    tr = slice(0, n_train)
    te = slice(n_train, n_train + n_test)
    a_train, a_test = age_n_train or n_train, age_n_test or n_test
    a_tr, a_te = slice(0, a_train), slice(a_train, a_train + a_test)
    ages_train = arrays["age_y"][a_tr].copy()
    n_missing = int(round(missing_age_fraction * a_train))
    missing = np.random.default_rng([seed, 3]).choice(a_train, n_missing, replace=False)
    ages_train[missing] = impute_age
    info = {**settings, "stream": name, "cache": str(path) if path else None}
    seg = Task("tumour_seg", "segmentation",
               ArrayDataset(arrays["seg_x"][tr], arrays["seg_y"][tr].astype(np.int64)),
               ArrayDataset(arrays["seg_x"][te], arrays["seg_y"][te].astype(np.int64)),
               num_classes=4, info=info)
    age = Task("brain_age", "regression", ArrayDataset(arrays["age_x"][a_tr], ages_train),
               ArrayDataset(arrays["age_x"][a_te], arrays["age_y"][a_te]),
               target_mean=float(ages_train.mean()),
               target_std=regression_scale(ages_train, age_scale), target_scale=age_scale,
               units="years",
               info={**info, "missing_age_fraction": missing_age_fraction,
                     "imputed_ages": n_missing, "impute_age": impute_age})
    return [seg, age]


def pretraining_volumes(n_volumes: int, cache_dir: str | None, size: int = 64,
                        first_seed: int = 1000) -> np.ndarray:
    """Unlabelled brains for self-supervised pretraining, disjoint from every evaluation subject.

    Both tasks' training subjects (16 per task per data seed) of the streams with data seeds
    ``first_seed, first_seed + 1, …`` (the default stream uses seed 0, and tests small seeds),
    labels and ages discarded.

    Returns:
        ``(n_volumes, 1, size, size, size)`` float32 z-scored volumes.
    """
    vols, k = [], 0
    while sum(len(v) for v in vols) < n_volumes:
        for task in make_brain_seg_age(size=size, n_train=16, n_test=1, seed=first_seed + k,
                                       cache_dir=cache_dir):
            vols.append(np.asarray(task.train.images))
        k += 1
    return np.concatenate(vols)[:n_volumes].astype(np.float32)


#: the first entropy word of every pretraining-pool subject's generator; the third word is
#: :data:`POOL_SPLIT`, a split no stream uses (streams: 0 train, 1 test), so no pool subject
#: is a downstream subject, whatever a stream's data seed (``tasks.seed``)
POOL_SEED = 20261207
POOL_SPLIT = 2


def _pool_subject(size: int, kind: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool subject ``i`` of ``kind`` (1 tumour-bearing, 2 healthy of a random age 20-86):
    ``(image (1, S, S, S) float32, tissue labels (S, S, S) uint8)``; its tumour labels and age
    are not kept. Seeded by ``(POOL_SEED, kind, POOL_SPLIT, i)`` alone."""
    rng = np.random.default_rng([POOL_SEED, kind, POOL_SPLIT, i])
    if kind == 1:
        img, _, tissue = tumour_subject(size, rng, tissue=True)
        return img, tissue
    return age_subject(size, float(rng.uniform(20, 86)), rng, tissue=True)


def pretraining_pool(n_volumes: int, cache_dir: str | None, size: int = 64
                     ) -> dict[str, np.ndarray]:
    """A pretraining pool of its own subjects, disjoint from every downstream subject.

    Half healthy brains of random ages (20-86), half tumour-bearing brains (the other half),
    alternating (even indices healthy), generated with the pool's own seeds
    (:data:`POOL_SEED`, :data:`POOL_SPLIT`): never a subject of any ``brain_seg_age`` stream.
    Unlabelled for the downstream tasks (no tumour labels, no ages); each volume comes with its
    GM/WM/CSF tissue labels (:func:`tissue_labels`), which the generator has anyway. Cached as
    one ``.npz`` per argument set.

    Returns:
        ``{"images": (N, 1, S, S, S) float32 z-scored, "tissue": (N, S, S, S) uint8 labels
        0 background, 1 CSF, 2 GM, 3 WM, "healthy": (N,) bool}``.
    """
    settings = {"version": GENERATOR_VERSION, "pool": POOL_SEED, "size": size, "n": n_volumes}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / "pretraining_pool" / f"{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in ("images", "tissue", "healthy")}
        except Exception as e:  # a truncated or foreign file: regenerate
            log.warning("cache %s unreadable (%s); regenerating", path, e)
    jobs = [(size, 2 if i % 2 == 0 else 1, i // 2) for i in range(n_volumes)]
    made = _run_jobs(_pool_subject, jobs, size, f"generating the pretraining pool ({size}^3)")
    arrays = {"images": np.stack([made[j][0] for j in jobs]).astype(np.float32),
              "tissue": np.stack([made[j][1] for j in jobs]).astype(np.uint8),
              "healthy": np.array([j[1] == 2 for j in jobs])}
    if path is not None:
        atomic_write(path, lambda tmp: np.savez(tmp, **arrays))
    return arrays
