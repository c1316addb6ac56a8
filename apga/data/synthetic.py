"""A generated stand-in for MURA v1.1, written in exactly its layout.

Each image is a radiograph-like picture: soft tissue and one or two bones (bright cortex,
darker medulla) at a random pose. The label depends on a small local finding *inside a bone*
(a fracture line or a lytic spot). Everything else is label-independent clutter: L/R markers
and digits, collimation borders, look-alike dark lines and spots *outside* the bones, a
gradient, noise and random gain/gamma. Optionally a small corner marker is spuriously
correlated with the label in the training split only. Two ground-truth masks are saved for every
image as PNGs in parallel trees outside `MURA-v1.1/`: the relevance region (the bones, where any
finding can be) in `MURA-v1.1-masks/`, and the finding itself (empty for a normal image, or where
the finding is not visible) in `MURA-v1.1-findings/`.

The picture is drawn by `apga.data.radiograph`; this module lays the images out as MURA's files.
An abnormal study shows its finding in each image with probability 0.85 (as in MURA, not
every view shows the abnormality), so image labels carry some noise, like the real ones.

    python -m apga.data.synthetic --out datasets/synthetic --seed 0
    python -m apga.data.synthetic --out datasets/synthetic-mura --size mura   # MURA's size, in minutes
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from apga.config import BODY_PARTS
from apga.data.mura import FINDING_DIR, MASK_DIR, MURA_DIR
from apga.data.radiograph import render_image
from apga.errors import APGAError, DataError
from apga.utils import configure_logging, error, notice, private_folder, storage_error

VERSION = 8  # bump when the images change: ensure_generated then makes the data set anew
FINDING_VISIBLE = 0.85
ABNORMAL_STUDY_RATE = 0.42

# MURA v1.1's patients per body part (training, validation): 12,934 and 1,160 patient-parts, with
# 36,808 and 3,197 images. MURA has about 1.04 studies per patient and 2.7 images per study; the
# probabilities of 1, 2, 3 studies and of 1 to 5 images below give 2.84 images per patient, so
# about 36,700 training and 3,300 validation images.
MURA_PATIENTS = {"elbow": (1711, 158), "finger": (1865, 166), "forearm": (865, 133), "hand": (1945, 167),
                 "humerus": (587, 135), "shoulder": (2694, 194), "wrist": (3267, 207)}
SIZES = {"mura": dict(train_patients={part: n for part, (n, _) in MURA_PATIENTS.items()},
                      valid_patients={part: n for part, (_, n) in MURA_PATIENTS.items()},
                      min_side=256, max_side=512, studies_per_patient=[0.965, 0.03, 0.005],
                      images_per_study=[0.12, 0.33, 0.34, 0.12, 0.09], patient_streams=True)}
# The ids of the random streams, np.random.default_rng([seed, id, ...]): the default data draws
# everything but the marker and the clutter from np.random.default_rng(seed), in one order.
MARKER_STREAM, CLUTTER_STREAM = 1, 2  # [seed, id, image count]
PATIENT_STREAM, PATIENT_MARKER_STREAM, PATIENT_CLUTTER_STREAM = 3, 4, 5  # [seed, id, patient (, image in patient)]
ROW_ORDER_STREAM = 6  # [seed, id]: the rows' order in the CSV files, with per-patient streams

CONDITIONS = {"clutter": 0, "finding_scale": 1.0}  # added later; at these values the data is as before


def size_parameters(size: str, **settings) -> dict:
    """`settings` (generate's keyword arguments) with those that `--size` names (SIZES): "mura"
    gives MURA v1.1's patients per body part, image sides of 256-512 px, MURA-like numbers of studies
    and images, and per-patient random streams. Raises `DataError` for a size it does not know, or
    for a setting the size sets that is given a value other than its default."""
    if size not in SIZES:
        raise DataError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    defaults = inspect.signature(generate).parameters
    for name, value in settings.items():
        if name in SIZES[size] and value != defaults[name].default:
            raise DataError(f"--size {size} sets --{name.replace('_', '-')}; leave that flag out, got {value!r}")
    return settings | {name: dict(value) if isinstance(value, dict) else value for name, value in SIZES[size].items()}


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _probabilities(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(p, (int, float)) and p >= 0 for p in value)
            and abs(sum(value) - 1) < 1e-9)


def data_parameters(seed: int = 0, train_patients: int | dict[str, int] = 200,
                    valid_patients: int | dict[str, int] = 80, parts: tuple[str, ...] = BODY_PARTS,
                    min_side: int = 80, max_side: int = 128, spurious: float = 0.0, colour_fraction: float = 0.1,
                    clutter: int = 0, finding_scale: float = 1.0, patient_streams: bool = False,
                    studies_per_patient: list[float] | None = None,
                    images_per_study: list[float] | None = None) -> dict:
    """What GENERATED.json records. A condition at its default is left out (the default data's
    record, and so its fingerprint, are those of version 8); the spurious marker's draws come from
    their own stream since `marker_stream` was recorded (before, they shifted every later image),
    the clutter's from another since `clutter_stream` was (so a marker does not move the clutter).

    `train_patients`, `valid_patients`: patients per body part, one number for every part or a
    {part: number} for each of `parts`. `patient_streams`: each patient is drawn from its own
    random stream (np.random.default_rng([seed, PATIENT_STREAM, patient number])), so patients
    can be drawn in any order and in parallel; recorded only when on. `studies_per_patient`,
    `images_per_study`: the probabilities of 1, 2, ... studies and images (None: 1-2 studies and
    1-3 images, equally likely); recorded only when given. Raises `DataError` for a setting out of
    range."""
    for name, value, ok, rule in (
            ("spurious", spurious, isinstance(spurious, (int, float)) and 0 <= spurious <= 1, "a number in [0, 1]"),
            ("clutter", clutter, _whole(clutter), "a whole number >= 0"),
            ("finding-scale", finding_scale, isinstance(finding_scale, (int, float)) and finding_scale > 0,
             "a number > 0"),
            ("min-side", min_side, isinstance(min_side, int) and 8 <= min_side <= max_side,
             "a whole number from 8 to --max-side"),
            *((f"{split}-patients", value, not isinstance(value, dict) or (
                set(value) == set(parts) and all(_whole(n) for n in value.values())),
               "a whole number, or one for each body part") for split, value in (
                ("train", train_patients), ("valid", valid_patients))),
            *((name, value, value is None or _probabilities(value), "a list of probabilities that sum to 1")
              for name, value in (("studies-per-patient", studies_per_patient),
                                  ("images-per-study", images_per_study)))):
        if not ok:
            raise DataError(f"--{name} must be {rule}, got {value!r}")
    train_patients, valid_patients = ({part: counts[part] for part in parts} if isinstance(counts, dict) else counts
                                      for counts in (train_patients, valid_patients))
    params = dict(seed=seed, train_patients=train_patients, valid_patients=valid_patients, parts=list(parts),
                  min_side=min_side, max_side=max_side, spurious=spurious, colour_fraction=colour_fraction,
                  version=VERSION)
    params |= {name: value for name, value in (("clutter", clutter), ("finding_scale", finding_scale))
               if value != CONDITIONS[name]}
    if spurious > 0:
        params["marker_stream"] = "separate"
    if clutter > 0:
        params["clutter_stream"] = "separate"
    if patient_streams:
        params["patient_streams"] = True
    params |= {name: list(value) for name, value in (("studies_per_patient", studies_per_patient),
                                                     ("images_per_study", images_per_study)) if value is not None}
    return params


def generate(out: str | Path, seed: int = 0, train_patients: int | dict[str, int] = 200,
             valid_patients: int | dict[str, int] = 80, parts: tuple[str, ...] = BODY_PARTS,
             min_side: int = 80, max_side: int = 128, spurious: float = 0.0, colour_fraction: float = 0.1,
             clutter: int = 0, finding_scale: float = 1.0, patient_streams: bool = False,
             studies_per_patient: list[float] | None = None, images_per_study: list[float] | None = None,
             workers: int | None = None) -> dict:
    """Write the data set under `out` (MURA-v1.1/ and MURA-v1.1-masks/), deterministic in `seed`.

    `spurious` in [0, 1]: in the training split, the corner marker appears on abnormal images
    with this probability and on normal ones with 1 - spurious (0 = no marker at all; in the
    validation split it is independent of the label). The other parameters: `data_parameters`.
    `workers` (default: the CPUs this process may use) processes draw and write patients when
    `patient_streams` is on, the same files whatever their number; otherwise this process draws
    every image in one order and one more process writes them. Written into a temporary folder
    beside `out` and renamed, so an interrupted run never leaves a half data set behind. `out` may
    be missing, empty, or a data set this generator made (its GENERATED.json), which is replaced;
    any other folder is refused: the generator never deletes what it did not make. Returns the
    record with the numbers of training and validation images."""
    out = Path(out)
    if out.exists() and not (out / "GENERATED.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not a data set this generator made (it has no GENERATED.json); "
                        f"choose a new or empty folder, e.g. --out {out / 'synthetic'}")
    params = data_parameters(seed, train_patients, valid_patients, parts, min_side, max_side, spurious,
                             colour_fraction, clutter, finding_scale, patient_streams, studies_per_patient,
                             images_per_study)
    if workers is not None and not (_whole(workers) and workers >= 1):
        raise DataError(f"--workers must be a whole number >= 1, got {workers!r}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = private_folder(out.parent, prefix=f".{out.name}.partial-")
    except OSError as error:
        raise storage_error(out, error) from None
    try:
        rows = _write_data_set(tmp, params, workers or len(os.sched_getaffinity(0)))
        _replace(out, tmp)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise storage_error(Path(error.filename or out), error) from None
        raise
    return {"train_images": len(rows["train"]), "valid_images": len(rows["valid"]), **params}


def _replace(out: Path, new: Path) -> None:
    """Put the folder `new` at `out`; an earlier generated data set there is removed afterwards."""
    old = None
    if out.exists():
        old = private_folder(out.parent, prefix=f".{out.name}.old-")
        out.rename(old / out.name)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_data_set(tmp: Path, params: dict, workers: int) -> dict[str, list[str]]:
    """Draw and write every image and mask under `tmp`, then the CSV files and GENERATED.json."""
    seed, patients = params["seed"], list(_patients(params))
    if params.get("patient_streams"):
        chunks = [patients[i:i + 8] for i in range(0, len(patients), 8)]
        if workers == 1:
            drawn = [_draw_patients(tmp, params, chunk) for chunk in chunks]
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            try:
                drawn = list(pool.map(partial(_draw_patients, tmp, params), chunks))
            finally:
                pool.shutdown(cancel_futures=True)
        drawn = [patient for chunk in drawn for patient in chunk]
        order_rng = np.random.default_rng([seed, ROW_ORDER_STREAM])
    else:  # the default data: one stream, in one order
        rng = order_rng = np.random.default_rng(seed)
        drawn, written, count = [], [], 0
        with ProcessPoolExecutor(max_workers=1) as writer:  # PNG encoding on a second core, beside the drawing
            for split, part, number in patients:
                rows, studies, files = _draw_patient(tmp, params, rng, split, part, number, (
                    lambda image, first=count: np.random.default_rng([seed, MARKER_STREAM, first + image]),
                    lambda image, first=count: np.random.default_rng([seed, CLUTTER_STREAM, first + image])))
                count += len(rows)
                drawn.append((rows, studies))
                written.append(writer.submit(_write_files, files))
            for future in written:
                future.result()  # a write that failed (a full disk) fails the data set
    rows, studies = {"train": [], "valid": []}, {"train": [], "valid": []}
    for (split, _, _), (patient_rows, patient_studies) in zip(patients, drawn):
        rows[split] += patient_rows
        studies[split] += patient_studies
    (tmp / MURA_DIR).mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        order = order_rng.permutation(len(rows[split]))  # like MURA: rows not sorted by body part
        (tmp / MURA_DIR / f"{split}_image_paths.csv").write_text("".join(rows[split][i] + "\n" for i in order))
        (tmp / MURA_DIR / f"{split}_labeled_studies.csv").write_text("".join(s + "\n" for s in studies[split]))
    (tmp / "GENERATED.json").write_text(json.dumps(params, indent=2) + "\n")
    return rows


def _patients(params: dict):
    """(split, body part, patient number) of every patient, in the order they are numbered."""
    number = 1
    for split in ("train", "valid"):
        counts = params[f"{split}_patients"]
        for part in params["parts"]:
            for _ in range(counts[part] if isinstance(counts, dict) else counts):
                yield split, part, number
                number += 1


def _draw_patients(tmp: Path, params: dict, patients: list) -> list[tuple[list[str], list[str]]]:
    """Draw and write `patients` ((split, part, number) each), each from its own random streams; their
    image rows and study rows."""
    seed, drawn = params["seed"], []
    for split, part, number in patients:
        rng = np.random.default_rng([seed, PATIENT_STREAM, number])
        rows, studies, files = _draw_patient(tmp, params, rng, split, part, number, (
            lambda image: np.random.default_rng([seed, PATIENT_MARKER_STREAM, number, image]),
            lambda image: np.random.default_rng([seed, PATIENT_CLUTTER_STREAM, number, image])))
        _write_files(files)
        drawn.append((rows, studies))
    return drawn


def _count(rng: np.random.Generator, probabilities: list[float] | None, most: int) -> int:
    """1, 2, ... with the given probabilities, or 1 to `most` equally likely."""
    if probabilities is None:
        return int(rng.integers(1, most + 1))
    return int(rng.choice(len(probabilities), p=probabilities)) + 1


def _draw_patient(tmp: Path, params: dict, rng: np.random.Generator, split: str, part: str, number: int,
                  streams) -> tuple[list[str], list[str], list]:
    """One patient's studies and images, drawn from `rng` in a fixed order; `streams` gives the marker's
    and the clutter's generators for the patient's n-th image (from 0). Its image rows, study rows,
    and files to write ((function, path, arguments) each)."""
    spurious, clutter = params["spurious"], params.get("clutter", 0)
    rows, studies, files = [], [], []
    for study_number in range(1, _count(rng, params.get("studies_per_patient"), 2) + 1):
        abnormal = rng.random() < ABNORMAL_STUDY_RATE
        study = f"{MURA_DIR}/{split}/XR_{part.upper()}/patient{number:05d}/study{study_number}_{'positive' if abnormal else 'negative'}"
        studies.append(f"{study}/,{int(abnormal)}")
        for image_number in range(1, _count(rng, params.get("images_per_study"), 3) + 1):
            visible = abnormal and rng.random() < FINDING_VISIBLE
            marker_draws = streams[0](len(rows))  # the marker's own stream
            if split == "train" and spurious > 0:
                marker = marker_draws.random() < (spurious if abnormal else 1 - spurious)
            else:
                marker = spurious > 0 and marker_draws.random() < 0.5
            pixels, relevance, finding = render_image(
                rng, part, visible, marker, params["min_side"], params["max_side"], clutter,
                params.get("finding_scale", 1.0), streams[1](len(rows)) if clutter else None)
            path = f"{study}/image{image_number}.png"
            files.append((_save, tmp / path, (pixels, rng.random() < params["colour_fraction"])))
            for tree, mask in ((MASK_DIR, relevance), (FINDING_DIR, finding)):
                files.append((_save_mask, tmp / tree / Path(path).relative_to(MURA_DIR), (mask,)))
            rows.append(path)
    return rows, studies, files


def _write_files(files: list) -> None:
    for function, path, args in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        function(path, *args)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, compress_level=1)


def _save(path: Path, pixels: np.ndarray, colour: bool) -> None:
    grey = np.rint(pixels * 255).astype(np.uint8)
    image = Image.fromarray(np.repeat(grey[..., None], 3, axis=2)) if colour else Image.fromarray(grey)
    image.save(path, compress_level=1)


def ensure_generated(out: str | Path, workers: int | None = None, **params) -> Path:
    """Generate the data set unless `out` already holds one made with the same parameters
    (`data_parameters`'s; `workers`: see `generate`)."""
    out = Path(out)
    marker = out / "GENERATED.json"
    wanted = data_parameters(**params)
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found == wanted:
            return out
        if found.get("version") != VERSION:
            notice(f"{out} was generated by data version {found.get('version')}, this code writes version "
                  f"{VERSION}; generating it anew (image caches are rebuilt from the new files)")
    print(f"generating the synthetic MURA-layout data set in {out} ...")
    summary = generate(out, **params, workers=workers)
    print(f"  {summary['train_images']} train and {summary['valid_images']} valid images")
    return out


def main(out: str = "datasets/synthetic", seed: int = 0, train_patients: int = 200, valid_patients: int = 80,
         min_side: int = 80, max_side: int = 128, spurious: float = 0.0, clutter: int = 0,
         finding_scale: float = 1.0, size: str | None = None, patient_streams: bool = False,
         workers: int | None = None) -> None:
    """Generate the synthetic MURA-layout data set; one line says what was written."""
    configure_logging()
    try:
        settings = dict(seed=seed, train_patients=train_patients, valid_patients=valid_patients, min_side=min_side,
                        max_side=max_side, spurious=spurious, clutter=clutter, finding_scale=finding_scale,
                        patient_streams=patient_streams)
        summary = generate(out, **(size_parameters(size, **settings) if size is not None else settings),
                           workers=workers)
    except APGAError as problem:
        error(str(problem))
        sys.exit(2)
    print(f"wrote {summary['train_images']} train and {summary['valid_images']} valid images of "
          f"{', '.join(summary['parts'])} to {out} (seed {seed}, {summary['min_side']}-{summary['max_side']} px; its settings: "
          f"{Path(out) / 'GENERATED.json'})")


FLAG_HELP = {
    "out": "a new or empty folder, or one this generator made (it is replaced)",
    "seed": "every image is a function of it",
    "train_patients": "patients per body part in the training split",
    "valid_patients": "patients per body part in the validation split",
    "min_side": "smallest image side in pixels (each side is drawn between --min-side and --max-side)",
    "max_side": "largest image side in pixels",
    "spurious": "in training only, a corner marker on abnormal images with this probability and on normal ones "
                "with 1 - spurious (0: no marker; a shortcut to test a method against)",
    "clutter": "finding-like dark spots or lines outside the bones per image",
    "finding_scale": "scales the size of the findings",
    "size": "mura: MURA v1.1's patients per body part (about 36,700 train and 3,300 valid images), 256-512 px, "
            "drawn with per-patient streams (sets --train-patients, --valid-patients, --min-side, --max-side)",
    "patient_streams": "draw each patient from its own random stream, so that --workers processes can draw them "
                       "(other data than without it; --size mura sets it)",
    "workers": "processes that draw and write patients with per-patient streams (default: one per CPU); the data "
               "is the same whatever their number",
}
USAGE = "python -m apga.data.synthetic [--out DIR] [--flag VALUE ...]"
SUMMARY = ("Generate the synthetic stand-in for MURA v1.1 in its exact layout: radiograph-like images of bones whose "
           "label depends on a small finding inside a bone, label-independent clutter, and ground-truth masks of the "
           "bones and the findings beside it (MURA-v1.1-masks/, MURA-v1.1-findings/).")


if __name__ == "__main__":  # the command line: an entry point, the one place here that may use apga.cli
    from apga.cli import data_tool_command

    data_tool_command("synthetic").run(main, sys.argv[1:])
