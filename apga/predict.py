"""Apply a trained run to new images.

    python -m apga.predict RUN_DIR IMAGES [--out DIR] [--max-overlays N] [--skip-bad-images 1]

RUN_DIR is a method's folder of a run (holding `best.pt`), e.g. runs/elbow-all-val/seed89/apga.
IMAGES is a folder of images (searched recursively: every file the decoder reads, by content as by
suffix: PNG of any bit depth, JPEG, JPEG 2000, WebP, TIFF, BMP, DICOM with any name or none; one
notice counts the files left out and why; a MURA-layout study folder is one), one image file, or a
CSV with a `path` column as for `--data-csv` (paths relative to the CSV; `label`, `study`
optional). Every file is decoded as for training (apga/data/decode.py). Writes
<DIR>/predictions.csv (default DIR: RUN_DIR/predictions; a run folder that cannot be written is
said before any work, with the --out to pass): one row per image with its probability of being
abnormal, the study-level probability (the mean over the study's images) where studies are known
(MURA study folders `studyN_positive|negative`, a DICOM file's Study Instance UID, or a CSV's
`study` column), the label where known, and for masking methods the TTA probability, the kept area
and its overlay: a PNG of the map and the kept region drawn over the image, with its probabilities,
beside the image, map, adversarial and kept tiles (the first `--max-overlays` images; named by the
image's number and name, so no two collide). Where labels are known, accuracy, AUROC and Cohen's
kappa (image and study level) are printed and written to <DIR>/metrics.json. A file name that is not
UTF-8 is shown with its undecodable bytes as \\xNN. Batched, on the GPU when there is one.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from apga.cli import Command, function_flags
from apga.config import Config, make_config
from apga.data import to_model_input
from apga.data.cache import ImageFiles, keep_as_list
from apga.data.csv_index import checked_labels, read_table
from apga.data.decode import APPLE_DOUBLE, IMAGE_SUFFIXES, is_dicom
from apga.errors import APGAError, CheckpointError, DataError, StorageError
from apga.evaluation.evaluate import abnormal_probability
from apga.evaluation.metrics import binary_metrics, study_metrics
from apga.methods.masks import kept_images
from apga.reporting.gallery import caption, mask_pictures, overlay_picture, save_png
from apga.training.checkpoint import CHECKPOINT_FORMAT, PREDICTIONS_DIR, load_checkpoint, load_networks
from apga.utils import (atomic_write_bytes, atomic_write_json, error, eval_mode, file_digest, notice,
                        resolve_device, shown_path, warn)

STUDY_FOLDER = re.compile(r"^study\d+_(positive|negative)$", re.IGNORECASE)
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"  # accuracy, AUROC and kappa, when the images' labels are known
OVERLAY_DIR = "overlays"


def image_table(images: str | Path) -> pd.DataFrame:
    """Columns file (absolute), image (as shown), study (or empty), label (or NaN)."""
    images = Path(images)
    if images.is_file() and images.suffix.lower() == ".csv":
        table, line = read_table(images, required=("path",), what="apga.predict")
        labels = checked_labels(images, table, line, blank_unknown=True) if "label" in table.columns else np.nan
        study = table["study"].fillna("").astype(str) if "study" in table.columns else ""
        return pd.DataFrame({"file": [images.parent / p for p in table["path"]], "image": table["path"],
                             "study": study, "label": labels})
    if images.is_dir():
        files = scan_folder(images)
        if not files:
            raise DataError(f"no image files in {images} (PNG, JPEG, JPEG 2000, TIFF, WebP, BMP, DICOM, ...); pass a "
                            f"folder of images, one image, or a CSV with a 'path' column")
        shown = [shown_path(f.relative_to(images)) for f in files]
        escaped = [name for file, name in zip(files, shown) if name != str(file.relative_to(images))]
        if escaped:
            warn(f"{len(escaped)} file name(s) are not UTF-8 (e.g. {escaped[0]}, from a Latin-1 or Windows system); "
                 f"predictions.csv shows their undecodable bytes as \\xNN")
    elif images.is_file() and _left_out(images) is None:
        files, shown = [images], [shown_path(images.name)]
    elif not images.exists():
        raise DataError(f"{images} does not exist; pass a folder of images, an image or a CSV file that does")
    else:
        raise DataError(f"{images} is neither a folder of images, an image nor a CSV file; pass one of those")
    study = [_study_of(f, images) for f in files]
    label = [float(f.parent.name.lower().endswith("positive")) if STUDY_FOLDER.match(f.parent.name) else np.nan
             for f in files]
    return pd.DataFrame({"file": files, "image": shown, "study": study, "label": label})


def scan_folder(folder: Path) -> list[Path]:
    """The image files under `folder` (recursively, sorted): what the decoder reads, by content as by
    name (`_left_out`), so that a folder and a CSV listing its files predict the same images. How many
    files were left out, and why, is one notice."""
    files, left_out = [], {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        reason = _left_out(path)
        if reason is None:
            files.append(path)
        else:
            left_out.setdefault(reason, []).append(path)
    if left_out:
        kinds = "; ".join(f"{len(paths)} {reason} (e.g. {paths[0].relative_to(folder)})"
                          for reason, paths in sorted(left_out.items(), key=lambda item: -len(item[1])))
        notice(f"left out {sum(map(len, left_out.values()))} of the {len(files) + sum(map(len, left_out.values()))} "
               f"files in {folder}: {kinds}; list a file in a CSV to have it read anyway")
    return files


def _left_out(path: Path) -> str | None:
    """Why a folder scan leaves a file out, or None when it is an image: a file with an image suffix
    (whose decoding says what is wrong with it, if anything), any file Pillow opens (.jp2, .webp,
    .jfif, ... : pytorch/vision#735), and DICOM by its content whatever its name (hospital exports
    have no suffix or a UID for a name, `1.2.840....320`; some have no preamble) when it holds pixel
    data. Left out: a DICOMDIR index, DICOM without pixel data (a report, a plan), macOS metadata
    (`._` AppleDouble files beside every image copied from a Mac), and files of no image format."""
    if path.name.upper() == "DICOMDIR":
        return "DICOMDIR index"
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except OSError:
        return None  # unreadable: its decoding says why
    if head.startswith(APPLE_DOUBLE):
        return "macOS metadata file(s) ('._' AppleDouble)"
    if is_dicom(head, path.name):
        return None if _holds_pixels(path) else "DICOM file(s) without pixel data (reports, plans, key objects)"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings about the files it identifies
        try:
            with Image.open(path):
                return None
        except Exception:  # noqa: BLE001 - anything Pillow cannot open as an image is no image
            return "file(s) of no image format"


def _holds_pixels(path: Path) -> bool:
    import pydicom

    try:  # a report, a plan or a presentation state named like an image is no image: left out
        header = pydicom.dcmread(path, defer_size="1 KB", force=True)  # large values stay on disk
    except Exception:  # noqa: BLE001 - an unreadable header: the file's decoding will say why
        return True
    return any(tag in header for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _study_of(file: Path, root: Path) -> str:
    """A MURA study folder, or a DICOM file's Study Instance UID; '' when unknown."""
    if STUDY_FOLDER.match(file.parent.name):
        return shown_path(file.parent.relative_to(root.parent))
    with open(file, "rb") as handle:
        dicom = is_dicom(handle.read(1024), file.name)
    if dicom:
        import pydicom

        try:
            return str(pydicom.dcmread(file, stop_before_pixels=True, force=True).get("StudyInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 - an unreadable header: the file's decoding will say why
            return ""
    return ""


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
    try:  # the weights come from the checkpoint (nothing to download), the input normalisation from its settings
        config = make_config(**{k: v for k, v in state["config"].items() if k in known} | {"compile": False})
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
    method = build_method(name, config, device, baseline_state, load_weights=False)
    load_networks(method, state)
    return method, config


@torch.no_grad()
def predict_images(method, config, table: pd.DataFrame, device, batch_size: int, skip_bad: bool = False,
                   max_pictures: int = 0) -> tuple[pd.DataFrame, dict]:
    """Probabilities (and masks) of every image of `table`, batched, and the mask pictures of the first
    `max_pictures` images (row of `table` -> (MaskPictures, index in it)). An unreadable image stops
    with a one-line error naming it, or with `skip_bad` is left out."""
    loader = torch.utils.data.DataLoader(ImageFiles(list(table["file"]), config.image_size, bit_depth=config.bit_depth),
                                         batch_size=batch_size,
                                         num_workers=min(2, config.num_workers), collate_fn=keep_as_list)
    columns: dict[str, list] = {}
    pictures, skipped = {}, []
    networks = [method.classifier] + ([method.agent] if method.agent is not None else [])
    for batch in loader:
        bad = [reason for _, pixels, _, reason, _ in batch if pixels is None]
        if bad and not skip_bad:
            raise DataError(f"{shown_path(bad[0])}; replace it or leave it out, or pass --skip-bad-images 1")
        skipped += bad
        batch = [item for item in batch if item[1] is not None]
        if not batch:
            continue
        order = [item[0] for item in batch]
        images = to_model_input(torch.from_numpy(np.stack([item[1] for item in batch])).to(device),
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
        count = max_pictures - len(pictures)
        if maps is not None and count > 0:  # the maps these predictions used
            shown = mask_pictures(method, images[:count], maps[:count], probability=out_batch["probability"][:count])
            pictures |= {row: (shown, index) for index, row in enumerate(order[:count])}
    if skipped:
        warn(f"skipped {len(skipped)} unreadable image(s); the first: {shown_path(skipped[0])}")
    if not columns:
        raise DataError("none of the images could be read; see the warning above")
    merged = {key: torch.cat(values).numpy() for key, values in columns.items()}
    result = table.iloc[merged.pop("row")].reset_index(names="table_row")  # each image's row in `table`
    for key, value in merged.items():
        result[key] = value
    return result, pictures


def study_probabilities(predictions: pd.DataFrame) -> pd.Series:
    """The mean probability of each image's study (NaN where the study is unknown)."""
    known = predictions["study"] != ""
    means = predictions[known].groupby("study")["probability"].transform("mean")
    return means.reindex(predictions.index)


def overlay_names(shown: list[str], folder: Path) -> list[str]:
    """A file name for each image's overlay: its number in the table, then its path's letters and digits
    (any other run of characters as '_'), e.g. '03_study1_image2.jpg.png'. The number keeps them apart
    whatever the images are called (names that differ only in letters a file system folds together,
    in case, or in the suffix); each fits the file system's limit on a name's length (in bytes)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    width = len(str(len(shown)))
    names = []
    for number, text in enumerate(shown, 1):
        prefix, suffix = f"{number:0{width}d}_", ".png"
        room = max(limit - len(prefix) - len(suffix), 0)
        slug = re.sub(r"[^\w.-]+", "_", text).lstrip(".").encode()[:room].decode("utf-8", "ignore")
        names.append(prefix + slug + suffix)
    return names


def write_overlays(predictions: pd.DataFrame, pictures: dict, out_dir: Path) -> pd.Series:
    """An overlay PNG per image with pictures (gallery.overlay_picture), named by `overlay_names`; the
    column of their paths relative to `out_dir` ('' for images without one)."""
    folder = out_dir / OVERLAY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = overlay_names(list(predictions["image"]), folder)
    paths = []
    for row, name in zip(predictions.itertuples(), names):
        if row.table_row not in pictures:
            paths.append("")
            continue
        shown, index = pictures[row.table_row]
        lines = [row.image, caption(row.probability, row.label),
                 f"TTA p(abnormal) {row.probability_tta:.2f} · kept {row.kept_area:.0%}"]
        if row.study:
            lines.append(f"its study: p(abnormal) {row.study_probability:.2f}")
        save_png(overlay_picture(shown, index, lines), folder / name)
        paths.append(f"{OVERLAY_DIR}/{name}")
    return pd.Series(paths, index=predictions.index)


def label_metrics(predictions: pd.DataFrame) -> dict[str, float] | None:
    """Accuracy, AUROC and Cohen's kappa at image level, and at study level where studies are known,
    of the images whose label is known; None when no label is."""
    labelled = predictions[predictions["label"].notna()]
    if labelled.empty:
        return None
    metrics = {"images": len(labelled), "abnormal_images": int(labelled["label"].sum())}
    metrics |= binary_metrics(labelled["label"], labelled["probability"])
    studies = labelled[labelled["study"] != ""]
    if not studies.empty:
        metrics |= {"studies": studies["study"].nunique()}
        metrics |= study_metrics(studies["study"], studies["label"], studies["probability"])
    return metrics


def metrics_lines(metrics: dict) -> list[str]:
    """How the predictions compare with the known labels, in words."""
    def level(prefix: str, count: str) -> str:
        if math.isnan(metrics[f"{prefix}auroc"]):  # one class: AUROC and kappa have no value
            return f"{count}: accuracy {metrics[f'{prefix}accuracy']:.3f}; AUROC and κ undefined (one class)"
        return (f"{count}: accuracy {metrics[f'{prefix}accuracy']:.3f}, AUROC {metrics[f'{prefix}auroc']:.3f}, "
                f"Cohen's κ {metrics[f'{prefix}kappa']:.3f}")

    lines = [level("", f"{metrics['images']} labelled image(s), {metrics['abnormal_images']} abnormal")]
    if "studies" in metrics:
        lines.append(level("study_", f"{metrics['studies']} stud{'y' if metrics['studies'] == 1 else 'ies'} (the "
                                     f"mean of its images' probabilities)"))
    return lines


def output_folder(run_dir: Path, out: str | None) -> Path:
    """The folder predictions go to, created and checked writable before any work: `out`, or
    RUN_DIR/predictions. Raises `StorageError` saying which flag to pass."""
    folder = Path(out) if out else run_dir / PREDICTIONS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as problem:
        reason = problem.strerror or type(problem).__name__
        if out:
            raise StorageError(f"cannot write to --out {shown_path(folder)} ({reason}); pass --out with a writable "
                               f"folder", reason) from None
        raise StorageError(f"cannot write the predictions into the run folder, {shown_path(folder)} ({reason}); pass "
                           f"--out with a writable folder, e.g. --out predictions", reason) from None
    return folder


def run_prediction(run_dir: str, images: str, out: str | None = None, batch_size: int | None = None,
                   max_overlays: int = 16, gpu_id: int = 0, skip_bad_images: bool = False) -> Path:
    device = resolve_device(gpu_id)
    method, config = load_run(run_dir, device)
    out_dir = output_folder(Path(run_dir), out)
    table = image_table(images)
    shutil.rmtree(out_dir / OVERLAY_DIR, ignore_errors=True)  # no overlay of an earlier prediction stays beside these
    predictions, pictures = predict_images(method, config, table, device, batch_size or config.batch_size,
                                           bool(skip_bad_images), max_overlays)
    predictions["study_probability"] = study_probabilities(predictions)
    if pictures:
        predictions["overlay"] = write_overlays(predictions, pictures, out_dir)
    shown = ["image", "probability", "study", "study_probability", "label", "probability_tta", "kept_area", "overlay"]
    frame = predictions[[c for c in shown if c in predictions.columns]]
    path = out_dir / PREDICTIONS_FILE
    atomic_write_bytes(path, frame.to_csv(index=False).encode())
    studies = frame["study"].replace("", np.nan).nunique()
    print(f"{len(frame)} image(s), {studies} stud{'y' if studies == 1 else 'ies'}: {shown_path(path)}")
    metrics = label_metrics(predictions)
    if metrics is not None:
        atomic_write_json(out_dir / METRICS_FILE, {k: None if isinstance(v, float) and math.isnan(v) else v
                                                   for k, v in metrics.items()})
        print("\n".join(metrics_lines(metrics)))
    return path


def main(run_dir: str, images: str, out: str | None = None, batch_size: int | None = None, max_overlays: int = 16,
         gpu_id: int = 0, skip_bad_images: bool = False) -> None:
    """Predict IMAGES (a folder of images, one image, or a CSV) with the run in RUN_DIR."""
    try:
        run_prediction(run_dir, images, out, batch_size, max_overlays, gpu_id, skip_bad_images)
    except APGAError as problem:
        error(str(problem))
        sys.exit(2)


FLAG_HELP = {
    "out": "folder for predictions.csv and overlays/ (default: RUN_DIR/predictions)",
    "batch_size": "images per batch (default: the run's)",
    "max_overlays": "overlay PNGs written for masking methods (the map and kept region over the image, with its "
                    "probability, beside the image, map, adversarial and kept tiles)",
    "gpu_id": "CUDA device index; the CPU when CUDA is absent",
    "skip_bad_images": "leave unreadable images of any format out (with a warning) instead of stopping",
}
PREDICT = Command(
    usage="python -m apga.predict RUN_DIR IMAGES [--flag VALUE ...]   (or: apga-predict ...)",
    summary="Apply the run in RUN_DIR (a method's folder holding best.pt, e.g. runs/elbow-all-val/seed89/apga) to "
            "IMAGES: a folder of images (PNG of any bit depth, JPEG, JPEG 2000, WebP, TIFF, BMP, DICOM; searched "
            "recursively, by content), one "
            "image, or a CSV with a 'path' column. Writes predictions.csv: each image's probability of being "
            "abnormal, its study's, and for masking methods the TTA probability, kept area and overlay (the map and "
            "kept region drawn over the image). Where labels are known (MURA study folders *_positive/*_negative, a "
            "CSV's 'label' column), prints accuracy, AUROC and Cohen's kappa at image and study level.",
    flags=function_flags(main, FLAG_HELP, paths=("out",))[0], positionals=("run_dir", "images"),
    path_positionals=("run_dir", "images"),
)


def entry_point(argv: list[str] | None = None) -> None:
    """`python -m apga.predict` and the `apga-predict` console script."""
    PREDICT.run(main, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    entry_point()
