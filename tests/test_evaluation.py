"""Evaluation on a hand-made split: TTA, kept/removed images, mask metrics on the kept region."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from apga.data import CachedImages, Split
from apga.evaluation.evaluate import evaluate, predict


class TopHalfReader(nn.Module):
    """'Abnormal' logit = 10 x (mean of the top half of the image - mean of the bottom half)."""

    def forward(self, images):
        half = images.shape[-2] // 2
        score = 10 * (images[:, 0, :half].mean((1, 2)) - images[:, 0, half:].mean((1, 2)))
        return torch.stack([torch.zeros_like(score), score], dim=1)


class KeepTopHalf:
    """A masking 'method' whose map marks the top half of every image."""

    name, agent, fill = "stub", None, "zero"

    def __init__(self):
        self.classifier = TopHalfReader()

    def mask_probabilities(self, images, truths=None):
        maps = torch.zeros(len(images), 1, *images.shape[-2:])
        maps[..., : images.shape[-2] // 2, :] = 0.9
        return maps

    def keep_mask(self, maps):
        return (maps > 0.5).float()

    def policy_area(self, maps):
        return self.keep_mask(maps).flatten(1).mean(1)


def _split(size: int = 8, count: int = 6) -> Split:
    generator = np.random.default_rng(0)
    images = generator.integers(30, 226, size=(count, size, size), dtype=np.uint8)
    bone = np.zeros((count, size, size), dtype=np.uint8)
    bone[:, : size // 2] = 1  # the kept region is exactly the bone
    labels = np.array([0, 1, 0, 1, 1, 0])
    index = pd.DataFrame({"label": labels, "study": ["a", "a", "b", "c", "c", "d"], "path": [f"{i}.png" for i in range(count)]})
    return Split(index, CachedImages(images, np.arange(count), labels, {"bone": bone, "finding": np.zeros_like(bone)}))


def _softmax_abnormal(classifier, images):
    return torch.softmax(classifier(images), 1)[:, 1].numpy()


def test_tta_averages_with_the_kept_image_and_removed_blanks_the_kept_region():
    split, method = _split(), KeepTopHalf()
    outputs, _ = predict(method, split, torch.device("cpu"), batch_size=4)
    images = torch.from_numpy(split.dataset.images.astype(np.float32) / 255).unsqueeze(1).expand(-1, 3, -1, -1)
    keep = torch.zeros_like(images)
    keep[..., :4, :] = 1
    p = _softmax_abnormal(method.classifier, images)
    p_kept = _softmax_abnormal(method.classifier, images * keep)
    p_removed = _softmax_abnormal(method.classifier, images * (1 - keep))
    assert not np.allclose(p_kept, p_removed)  # the test can tell them apart
    np.testing.assert_allclose(outputs["p"], p, rtol=1e-5)
    np.testing.assert_allclose(outputs["p_kept"], p_kept, rtol=1e-5)
    np.testing.assert_allclose(outputs["p_removed"], p_removed, rtol=1e-5)
    np.testing.assert_allclose(outputs["p_tta"], (p + p_kept) / 2, rtol=1e-5)
    np.testing.assert_allclose(outputs["mask_area"], 0.5)


def test_mask_metrics_measure_the_kept_region():
    metrics = evaluate(KeepTopHalf(), _split(), torch.device("cpu"), batch_size=4,
                       mask_quality=True)
    assert metrics["mask_iou"] == 1.0 and metrics["mask_recall"] == 1.0  # kept region == bone
    assert metrics["bone_precision_10"] == 1.0 and metrics["bone_precision_30"] == 1.0
    assert metrics["bone_auroc"] == 1.0 and metrics["mask_area"] == 0.5 and metrics["collapsed"] == 0.0
    assert np.isnan(metrics["finding_cover_10"])  # no image has a finding
    assert metrics["location_gap_10"] != 0  # the classifier reads the top half; rolled by half, the mask leaves it


def test_study_probability_is_the_mean_of_its_images():
    from apga.evaluation.metrics import study_metrics

    # study a: 0.9, 0.1, 0.1 -> mean 0.37 (normal), max 0.9 (abnormal); study b: 0.6 -> abnormal
    metrics = study_metrics(["a", "a", "a", "b"], [0, 0, 0, 1], [0.9, 0.1, 0.1, 0.6])
    assert metrics["study_accuracy"] == 1.0
    metrics = study_metrics(["a", "a", "b", "b"], [1, 1, 0, 0], [0.55, 0.25, 0.45, 0.35])  # a: 0.40, b: 0.40
    assert metrics["study_accuracy"] == pytest.approx(0.5) and metrics["study_auroc"] == pytest.approx(0.5)


def test_mask_quality_pairs_swap_partners_by_the_splits_patients(monkeypatch):
    """The batches carry each image's patient, and the swap gap gets them (not the batch order)."""
    from apga.evaluation import mask_quality

    split = _split()
    split = Split(split.index, CachedImages(split.dataset.images, split.dataset.rows, split.dataset.labels,
                                            split.dataset.truths, patients=np.array([4, 4, 9, 9, 9, 2])))
    seen = []
    original = mask_quality.location_gaps

    def recording(*args, patients=None, **kwargs):
        seen.append(patients.tolist())
        return original(*args, patients=patients, **kwargs)

    monkeypatch.setattr(mask_quality, "location_gaps", recording)
    predict(KeepTopHalf(), split, torch.device("cpu"), batch_size=4,
            mask_quality=True)
    assert seen == [[4, 4, 9, 9], [9, 2]]
