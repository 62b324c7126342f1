"""The embedded brain_seg_age generator: shapes, labels, determinism, cache, age signal, quirk."""

from __future__ import annotations

import numpy as np
import pytest

from cl_bench.data.brain_synth import age_subject, make_brain_seg_age
from cl_bench.errors import ConfigError


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synth")
    return make_brain_seg_age(size=24, n_train=3, n_test=2, seed=3, cache_dir=str(cache)), cache


def test_shapes_labels_and_normalisation(stream):
    (seg, age), _ = stream
    assert (seg.name, seg.kind, seg.num_classes) == ("tumour_seg", "segmentation", 4)
    assert (age.name, age.kind, age.units) == ("brain_age", "regression", "years")
    x, y = seg.train.images, seg.train.labels
    assert x.shape == (3, 1, 24, 24, 24) and y.shape == (3, 1, 24, 24, 24)
    assert len(seg.test) == 2 and age.test.images.shape == (2, 1, 24, 24, 24)
    for i in range(3):  # every subject has all three tumour parts
        assert set(np.unique(y[i]).tolist()) == {0, 1, 2, 3}
    brain = x != 0
    assert (y[~brain] == 0).all()  # tumour only inside the brain
    for img in list(x) + list(age.train.images):  # z-scored over the brain, background exactly 0
        vals = img[img != 0]
        assert abs(float(vals.mean())) < 1e-4 and abs(float(vals.std()) - 1) < 1e-2
    ages = age.train.labels.numpy()
    assert ((ages >= 20) & (ages <= 86)).all()
    assert age.target_mean == pytest.approx(float(ages.mean()), rel=1e-6)


def test_deterministic_and_cached(stream):
    (seg, age), cache = stream
    files = list((cache / "brain_seg_age").glob("*.npz"))
    assert len(files) == 1
    again = make_brain_seg_age(size=24, n_train=3, n_test=2, seed=3, cache_dir=str(cache))
    fresh = make_brain_seg_age(size=24, n_train=3, n_test=2, seed=3, cache_dir=None)
    for other in (again, fresh):
        assert np.array_equal(other[0].train.images, seg.train.images)
        assert np.array_equal(other[0].test.labels, seg.test.labels)
        assert np.array_equal(other[1].train.labels, age.train.labels)
    different = make_brain_seg_age(size=24, n_train=3, n_test=2, seed=4)
    assert not np.array_equal(different[0].train.images, seg.train.images)


def test_corrupt_cache_is_regenerated(tmp_path):
    ref = make_brain_seg_age(size=16, n_train=1, n_test=1, cache_dir=str(tmp_path))
    (path,) = (tmp_path / "brain_seg_age").glob("*.npz")
    path.write_bytes(b"truncated")
    again = make_brain_seg_age(size=16, n_train=1, n_test=1, cache_dir=str(tmp_path))
    assert np.array_equal(again[0].train.images, ref[0].train.images)


def test_missing_ages_are_imputed_in_training_labels_only():
    ref = make_brain_seg_age(size=16, n_train=4, n_test=2)
    seg, age = make_brain_seg_age(size=16, n_train=4, n_test=2, missing_age_fraction=0.5)
    train = age.train.labels.numpy()
    assert (train == 50.0).sum() == 2 and age.info["imputed_ages"] == 2
    kept = train != 50.0
    assert np.array_equal(train[kept], ref[1].train.labels.numpy()[kept])
    assert np.array_equal(age.test.labels, ref[1].test.labels)  # test ages stay true


def test_age_drives_atrophy():
    """Ventricles grow with age: the brain centre darkens (same subject draws, only age differs)."""
    grid = np.indices((32,) * 3)
    centre = np.sqrt(((grid - 15.5) ** 2).sum(0)) < 5
    for k in range(3):
        means = [float(age_subject(32, age, np.random.default_rng([11, k]))[0][centre].mean())
                 for age in (20, 50, 86)]
        assert means[0] > means[1] > means[2], means


@pytest.mark.parametrize("kw, key", [({"size": 8}, "tasks.size"), ({"n_train": 0}, "tasks.n_train"),
                                     ({"n_test": 0}, "tasks.n_test"),
                                     ({"missing_age_fraction": 1.5}, "tasks.missing_age_fraction"),
                                     ({"age_scale": -2.0}, "tasks.age_scale")])
def test_bad_arguments_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        make_brain_seg_age(**kw)


def test_age_scale_sets_the_normalised_mae_scale(stream):
    """tasks.age_scale: years per unit of ``mae_normalised`` and of the regression target;
    null keeps the SD of the training ages."""
    (_, default_age), cache = stream
    _, scaled = make_brain_seg_age(size=24, n_train=3, n_test=2, seed=3, cache_dir=str(cache),
                                   age_scale=10.0)
    ages = default_age.train.labels.numpy().astype(np.float64)
    assert scaled.target_std == 10.0
    assert default_age.target_std == pytest.approx(max(ages.std(), 1.0))
    assert scaled.target_mean == default_age.target_mean


