"""The generated MURA-layout data set."""
from __future__ import annotations

import numpy as np
from PIL import Image

from apga.data import mura
from apga.data.radiograph import render_image
from apga.data.synthetic import ensure_generated, generate


def test_layout_labels_and_masks(tiny_data):
    train, valid = mura.load_split(tiny_data, "train"), mura.load_split(tiny_data, "valid")
    assert set(train["body_part"]) == {"elbow", "wrist"} and set(train["label"]) == {0, 1}
    assert not set(train["patient"]) & set(valid["patient"])  # patients are not shared between splits
    assert train.groupby("study").size().max() > 1  # several images per study
    csv = (tiny_data / "MURA-v1.1" / "train_labeled_studies.csv").read_text().splitlines()
    assert csv[0].startswith("MURA-v1.1/train/") and csv[0].endswith(("/,0", "/,1"))  # official, no header
    for path, label in zip(train["path"][:12], train["label"][:12]):
        mask = np.asarray(Image.open(tiny_data / mura.MASK_DIR / path.removeprefix("MURA-v1.1/")))
        finding = np.asarray(Image.open(tiny_data / mura.FINDING_DIR / path.removeprefix("MURA-v1.1/")))
        image = Image.open(tiny_data / path)
        assert mask.shape == image.size[::-1] and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        assert finding.shape == mask.shape and set(np.unique(finding)) <= {0, 255}
        assert not (finding > mask).any()  # a finding lies inside a bone
        if not label:
            assert finding.max() == 0
    abnormal = train[train["label"] == 1]["path"]
    assert any(np.asarray(Image.open(tiny_data / mura.FINDING_DIR / p.removeprefix("MURA-v1.1/"))).any()
               for p in abnormal)


def test_deterministic_in_seed(tmp_path):
    a = generate(tmp_path / "a", seed=1, train_patients=2, valid_patients=1, parts=("hand",), min_side=32, max_side=40)
    generate(tmp_path / "b", seed=1, train_patients=2, valid_patients=1, parts=("hand",), min_side=32, max_side=40)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == (a["train_images"] + a["valid_images"]) * 3  # images, bone masks, finding masks
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)


def test_ensure_generated_reuses_and_regenerates(tmp_path):
    params = dict(seed=0, train_patients=1, valid_patients=1, parts=("elbow",), min_side=32, max_side=36)
    root = ensure_generated(tmp_path / "d", **params)
    stamp = (root / "GENERATED.json").stat().st_mtime_ns
    ensure_generated(tmp_path / "d", **params)
    assert (root / "GENERATED.json").stat().st_mtime_ns == stamp
    ensure_generated(tmp_path / "d", **{**params, "seed": 1})
    assert (root / "GENERATED.json").stat().st_mtime_ns != stamp


def test_finding_lies_inside_the_relevance_region_and_its_mask_covers_it():
    for seed in range(4):
        rng_normal, rng_abnormal = np.random.default_rng(seed), np.random.default_rng(seed)
        normal, mask, no_finding = render_image(rng_normal, "humerus", abnormal=False, spurious_marker=False)
        abnormal, mask2, finding = render_image(rng_abnormal, "humerus", abnormal=True, spurious_marker=False)
        assert np.array_equal(mask, mask2) and not no_finding.any()
        changed = np.abs(abnormal - normal) > 0  # the finding has its own random stream: nothing else differs
        assert changed.any() and not changed[~mask].any()
        # the saved finding mask holds every changed pixel (a few more where a later marker covers it)
        assert not changed[~finding].any() and not finding[~mask].any()
        assert changed.sum() >= 0.8 * finding.sum()


def test_spurious_marker_follows_the_label_in_train_only(tmp_path):
    root = tmp_path / "s"
    generate(root, seed=2, train_patients=30, valid_patients=30, parts=("elbow",), min_side=32, max_side=36,
             spurious=0.9)

    def marker_rate(split):
        index = mura.load_split(root, split)
        marked = [np.asarray(Image.open(root / p).convert("L"))[1:3, -3:-1].mean() > 250 for p in index["path"]]
        return np.corrcoef(marked, index["label"])[0, 1]

    assert marker_rate("train") > 0.5 and abs(marker_rate("valid")) < 0.3


