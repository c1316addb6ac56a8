"""The MURA index: CSV variants, labels from paths, checks, k-shot and holdout splits."""
from __future__ import annotations

import shutil

import numpy as np
import torch
import pytest

from apga.data import mura
from apga.errors import DataError


def _copy(tiny_data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_data, root)
    return root


def _rewrite(path, transform):
    path.write_bytes(transform(path.read_bytes()))


def test_official_headerless_csv_keeps_every_image(tiny_data):
    listed = (tiny_data / "MURA-v1.1" / "train_image_paths.csv").read_text().splitlines()
    index = mura.load_split(tiny_data, "train")
    assert len(index) == len(listed)  # the published script dropped the first row
    assert set(index["path"]) == set(listed)


@pytest.mark.parametrize("variant", ["header", "crlf", "bom+header+crlf"])
def test_csv_variants_parse_the_same(tiny_data, tmp_path, variant):
    root = _copy(tiny_data, tmp_path)
    for name, header in (("valid_image_paths.csv", b"Path\n"), ("valid_labeled_studies.csv", b"Study,Label\n")):
        def transform(data, header=header):
            if "header" in variant:
                data = header + data
            if "crlf" in variant:
                data = data.replace(b"\n", b"\r\n")
            if "bom" in variant:
                data = b"\xef\xbb\xbf" + data
            return data
        _rewrite(root / "MURA-v1.1" / name, transform)
    expected = mura.load_split(tiny_data, "valid")
    parsed = mura.load_split(root, "valid")
    assert parsed.equals(expected)


def test_fields_derived_from_path():
    row = mura.parse_image_path("MURA-v1.1/train/XR_SHOULDER/patient00042/study3_positive/image2.png")
    assert row == {"split": "train", "body_part": "shoulder", "patient": "00042",
                   "study": "MURA-v1.1/train/XR_SHOULDER/patient00042/study3_positive", "label": 1}
    assert mura.parse_image_path("MURA-v1.1/valid/XR_HAND/patient11190/study1_negative/image1.png")["label"] == 0


def test_label_disagreement_is_reported(tiny_data, tmp_path):
    root = _copy(tiny_data, tmp_path)
    _rewrite(root / "MURA-v1.1" / "train_labeled_studies.csv",
             lambda d: d.replace(b"_positive/,1", b"_positive/,0", 1))
    with pytest.raises(DataError, match="label mismatch"):
        mura.load_split(root, "train")


@pytest.mark.parametrize("content, message", [
    (b"a,b,c\nd,e,f\n", "unknown column layout"),
    (b"", "is empty"),
])
def test_malformed_image_csv(tiny_data, tmp_path, content, message):
    root = _copy(tiny_data, tmp_path)
    (root / "MURA-v1.1" / "train_image_paths.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        mura.load_split(root, "train")


def test_missing_csv_and_missing_root(tiny_data, tmp_path):
    root = _copy(tiny_data, tmp_path)
    (root / "MURA-v1.1" / "valid_labeled_studies.csv").unlink()
    with pytest.raises(DataError, match="missing CSV"):
        mura.load_split(root, "valid")
    with pytest.raises(DataError, match="--demo"):
        mura.load_split(tmp_path / "nothing-here", "train")


def test_paths_missing_or_outside_root(tiny_data, tmp_path):
    root = _copy(tiny_data, tmp_path)
    csv = root / "MURA-v1.1" / "valid_image_paths.csv"
    first = csv.read_text().splitlines()[0]
    (root / first).unlink()
    with pytest.raises(DataError, match="does not exist"):
        mura.load_split(root, "valid")
    with pytest.raises(DataError, match="outside the data root"):
        mura.check_paths(root, ["MURA-v1.1/../../etc/passwd.png"])
    with pytest.raises(DataError, match="outside the data root"):
        mura.check_paths(root, ["/etc/passwd.png"])


def test_symlinked_mura_folder_is_accepted(tiny_data, tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "MURA-v1.1").symlink_to(tiny_data / "MURA-v1.1")
    assert len(mura.load_split(tmp_path / "datasets", "valid")) == len(mura.load_split(tiny_data, "valid"))


def test_k_shot_is_balanced_deterministic_and_without_replacement():
    labels = np.array([0] * 30 + [1] * 12)
    first = mura.k_shot_indices(labels, 5, seed=7)
    assert np.array_equal(first, mura.k_shot_indices(labels, 5, seed=7))
    assert not np.array_equal(first, mura.k_shot_indices(labels, 5, seed=8))
    assert len(set(first)) == 10 and (labels[first] == 1).sum() == 5
    with pytest.raises(DataError, match="larger than the 12 abnormal"):
        mura.k_shot_indices(labels, 13, seed=0)


@pytest.mark.parametrize("seed", range(5))
def test_k_shot_draws_k_distinct_images_of_each_class(seed):
    """Without replacement: k equal to a class's size takes every image of it, once (a draw with
    replacement repeats some and misses others in almost every seed)."""
    labels = np.array([0, 1] * 12 + [0] * 8)
    chosen = mura.k_shot_indices(labels, 12, seed)
    assert sorted(chosen[labels[chosen] == 1]) == list(np.flatnonzero(labels == 1))
    negatives = chosen[labels[chosen] == 0]
    assert len(negatives) == len(set(negatives)) == 12 and np.all(np.diff(chosen) > 0)


def test_k_shot_is_a_pure_function_of_labels_k_and_seed():
    labels = np.array([0] * 40 + [1] * 40)
    np.random.seed(1)
    first = mura.k_shot_indices(labels, 6, seed=3)
    np.random.seed(2)  # the global generators do not enter it ...
    torch.manual_seed(5)
    assert np.array_equal(first, mura.k_shot_indices(labels, 6, seed=3))
    assert np.array_equal(first, mura.k_shot_indices(list(labels), 6, seed=3))  # ... nor the container
    draws = {tuple(mura.k_shot_indices(labels, 6, seed)) for seed in range(20)}
    assert len(draws) == 20  # the seed does


def test_holdout_is_a_patient_level_split(tiny_data):
    index = mura.load_split(tiny_data, "train")
    held = mura.holdout_patients(index, 0.3, seed=1)
    assert 0 < held.sum() < len(index)
    assert not set(index["patient"][held]) & set(index["patient"][~held])
    assert np.array_equal(held, mura.holdout_patients(index, 0.3, seed=1))


def test_body_part_selection(tiny_data):
    index = mura.load_split(tiny_data, "train")
    assert set(mura.select_body_part(index, "wrist")["body_part"]) == {"wrist"}
    assert len(mura.select_body_part(index, "all")) == len(index)
    with pytest.raises(DataError, match="no hand images"):
        mura.select_body_part(index, "hand")
