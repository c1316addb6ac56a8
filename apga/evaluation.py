"""Evaluation of a method on a split: probabilities, TTA, deletion/insertion and mask quality.

Everything is batched on the device and moved to the host once, at the end.
- plain: softmax of the original image;
- TTA (masking methods, METHOD.md section 3): mean of the softmax of the original and of the
  kept-region image;
- kept / removed: the classifier shown only the kept region, or the image with the kept
  region blanked (a deletion/insertion check that needs no ground truth);
- mask quality (generated data): IoU of the kept region with the true relevance region, the
  fraction of the relevance region kept (recall), and the kept area fraction.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from apga.data import Split, make_loader, to_model_input
from apga.masks import adversarial_images, greedy_action, kept_images
from apga.metrics import binary_metrics, study_metrics
from apga.utils import eval_mode


def abnormal_probability(classifier, images: torch.Tensor) -> torch.Tensor:
    return torch.softmax(classifier(images).float(), dim=1)[:, 1]


@torch.no_grad()
def predict(method, split: Split, device, *, batch_size: int, autocast, channels_last: bool = False,
            num_workers: int = 0) -> dict[str, np.ndarray]:
    """Per-image outputs of `method` on `split`, in the order of `split.index`."""
    outputs: dict[str, list[torch.Tensor]] = {}
    loader = make_loader(split.dataset, batch_size, shuffle=False, num_workers=num_workers,
                         pin_memory=device.type == "cuda")
    networks = [method.classifier] + ([method.agent] if method.agent is not None else [])
    with eval_mode(*networks):
        for images_u8, _labels, positions, true_masks in loader:
            images = to_model_input(images_u8.to(device, non_blocking=True), channels_last)
            with autocast():
                batch = {"position": positions.to(device), "p": abnormal_probability(method.classifier, images)}
                mask_probabilities = method.mask_probabilities(images)
                if mask_probabilities is not None:
                    keep = greedy_action(mask_probabilities)  # (B, 1, H, W)
                    batch["p_kept"] = abnormal_probability(method.classifier, kept_images(images, keep))
                    batch["p_removed"] = abnormal_probability(method.classifier, adversarial_images(images, keep))
                    batch["p_tta"] = (batch["p"] + batch["p_kept"]) / 2
                    batch["mask_area"] = keep.flatten(1).mean(1)
                    if true_masks.numel():
                        truth = true_masks.to(device).unsqueeze(1).bool()  # (B, 1, H, W)
                        kept = keep.bool()
                        overlap = (kept & truth).flatten(1).sum(1).float()
                        union = (kept | truth).flatten(1).sum(1).float()
                        batch["mask_iou"] = overlap / union.clamp(min=1)
                        batch["mask_recall"] = overlap / truth.flatten(1).sum(1).float().clamp(min=1)
            for key, value in batch.items():
                outputs.setdefault(key, []).append(value.float() if key != "position" else value)
    merged = {key: torch.cat(values).cpu().numpy() for key, values in outputs.items()}
    order = np.argsort(merged.pop("position"))
    return {key: value[order] for key, value in merged.items()}


def summarize(split: Split, outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics from per-image outputs: image and study level, TTA, kept/removed, mask quality."""
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


def evaluate(method, split: Split, device, **kwargs) -> dict[str, float]:
    return summarize(split, predict(method, split, device, **kwargs))