def test_the_generator_never_removes_a_folder_it_did_not_make(tmp_path):
    """`python -m apga.data.synthetic --out datasets` once deleted the whole datasets/ folder."""
    import subprocess
    import sys

    from cli_helpers import ROOT, environment

    datasets = tmp_path / "datasets"
    (datasets / "MURA-v1.1").mkdir(parents=True)
    (datasets / "MURA-v1.1" / "train_image_paths.csv").write_text("precious\n")
    done = subprocess.run([sys.executable, "-m", "apga.data.synthetic", "--out", str(datasets), "--train-patients", "1",
                           "--valid-patients", "1"], capture_output=True, text=True, env=environment(), cwd=ROOT,
                          timeout=120)
    assert done.returncode == 2 and "not a data set this generator made" in done.stderr.strip().splitlines()[-1]
    assert (datasets / "MURA-v1.1" / "train_image_paths.csv").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets"]  # no temporary folder left either
    generated = datasets / "synthetic"
    generate(generated, seed=1, train_patients=1, valid_patients=1, parts=("elbow",), min_side=40, max_side=48)
    first = (generated / "MURA-v1.1" / "train_image_paths.csv").read_text()
    generate(generated, seed=2, train_patients=2, valid_patients=1, parts=("elbow",), min_side=40, max_side=48)
    assert (generated / "MURA-v1.1" / "train_image_paths.csv").read_text() != first  # its own data set: replaced
    assert sorted(p.name for p in datasets.iterdir()) == ["MURA-v1.1", "synthetic"]


