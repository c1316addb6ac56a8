"""Evaluation of a method on a split: probabilities, TTA, deletion/insertion and mask quality.

Everything is batched on the device and moved to the host once, at the end, and computed in
float32 whatever the training precision (`--amp`): the location and swap gaps, occlusion maps and
kept/removed probabilities are differences of nearly equal losses, below bf16's resolution, and a
measurement must not depend on the precision a run trained in.
- plain: softmax of the original image;
- TTA (masking methods, the paper's evaluation; docs/method.md): mean of the softmax of the original and of the
  kept-region image;
- kept / removed: the classifier shown only the kept region, or the image with the kept
  region blanked (a deletion/insertion check that needs no ground truth);
- mask quality (`mask_quality=True`, the final evaluation of masking methods and floors): the
  measures of apga/evaluation/mask_quality.py, from the method's map; `mask_iou` and `mask_recall` of the
  kept region with the bone region are kept for comparison with earlier results, but keeping
  every pixel scores the bones' share of the image on them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from apga.data import Split, make_loader, to_model_input
from apga.errors import NonFiniteError
from apga.evaluation.mask_quality import MapQuality, occlusion_cell
from apga.methods.masks import adversarial_images, kept_images
from apga.evaluation.occlusion import occlusion_map
from apga.evaluation.metrics import binary_metrics, study_metrics
from apga.utils import atomic_write_bytes, eval_mode, full_precision


def abnormal_probability(classifier, images: torch.Tensor) -> torch.Tensor:
    return torch.softmax(classifier(images).float(), dim=1)[:, 1]


def _truth(batch: dict, name: str, device) -> torch.Tensor | None:
    return batch[name].to(device).unsqueeze(1).bool() if name in batch else None  # (B, 1, H, W)


@torch.no_grad()
def occlusion_maps(classifier, split: Split, device, *, batch_size: int, channels_last: bool = False,
                   fill: str = "zero") -> torch.Tensor:
    """The classifier's occlusion map of every image of `split`, (N, 1, g, g) in split order, in
    float32: for maps of several methods (or floors) with one classifier, computed once."""
    maps = []
    with eval_mode(classifier), full_precision(device):
        for batch in make_loader(split.dataset, batch_size):
            images = to_model_input(batch["image"].to(device), channels_last)
            maps.append(occlusion_map(classifier, images, batch["label"].to(device), occlusion_cell(images), fill))
    return torch.cat(maps).float()


@torch.no_grad()
def predict(method, split: Split, device, *, batch_size: int, channels_last: bool = False,
            mask_quality: bool = False, seed: int = 0,
            occlusion: torch.Tensor | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Per-image outputs of `method` on `split` (in the order of `split.index`), and the mask
    quality summary (empty unless `mask_quality` and the method has a map), in float32.
    `occlusion`: the classifier's occlusion maps of the split (`occlusion_maps`), when already computed."""
    outputs: dict[str, list[torch.Tensor]] = {}
    quality = MapQuality(method.fill, seed) if mask_quality else None
    loader = make_loader(split.dataset, batch_size, pin_memory=device.type == "cuda")
    networks = [method.classifier] + ([method.agent] if method.agent is not None else [])
    with eval_mode(*networks), full_precision(device):
        for batch in loader:
            images = to_model_input(batch["image"].to(device, non_blocking=True), channels_last)
            labels = batch["label"].to(device)
            bone, finding = _truth(batch, "bone", device), _truth(batch, "finding", device)
            out = {"position": batch["position"].to(device), "p": abnormal_probability(method.classifier, images)}
            maps = method.mask_probabilities(images, {"bone": bone.float()} if bone is not None else None)
            if maps is not None:
                keep = method.keep_mask(maps)  # (B, 1, H, W)
                out["p_kept"] = abnormal_probability(method.classifier, kept_images(images, keep, method.fill))
                removed = adversarial_images(images, keep, method.fill)
                out["p_removed"] = abnormal_probability(method.classifier, removed)
                out["p_tta"] = (out["p"] + out["p_kept"]) / 2
                out["mask_area"] = keep.flatten(1).mean(1)
                if bone is not None:
                    kept = keep.bool()
                    overlap = (kept & bone).flatten(1).sum(1).float()
                    out["mask_iou"] = overlap / (kept | bone).flatten(1).sum(1).float().clamp(min=1)
                    out["mask_recall"] = overlap / bone.flatten(1).sum(1).float().clamp(min=1)
                if quality is not None:
                    cells = occlusion[batch["position"]].to(device) if occlusion is not None else None
                    quality.add(method.classifier, images, labels, maps, method.policy_area(maps), bone, finding,
                                cells, batch.get("patient"))
            for key, value in out.items():
                outputs.setdefault(key, []).append(value.float() if key != "position" else value)
    merged = {key: torch.cat(values).cpu().numpy() for key, values in outputs.items()}
    order = np.argsort(merged.pop("position"))
    summary = quality.summary() if quality is not None and quality.count else {}
    return {key: value[order] for key, value in merged.items()}, summary


def summarize(split: Split, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics from per-image outputs: image and study level, TTA, kept/removed, mask area and IoU."""
    labels, studies = split.index["label"].to_numpy(), split.index["study"].to_numpy()
    metrics = binary_metrics(labels, outputs["p"]) | study_metrics(studies, labels, outputs["p"])
    if "p_tta" in outputs:
        metrics["accuracy_tta"] = binary_metrics(labels, outputs["p_tta"])["accuracy"]
        metrics["study_accuracy_tta"] = study_metrics(studies, labels, outputs["p_tta"])["study_accuracy"]
        metrics["kept_accuracy"] = binary_metrics(labels, outputs["p_kept"])["accuracy"]
        metrics["removed_accuracy"] = binary_metrics(labels, outputs["p_removed"])["accuracy"]
        metrics["mask_area"] = float(outputs["mask_area"].mean())
        metrics["mask_iou"] = float(outputs["mask_iou"].mean()) if "mask_iou" in outputs else math.nan
        metrics["mask_recall"] = float(outputs["mask_recall"].mean()) if "mask_recall" in outputs else math.nan
    return metrics


PROBABILITIES = ("p", "p_tta", "p_kept", "p_removed")
REPORT_PREDICTIONS_FILE = "report_predictions.csv"  # a run's per-image predictions on the reported split (ROC)


def evaluate(method, split: Split, device, predictions_file: Path | None = None, **kwargs) -> dict[str, float]:
    """Classification metrics and, with `mask_quality=True`, the mask-quality columns; with
    `predictions_file`, each image's path, study, label and probability (and TTA probability) too.

    Raises `NonFiniteError` when the classifier's outputs are not finite (its weights diverged)."""
    outputs, quality = predict(method, split, device, **kwargs)
    for key in PROBABILITIES:
        bad = int((~np.isfinite(outputs[key])).sum()) if key in outputs else 0
        if bad:
            raise NonFiniteError(f"the classifier's outputs are not finite on {bad} of {len(outputs[key])} images "
                                 f"(its weights diverged)")
    if predictions_file is not None:
        frame = pd.DataFrame({"path": split.index["path"].to_numpy(), "study": split.index["study"].to_numpy(),
                              "label": split.index["label"].to_numpy(), "probability": outputs["p"]})
        if "p_tta" in outputs:
            frame["probability_tta"] = outputs["p_tta"]
        atomic_write_bytes(Path(predictions_file), frame.to_csv(index=False).encode())
    return summarize(split, outputs) | quality
