"""Write a MURA-layout data set (the generated one, say) as a `--data-csv` task of DICOM files or
16-bit PNGs, as a hospital export would hand them over.

    python -m apga.data.export datasets/synthetic datasets/elbow-dicom --format dicom --body-part elbow

- `dicom`: one single-frame CR file per image (Explicit VR Little Endian), MONOCHROME1 (bone dark
  in the stored values, as many CR systems store it), 12 bits stored in 16, a window over the
  full range, and the patient and study of the MURA path as Patient ID and Study Instance UID.
- `png16`: 16-bit grey PNGs holding 12-bit values (0-4095), without an sBIT chunk, as tools that
  export DICOM to PNG often write them.
Both decode (apga/data/decode.py) to the 8-bit originals up to rounding. The task's CSV
(`task.csv`: path, label, split, study, patient) lists the images relative to itself; its folder is
a new one (an existing non-empty folder is refused).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from apga.data import mura
from apga.errors import APGAError, DataError
from apga.utils import configure_logging, error, storage_error

FORMATS = ("dicom", "png16")
STORED_BITS = 12


def export_task(source: str | Path, out: str | Path, fmt: str = "dicom", body_part: str = "elbow") -> Path:
    """Write the images of `body_part` in `source` (MURA layout) under `out` as `fmt`, and `out/task.csv`."""
    source, out = Path(source), Path(out)
    if fmt not in FORMATS:
        raise DataError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not empty; choose a new folder for the task")
    index = pd.concat([mura.select_body_part(mura.load_split(source, split), body_part) for split in mura.SPLITS])
    suffix = ".dcm" if fmt == "dicom" else ".png"
    rows = []
    try:
        for row in index.itertuples():
            grey = np.asarray(Image.open(source / row.path).convert("L"), dtype=np.float64) / 255  # (H, W), bone bright
            relative = Path(row.path).relative_to(mura.MURA_DIR).with_suffix(suffix)
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "dicom":
                write_cr_dicom(target, grey, patient=row.patient, study=row.study)
            else:
                Image.fromarray(np.rint(grey * (2 ** STORED_BITS - 1)).astype(np.uint16)).save(target)
            rows.append({"path": str(relative), "label": row.label, "split": row.split, "study": row.study,
                         "patient": row.patient})
        pd.DataFrame(rows).to_csv(out / "task.csv", index=False)
    except OSError as error:
        raise storage_error(Path(error.filename or out), error) from None
    return out / "task.csv"


def write_cr_dicom(path: Path, grey: np.ndarray, patient: str, study: str) -> None:
    """A single-frame MONOCHROME1 CR image of `grey` (H, W) in [0, 1] (bone bright), 12 bits stored."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    cr_storage = "1.2.840.10008.5.1.4.1.1.1"
    instance = generate_uid(entropy_srcs=[str(path.name), study])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = cr_storage, instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = cr_storage, instance, "CR"
    ds.PatientID, ds.StudyInstanceUID = str(patient), generate_uid(entropy_srcs=[study])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study, "series"])
    top = 2 ** STORED_BITS - 1
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, STORED_BITS, STORED_BITS - 1, 0
    ds.WindowCenter, ds.WindowWidth = (top + 1) / 2, top + 1
    ds.PixelData = np.rint((1 - grey) * top).astype("<u2").tobytes()  # MONOCHROME1: high values are dark
    ds.save_as(path, enforce_file_format=True)


def main(source: str, out: str, format: str = "dicom", body_part: str = "elbow") -> None:  # noqa: A002 - the flag's name
    """Write SOURCE's BODY_PART images (MURA layout) as a --data-csv task of DICOM files or 16-bit PNGs in OUT."""
    configure_logging()
    try:
        csv = export_task(source, out, format, body_part)
    except APGAError as problem:
        error(str(problem))
        sys.exit(2)
    print(f"{len(pd.read_csv(csv))} images: {csv}")


FLAG_HELP = {"format": "dicom (CR, MONOCHROME1, 12 bits stored) or png16 (16-bit PNGs holding 12-bit values)",
             "body_part": "the body part of SOURCE to write"}
USAGE = "python -m apga.data.export SOURCE OUT [--format dicom|png16] [--body-part PART]"
SUMMARY = ("Write the images of one body part of SOURCE (a data set in MURA's layout, e.g. the generated one) into "
           "the new folder OUT as a --data-csv task (OUT/task.csv: path, label, split, study, patient), as DICOM files "
           "or 16-bit PNGs, as a hospital export would hand them over.")


if __name__ == "__main__":  # the command line: an entry point, the one place here that may use apga.cli
    from apga.cli import data_tool_command

    data_tool_command("export").run(main, sys.argv[1:])
