"""Image- and study-level metrics (MURA's protocol), computed with scikit-learn.

A study's probability of abnormality is the mean of its images' probabilities; it is called
abnormal when that exceeds 0.5 (Rajpurkar et al., MURA, 2017). An image is called abnormal
when its probability exceeds 0.5.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score


def binary_metrics(labels, probabilities, prefix: str = "") -> dict[str, float]:
    """accuracy, AUROC and Cohen's kappa of probabilities thresholded at 0.5 (AUROC and kappa nan
    where the labels hold one class: neither has a value there)."""
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    predictions = (probabilities > 0.5).astype(int)
    two_classes = len(np.unique(labels)) == 2
    kappa = cohen_kappa_score(labels, predictions) if two_classes else math.nan
    return {
        f"{prefix}accuracy": float(accuracy_score(labels, predictions)),
        f"{prefix}auroc": float(roc_auc_score(labels, probabilities)) if two_classes else math.nan,
        f"{prefix}kappa": float(kappa),
    }


def study_metrics(studies, labels, probabilities) -> dict[str, float]:
    """study_accuracy, study_auroc, study_kappa: images averaged per study first."""
    frame = pd.DataFrame({"study": np.asarray(studies), "label": np.asarray(labels), "p": np.asarray(probabilities)})
    per_study = frame.groupby("study", sort=True).agg(label=("label", "max"), p=("p", "mean"))
    return binary_metrics(per_study["label"], per_study["p"], prefix="study_")