def test_worker_processes_make_bit_identical_subjects(monkeypatch):
    # 48^3 (PARALLEL_MIN_SIZE): two worker processes at two torch threads, none at one; each
    # subject has its own seeded generator, so the arrays must be equal to the last bit
    import os

    import torch

    from cl_bench.data import brain_synth

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert brain_synth.generation_workers(48, 4) == 1
        serial = brain_synth._generate(48, 1, 1, seed=5)
        torch.set_num_threads(2)
        if len(os.sched_getaffinity(0)) < 2:
            pytest.skip("one usable core: no worker processes")
        assert brain_synth.generation_workers(48, 4) == 2
        assert brain_synth.generation_workers(47, 4) == 1  # small cubes: no processes
        calls = []
        real_pool = brain_synth.ProcessPoolExecutor
        monkeypatch.setattr(brain_synth, "ProcessPoolExecutor",
                            lambda *a, **k: calls.append(a[0]) or real_pool(*a, **k))
        parallel = brain_synth._generate(48, 1, 1, seed=5)
    finally:
        torch.set_num_threads(before)
    assert calls == [2]
    assert serial.keys() == parallel.keys()
    for k in serial:
        assert serial[k].dtype == parallel[k].dtype and np.array_equal(serial[k], parallel[k]), k


def test_tissue_maps_leave_the_subject_unchanged_and_label_its_tissues():
    from cl_bench.data.brain_synth import TISSUE_CLASSES, tumour_subject
    img, label = tumour_subject(32, np.random.default_rng([5, 1, 0, 0]))
    img2, label2, tissue = tumour_subject(32, np.random.default_rng([5, 1, 0, 0]), tissue=True)
    assert np.array_equal(img, img2) and np.array_equal(label, label2)
    assert tissue.shape == (32, 32, 32) and set(np.unique(tissue)) == {0, 1, 2, 3}
    assert TISSUE_CLASSES == ("background", "csf", "gm", "wm")
    assert np.all(img[0][tissue == 0] == 0)  # background outside the brain, as the image
    age = age_subject(32, 70.0, np.random.default_rng([5, 2, 0, 0]))
    age2, tissue = age_subject(32, 70.0, np.random.default_rng([5, 2, 0, 0]), tissue=True)
    assert np.array_equal(age, age2)
    # white matter is the brightest tissue of the T1-like image
    means = [age[0][tissue == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]


def test_pretraining_pool_is_its_own_subjects_half_healthy(tmp_path):
    from cl_bench.data.brain_synth import pretraining_pool
    pool = pretraining_pool(4, str(tmp_path), size=32)
    assert pool["images"].shape == (4, 1, 32, 32, 32) and pool["tissue"].shape == (4, 32, 32, 32)
    assert pool["healthy"].tolist() == [True, False, True, False]
    again = pretraining_pool(4, str(tmp_path), size=32)  # from the cache, identical
    assert all(np.array_equal(pool[k], again[k]) for k in pool)
    # no pool volume is a subject of a stream (any data seed: the pool's split is used by none)
    stream = make_brain_seg_age(size=32, n_train=4, n_test=2, seed=0, cache_dir=None)
    downstream = [t.train.images for t in stream] + [t.test.images for t in stream]
    for v in pool["images"]:
        assert not any(np.array_equal(v, d) for imgs in downstream for d in np.asarray(imgs))


def test_the_age_task_has_its_own_sizes_and_keeps_its_first_subjects(tmp_path):
    small = make_brain_seg_age(size=16, n_train=3, n_test=2, seed=0, cache_dir=None)
    big = make_brain_seg_age(size=16, n_train=3, n_test=2, seed=0, cache_dir=str(tmp_path),
                             age_n_train=5, age_n_test=4)
    assert len(big[0].train) == 3 and len(big[0].test) == 2
    assert len(big[1].train) == 5 and len(big[1].test) == 4
    assert np.array_equal(np.asarray(big[0].train.images), np.asarray(small[0].train.images))
    assert np.array_equal(np.asarray(big[1].train.images)[:3], np.asarray(small[1].train.images))
    assert np.array_equal(np.asarray(big[1].test.images)[:2], np.asarray(small[1].test.images))


@pytest.mark.parametrize("size, coarse", [(24, 5), (50, 3), (64, 6)])
def test_smooth_field_is_scipys_3d_cubic_zoom_one_axis_at_a_time(size, coarse):
    """The separable zoom (:func:`_cubic_zoom`) is ``ndimage.zoom(order=3)`` of the same noise to
    float rounding, with the same shape and std, and draws the same random numbers."""
    from scipy import ndimage

    from cl_bench.data.brain_synth import _smooth_field
    for k in range(3):
        rng, ref_rng = np.random.default_rng([17, k]), np.random.default_rng([17, k])
        field = _smooth_field(rng, size, coarse)
        ref = ndimage.zoom(ref_rng.standard_normal((coarse,) * 3), size / coarse,
                           order=3)[:size, :size, :size]
        assert field.shape == ref.shape == (size,) * 3 and field.dtype == np.float64
        np.testing.assert_allclose(field, ref, rtol=0, atol=1e-13)
        assert float(field.std()) == pytest.approx(float(ref.std()), rel=1e-12)
        assert rng.random() == ref_rng.random()  # the generator is left in the same state
