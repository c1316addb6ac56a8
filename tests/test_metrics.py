"""Metrics on hand-computed cases."""
from __future__ import annotations

import math

import pytest

from apga.evaluation.metrics import binary_metrics, study_metrics


def test_image_metrics_by_hand():
    labels = [0, 0, 1, 1]
    probabilities = [0.1, 0.6, 0.7, 0.4]  # predictions 0 1 1 0: 2 of 4 right
    metrics = binary_metrics(labels, probabilities)
    assert metrics["accuracy"] == 0.5
    # pairs (pos, neg): (0.7 > 0.1), (0.7 > 0.6), (0.4 > 0.1), (0.4 < 0.6): 3 of 4
    assert metrics["auroc"] == 0.75
    # observed agreement 0.5, chance agreement 0.5: kappa 0
    assert metrics["kappa"] == 0.0
    one_class = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])  # labels of one class: no AUROC, no kappa
    assert one_class["accuracy"] == 2 / 3 and math.isnan(one_class["auroc"]) and math.isnan(one_class["kappa"])


def test_kappa_by_hand():
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    probabilities = [0.9, 0.9, 0.2, 0.1, 0.1, 0.1, 0.1, 0.8]  # 6 of 8 right
    # p_o = 0.75; p_e = (3/8)(3/8) + (5/8)(5/8) = 34/64
    assert math.isclose(binary_metrics(labels, probabilities)["kappa"], (0.75 - 34 / 64) / (1 - 34 / 64))


def test_study_level_averages_images_first():
    studies = ["a", "a", "b", "b", "b", "c"]
    labels = [1, 1, 0, 0, 0, 1]
    probabilities = [0.9, 0.3, 0.4, 0.7, 0.6, 0.2]  # means: a 0.6 (1), b 0.567 (1), c 0.2 (0)
    metrics = study_metrics(studies, labels, probabilities)
    assert math.isclose(metrics["study_accuracy"], 1 / 3)
    assert math.isclose(metrics["study_auroc"], 0.5)  # a > b, c < b


def test_one_class_gives_nan_auroc():
    assert math.isnan(binary_metrics([1, 1], [0.2, 0.9])["auroc"])
    assert binary_metrics([1, 1], [0.8, 0.9])["accuracy"] == pytest.approx(1.0)