def test_files_and_folders_are_written_with_the_umask(tmp_path):
    import os

    from apga.utils import atomic_write_bytes

    previous = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "file.txt", b"x")
        generate(tmp_path / "data", seed=1, train_patients=1, valid_patients=1, parts=("elbow",), min_side=40,
                 max_side=48)
    finally:
        os.umask(previous)
    assert (tmp_path / "file.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o750


def test_a_condition_changes_only_what_it_names(tmp_path):
    """--spurious adds a corner marker to the same images (its draws have their own stream);
    --clutter adds finding-like marks outside the bones and nothing else; the default data stays
    the data of version 8 (the same record, so the same fingerprint)."""
    import json

    small = dict(seed=5, train_patients=4, valid_patients=2, parts=("elbow",), min_side=40, max_side=48)
    default = generate(tmp_path / "default", **small)
    spurious = generate(tmp_path / "spurious", **small, spurious=0.9)
    clutter = generate(tmp_path / "clutter", **small, clutter=3)
    assert default["train_images"] == spurious["train_images"] == clutter["train_images"]
    assert "clutter" not in json.loads((tmp_path / "default" / "GENERATED.json").read_text())
    marked = 0
    for path in mura.load_split(tmp_path / "default", "train")["path"]:
        plain = np.asarray(Image.open(tmp_path / "default" / path).convert("L"), dtype=int)
        with_marker = np.asarray(Image.open(tmp_path / "spurious" / path).convert("L"), dtype=int)
        changed = np.argwhere(plain != with_marker)
        if len(changed):
            marked += 1
            assert changed[:, 0].max() < 6 and changed[:, 1].min() >= plain.shape[1] - 6  # the top-right corner only
        cluttered = np.asarray(Image.open(tmp_path / "clutter" / path).convert("L"), dtype=int)
        bone = np.asarray(Image.open(tmp_path / "default" / mura.MASK_DIR / path.removeprefix("MURA-v1.1/"))) > 0
        assert np.array_equal(cluttered[bone], plain[bone])  # the bones (and their findings) untouched
        assert np.array_equal(np.asarray(Image.open(tmp_path / "clutter" / mura.MASK_DIR / path.removeprefix("MURA-v1.1/"))),
                              bone.astype(np.uint8) * 255)
    assert marked > 0


def test_a_spurious_data_set_from_before_the_separate_stream_is_made_anew(tmp_path, capsys):
    import json

    small = dict(seed=5, train_patients=2, valid_patients=1, parts=("elbow",), min_side=40, max_side=48, spurious=0.9)
    generate(tmp_path / "data", **small)
    record = json.loads((tmp_path / "data" / "GENERATED.json").read_text())
    del record["marker_stream"]  # as the generator wrote it before
    (tmp_path / "data" / "GENERATED.json").write_text(json.dumps(record))
    ensure_generated(tmp_path / "data", **small)
    assert json.loads((tmp_path / "data" / "GENERATED.json").read_text())["marker_stream"] == "separate"


def _pixels(root, path):
    return np.asarray(Image.open(root / path).convert("L"), dtype=int)


def test_the_default_data_is_the_data_of_version_8(tmp_path):
    """Every pixel of every image and mask of a small default data set, against the digest the
    generator of version 8 gave (measured with the code before any generator condition existed):
    a condition's code must not move the default data."""
    import hashlib

    root = tmp_path / "default"
    generate(root, seed=5, train_patients=4, valid_patients=2, parts=("elbow",), min_side=40, max_side=48)
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.png")):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(np.asarray(Image.open(file)).tobytes())
    assert digest.hexdigest()[:16] == "f622416183d06c0e"
    # and every file's bytes (the data fingerprint reads the files' CRC-32s): pixels alike but bytes
    # not would be a new PNG encoder (zlib), or a change in how the generator writes
    files = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        files.update(str(file.relative_to(root)).encode())
        files.update(file.read_bytes())
    assert files.hexdigest()[:16] == "1f089897cb9301c4"


def test_the_conditions_draw_the_data_they_drew_before_the_drawing_was_made_fast(tmp_path):
    """Every pixel of a small data set with every condition on, against the digest the generator gave
    before its drawing was vectorised (full coordinate grids, one temporary per operation)."""
    import hashlib

    root = tmp_path / "conditions"
    generate(root, seed=6, train_patients=3, valid_patients=1, parts=("hand", "shoulder"), min_side=40, max_side=64,
             clutter=3, finding_scale=2.5, spurious=0.9)
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.png")):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(np.asarray(Image.open(file)).tobytes())
    assert digest.hexdigest()[:16] == "12205796e16aa9eb"


def test_a_marker_does_not_move_the_clutter_and_the_finding_scale_moves_only_the_findings(tmp_path):
    small = dict(seed=5, train_patients=4, valid_patients=2, parts=("elbow",), min_side=40, max_side=48)
    generate(tmp_path / "default", **small)
    generate(tmp_path / "clutter", **small, clutter=3)
    generate(tmp_path / "both", **small, clutter=3, spurious=0.9)
    generate(tmp_path / "large", **small, finding_scale=2.0)
    larger = 0
    for path in mura.load_split(tmp_path / "default", "train")["path"]:
        cluttered, both = _pixels(tmp_path / "clutter", path), _pixels(tmp_path / "both", path)
        changed = np.argwhere(cluttered != both)
        assert not len(changed) or (changed[:, 0].max() < 6 and changed[:, 1].min() >= both.shape[1] - 6)
        mask = path.removeprefix("MURA-v1.1/")
        assert np.array_equal(_pixels(tmp_path / "large" / mura.MASK_DIR, mask),
                              _pixels(tmp_path / "default" / mura.MASK_DIR, mask))  # the same bones
        findings = [_pixels(tmp_path / name / mura.FINDING_DIR, mask) > 0 for name in ("default", "large")]
        outside = ~(findings[0] | findings[1])
        assert np.array_equal(_pixels(tmp_path / "large", path)[outside], _pixels(tmp_path / "default", path)[outside])
        finding, large = findings[0].sum(), findings[1].sum()
        assert (finding == 0) == (large == 0)  # the same images carry a finding
        larger += large > finding
    assert larger > 0


def test_a_condition_out_of_range_is_refused(tmp_path):
    import pytest

    from apga.errors import DataError

    for flags, message in ((dict(clutter=2.5), "--clutter must be a whole number >= 0, got 2.5"),
                           (dict(clutter=-1), "--clutter must be"), (dict(finding_scale=0), "--finding-scale must be a number > 0"),
                           (dict(spurious=1.5), "--spurious must be a number in")):
        with pytest.raises(DataError, match=message):
            generate(tmp_path / "data", train_patients=1, valid_patients=1, parts=("elbow",), **flags)
    assert not (tmp_path / "data").exists()


def _file_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_per_patient_streams_give_the_same_files_whatever_the_workers(tmp_path):
    """Each patient is drawn from its own streams: 1 or 2 worker processes write the same bytes, a
    patient drawn alone is the patient drawn after others, and the record says how it was drawn."""
    import json

    from apga.data.synthetic import _draw_patients, data_parameters

    small = dict(seed=4, train_patients={"elbow": 6, "finger": 4}, valid_patients=2, parts=("elbow", "finger"),
                 min_side=32, max_side=40, spurious=0.8, clutter=1, patient_streams=True,
                 images_per_study=[0.3, 0.3, 0.2, 0.2])
    one = generate(tmp_path / "one", **small, workers=1)
    two = generate(tmp_path / "two", **small, workers=2)  # 14 patients: two tasks of 8 and 6
    assert one == two and one["train_images"] > 10
    assert _file_bytes(tmp_path / "one") == _file_bytes(tmp_path / "two")
    record = json.loads((tmp_path / "one" / "GENERATED.json").read_text())
    assert record["patient_streams"] is True and record["train_patients"] == {"elbow": 6, "finger": 4}
    assert "patient_streams" not in data_parameters()  # the default data keeps its record
    params = data_parameters(**small)
    after, alone = _draw_patients(tmp_path / "a", params, [("train", "elbow", 1), ("train", "elbow", 2)]), \
        _draw_patients(tmp_path / "b", params, [("train", "elbow", 2)])
    assert after[1] == alone[0] and _file_bytes(tmp_path / "a" / "MURA-v1.1" / "train" / "XR_ELBOW" / "patient00002") \
        == _file_bytes(tmp_path / "b" / "MURA-v1.1" / "train" / "XR_ELBOW" / "patient00002")


def test_the_mura_size_has_mura_patients_and_about_its_images():
    import pytest

    from apga.data.synthetic import MURA_PATIENTS, data_parameters, size_parameters
    from apga.errors import DataError

    mura_size = size_parameters("mura", seed=3)
    assert mura_size["train_patients"] == {"elbow": 1711, "finger": 1865, "forearm": 865, "hand": 1945,
                                           "humerus": 587, "shoulder": 2694, "wrist": 3267}
    assert mura_size["valid_patients"] == {"elbow": 158, "finger": 166, "forearm": 133, "hand": 167,
                                           "humerus": 135, "shoulder": 194, "wrist": 207}
    assert set(MURA_PATIENTS) == set(mura_size["train_patients"]) and mura_size["seed"] == 3
    assert (mura_size["min_side"], mura_size["max_side"], mura_size["patient_streams"]) == (256, 512, True)
    mean = lambda probabilities: sum((n + 1) * p for n, p in enumerate(probabilities))  # noqa: E731
    per_patient = mean(mura_size["studies_per_patient"]) * mean(mura_size["images_per_study"])
    for split, images in (("train", 36808), ("valid", 3197)):  # MURA v1.1's images
        assert abs(sum(mura_size[f"{split}_patients"].values()) * per_patient / images - 1) < 0.04
    record = data_parameters(**mura_size)
    assert record["train_patients"]["wrist"] == 3267 and record["images_per_study"] == [0.12, 0.33, 0.34, 0.12, 0.09]
    with pytest.raises(DataError, match="--size mura sets --max-side"):
        size_parameters("mura", max_side=300)
    with pytest.raises(DataError, match="--size must be one of mura"):
        size_parameters("huge")
    with pytest.raises(DataError, match="--train-patients must be a whole number, or one for each body part"):
        data_parameters(train_patients={"elbow": 3}, parts=("elbow", "hand"))
