"""Apply a trained run to new images.

    python -m apga.predict RUN_DIR IMAGES [--out DIR] [--max-overlays N]

RUN_DIR is a method's folder of a run (holding `best.pt`), e.g. runs/elbow-all-val/seed89/apga.
IMAGES is a folder of PNGs (searched recursively; a MURA-layout study folder is one), or a CSV
with a `path` column as for `--data-csv` (paths relative to the CSV; `label`, `study` optional).
Writes <DIR>/predictions.csv (default DIR: RUN_DIR/predictions): one row per image with its
probability of being abnormal, the study-level probability (the mean over the study's images)
where studies are known (MURA study folders `studyN_positive|negative`, or a CSV's `study`
column), the label where known, and for masking methods the TTA probability and the kept area.
Masking methods also write overlay PNGs (image, mask, adversarial, kept region) for the first
`--max-overlays` images. Batched, on the GPU when there is one.
"""
from __future__ import annotations

import io
import re
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from apga.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from apga.config import Config, make_config
from apga.data import to_model_input
from apga.data.cache import PngImages, _collate_keep
from apga.errors import APGAError, CheckpointError, DataError
from apga.evaluation.evaluate import abnormal_probability
from apga.reporting.gallery import mask_panels, write_panels
from apga.methods.masks import kept_images
from apga.training.loop import load_networks
from apga.utils import atomic_write_bytes, eval_mode, file_digest, resolve_device

STUDY_FOLDER = re.compile(r"^study\d+_(positive|negative)$", re.IGNORECASE)
PREDICTIONS_FILE = "predictions.csv"


def image_table(images: str | Path) -> pd.DataFrame:
    """Columns file (absolute), image (as shown), study (or empty), label (or NaN)."""
    images = Path(images)
    if images.is_file() and images.suffix.lower() == ".csv":
        table = pd.read_csv(images, dtype=str, keep_default_na=False)
        table.columns = [c.strip().lower() for c in table.columns]
        if "path" not in table.columns:
            raise DataError(f"{images} has no 'path' column; list one image path per row under a 'path' header")
        if table.empty:
            raise DataError(f"{images} lists no images; write one image path per row under the 'path' header")
        files = [images.parent / p.strip() for p in table["path"]]
        missing = [(i, f) for i, f in enumerate(files) if not f.is_file()]
        if missing:
            raise DataError(f"{images} line {missing[0][0] + 2}: image {table['path'][missing[0][0]]!r} does not exist "
                            f"(paths are relative to {images.parent})")
        labels = pd.to_numeric(table["label"], errors="coerce") if "label" in table.columns else np.nan
        study = table["study"] if "study" in table.columns else ""
        return pd.DataFrame({"file": files, "image": table["path"], "study": study, "label": labels})
    if images.is_dir():
        files = sorted(p for p in images.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
        if not files:
            raise DataError(f"no PNG files in {images}; pass a folder of PNGs or a CSV with a 'path' column")
        shown = [str(f.relative_to(images)) for f in files]
        study = [str(f.parent.relative_to(images.parent)) if STUDY_FOLDER.match(f.parent.name) else "" for f in files]
        label = [float(f.parent.name.lower().endswith("positive")) if s else np.nan for f, s in zip(files, study)]
        return pd.DataFrame({"file": files, "image": shown, "study": study, "label": label})
    raise DataError(f"{images} is neither a folder of PNGs nor a CSV file; pass one of those")


def load_run(run_dir: str | Path, device):
    """The method of a run folder at its selected checkpoint, and its config."""
    from apga.methods import build_method  # the methods import torchvision; keep `--help` light

    run_dir = Path(run_dir)
    best = run_dir / "best.pt"
    if not best.is_file():
        raise CheckpointError(f"no best.pt in {run_dir}; pass a method's folder of a finished run, "
                              f"e.g. runs/elbow-all-val/seed89/apga")
    state = load_checkpoint(best, device, hint="train the run again to get a readable best.pt")
    if state.get("format") != CHECKPOINT_FORMAT or "method_name" not in state:
        raise CheckpointError(f"{best} was written by another version of apga (checkpoint format "
                              f"{state.get('format')}, this version reads {CHECKPOINT_FORMAT}); train the run again "
                              f"with this version")
    known = {f.name for f in fields(Config)}
    try:  # the weights come from the checkpoint: nothing to download, nothing to compile
        config = make_config(**{k: v for k, v in state["config"].items() if k in known} | {"pretrained": False,
                                                                                            "compile": False})
    except APGAError as error:
        raise CheckpointError(f"{best} holds settings this version cannot use ({error})") from None
    name = state["method_name"]
    baseline = run_dir.parent / "baseline" / "best.pt"
    if name == "gradcam":
        if not baseline.is_file():
            raise CheckpointError(f"Grad-CAM masks come from the baseline: {baseline} is missing; keep the run's "
                                  f"baseline folder beside {run_dir.name}")
        if file_digest(baseline) != state["config"].get("inputs", {}).get("baseline"):
            raise CheckpointError(f"{baseline} is not the baseline {run_dir.name} was fine-tuned from (it was trained "
                                  f"again); its Grad-CAM masks would not be the run's")
    baseline_state = load_checkpoint(baseline, "cpu")["classifier"] if name == "gradcam" else None
    method = build_method(name, config, device, baseline_state)
    load_networks(method, state)
    return method, config


@torch.no_grad()
def predict_images(method, config, table: pd.DataFrame, device, batch_size: int, out: Path,
                   max_overlays: int) -> pd.DataFrame:
    """Probabilities (and masks) of every image of `table`, batched; overlays for the first ones."""
    loader = torch.utils.data.DataLoader(PngImages(list(table["file"]), config.image_size), batch_size=batch_size,
                                         num_workers=min(2, config.num_workers), collate_fn=_collate_keep)
    columns: dict[str, list] = {}
    overlays = 0
    networks = [method.classifier] + ([method.agent] if method.agent is not None else [])
    for batch in loader:
        bad = [i for i, pixels, _ in batch if pixels is None]
        if bad:
            raise DataError(f"cannot read image {table['file'][bad[0]]} (truncated or not a PNG); replace or drop it")
        order = [i for i, _, _ in batch]
        images = to_model_input(torch.from_numpy(np.stack([pixels for _, pixels, _ in batch])).to(device),
                                config.channels_last)
        with eval_mode(*networks):
            out_batch = {"probability": abnormal_probability(method.classifier, images)}
            maps = method.mask_probabilities(images)
            if maps is not None:
                keep = method.keep_mask(maps)
                kept = abnormal_probability(method.classifier, kept_images(images, keep, method.fill))
                out_batch["probability_tta"] = (out_batch["probability"] + kept) / 2
                out_batch["kept_area"] = keep.flatten(1).mean(1)
        for key, value in out_batch.items():
            columns.setdefault(key, []).append(value.float().cpu())
        columns.setdefault("row", []).append(torch.tensor(order))
        if maps is not None and overlays < max_overlays:
            count = max_overlays - overlays
            rows = mask_panels(method, images[:count], maps[:count])  # the maps these predictions used
            for position, panel in zip(order, rows):
                name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(table["image"][position]).removesuffix(".png"))
                write_panels(panel[None], out / "overlays" / f"{name}.png", title=str(table["image"][position]))
            overlays += len(rows)
    merged = {key: torch.cat(values).numpy() for key, values in columns.items()}
    result = table.iloc[merged.pop("row")].reset_index(drop=True)
    for key, value in merged.items():
        result[key] = value
    return result


def study_probabilities(predictions: pd.DataFrame) -> pd.Series:
    """The mean probability of each image's study (NaN where the study is unknown)."""
    known = predictions["study"] != ""
    means = predictions[known].groupby("study")["probability"].transform("mean")
    return means.reindex(predictions.index)


def run_prediction(run_dir: str, images: str, out: str | None = None, batch_size: int | None = None,
                   max_overlays: int = 16, gpu_id: int = 0) -> Path:
    device = resolve_device(gpu_id)
    method, config = load_run(run_dir, device)
    table = image_table(images)
    out_dir = Path(out) if out else Path(run_dir) / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "overlays", ignore_errors=True)  # no overlay of an earlier prediction stays beside these
    predictions = predict_images(method, config, table, device, batch_size or config.batch_size, out_dir, max_overlays)
    predictions["study_probability"] = study_probabilities(predictions)
    shown = ["image", "probability", "study", "study_probability", "label", "probability_tta", "kept_area"]
    frame = predictions[[c for c in shown if c in predictions.columns]]
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    path = out_dir / PREDICTIONS_FILE
    atomic_write_bytes(path, buffer.getvalue().encode())
    print(f"{len(frame)} images, {frame['study'].replace('', np.nan).nunique()} studies: {path}")
    return path


def main(run_dir: str, images: str, out: str | None = None, batch_size: int | None = None, max_overlays: int = 16,
         gpu_id: int = 0) -> None:
    """Predict IMAGES (a folder of PNGs, a MURA study folder, or a CSV) with the run in RUN_DIR."""
    try:
        run_prediction(run_dir, images, out, batch_size, max_overlays, gpu_id)
    except APGAError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
