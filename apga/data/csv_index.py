"""Any binary image task from one CSV file: `python apga_mura.py --data-csv my.csv`.

The file is UTF-8 (a cp1252 file from Excel is refused in one line saying how to save it) or UTF-16
with its byte order mark; commas separate the columns, or semicolons or tabs (read with a notice), or
what an Excel `sep=;` first line declares. A header that names a column twice is refused.

Columns (a header row is required; order does not matter):
- `path`: the image file, relative to the CSV's folder (or absolute);
- `label`: 0 (normal) or 1 (abnormal) (0.0 and 1.0, as pandas writes labels with a blank, too);
- `split`: `train` or `valid` (valid is the reported split, as MURA's);
- `study` (optional): images of one study are averaged for the study-level metrics (default, and
  for a blank cell: the image is its own study);
- `patient` (optional): holdout selection and the leak check keep a patient's images together
  (default: the study; a blank cell takes the patient its study's other rows name, else the study);
- `mask` (optional): the image's ground-truth relevance region, a mask image relative to the CSV
  (white: relevant): the oracle's masks and the mask-quality measures that need ground truth. Given
  for one row, it is needed for every row.

A blank cell in an optional column applies to its row only (with a notice), never to the column.

The result is the same index as MURA's (apga/data/mura.py): columns path, split, body_part, patient,
study, label, with paths relative to the CSV's folder. Every check names the CSV line (the header
is line 1) and what to fix.
"""
from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from pathlib import Path

import pandas as pd

from apga.errors import DataError
from apga.utils import file_name, notice

REQUIRED = ("path", "label", "split")
SPLITS = ("train", "valid")


def dataset_name(csv_path: str | Path) -> str:
    """What runs on a CSV are called in results and run folders (in place of a body part): the
    file's stem, shortened with a digest when it is too long for a folder name (apga.utils.file_name)."""
    return file_name(Path(csv_path).stem)


def read_table(csv_path: str | Path, required: tuple[str, ...] = REQUIRED, check_files: bool = True,
               what: str = "--data-csv") -> tuple[pd.DataFrame, pd.Series]:
    """The rows of a CSV as stripped text (header lower-cased), checked: the `required` columns
    exist, paths are non-empty, unique and (with `check_files`) exist relative to the CSV's folder.
    Returns the table and each row's line number in the file (the header is line 1)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"no CSV file at {csv_path}; pass {what} the path of a CSV with columns {','.join(required)}")
    text, separator, header_line = _csv_text(csv_path)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                            sep=separator, skip_blank_lines=False, index_col=False)  # a comma ending each row: no index
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{csv_path} is not a readable CSV ({str(error).splitlines()[0]}); write one row per image "
                        f"with a header row {','.join(required)}") from None
    header = [cell.strip().lower() for cell in next(csv.reader(io.StringIO(text), delimiter=separator), [])]
    twice = sorted({name for name in header if header.count(name) > 1 and name})
    if twice:
        columns = [str(i + 1) for i, name in enumerate(header) if name == twice[0]]
        raise DataError(f"{csv_path} line {header_line}: the header names column {twice[0]!r} more than once (columns "
                        f"{' and '.join(columns)}); keep one, or rename the others")
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} has no column {', '.join(missing)} (found: {', '.join(table.columns)}); its header "
                        f"row must name {', '.join(required)}")
    written = table["path"].copy()  # as written: a file name may end in a space
    table = table.apply(lambda column: column.str.strip())
    line = pd.Series(_row_lines(text, separator, header_line, len(table)), index=table.index)
    table = table[(table != "").any(axis=1)]  # blank lines: left out, the others keep their line numbers
    line = line[table.index]
    if table.empty:
        raise DataError(f"{csv_path} has a header but no rows; list one image per row")
    _fail_on(csv_path, table, line, table["path"] == "", lambda row: "the path is empty")
    _fail_on(csv_path, table, line, table["path"].duplicated(), lambda row: f"image {row['path']!r} is listed twice")
    if check_files:
        root = csv_path.parent
        table["path"] = respelled(csv_path, table["path"], line, written)
        exists = table["path"].map(lambda p: (root / p).is_file())
        _fail_on(csv_path, table, line, ~exists, lambda row: (
            f"image {row['path']!r} is a folder, not an image file; list the images in it one per row"
            if (root / row["path"]).is_dir() else f"image {row['path']!r} does not exist ({_where(row['path'], root)})"))
        same = table["path"].map(lambda p: file_identity(root / p))
        first = pd.Series(table.index, index=table.index).groupby(same).transform("first")
        _fail_on(csv_path, table, line, same.duplicated(),
                 lambda row: f"image {row['path']!r} is the file of line {line[first[row.name]]} "
                             f"({table['path'][first[row.name]]!r}) under another spelling; list each image once")
    return table, line


def respelled(csv_path: Path, paths: pd.Series, line: pd.Series, written: pd.Series | None = None) -> pd.Series:
    """`paths` (relative to the CSV's folder, stripped) as the files are named on disk, where a path
    names no file but another spelling of it does: the cell as `written` (a file name that ends in a
    space), backslashes for slashes (a CSV written on Windows), or another Unicode normalisation
    (macOS names files in NFD, most editors write NFC: `Röntgen` is then two strings). One notice
    says how many were read so, and the first line."""
    root = csv_path.parent

    def on_disk(path: str, as_written: str | None = None) -> str:
        if (root / path).exists():
            return path
        if as_written and as_written != path and (root / as_written).exists():
            return as_written
        for other in dict.fromkeys((path.replace("\\", "/"),) + tuple(
                unicodedata.normalize(form, spelled) for form in ("NFC", "NFD") for spelled in (path, path.replace("\\", "/")))):
            if other != path and (root / other).exists():
                return other
        return path

    found = pd.Series([on_disk(path, None if written is None else written.get(i)) for i, path in paths.items()],
                      index=paths.index, dtype=object)
    changed = found != paths
    if changed.any():
        first = changed[changed].index[0]
        notice(f"{csv_path}: {int(changed.sum())} path(s) name their file in another spelling (the first on line "
               f"{line[first]}: {ascii(paths[first])} is {ascii(found[first])} on disk: backslashes, or another Unicode "
               f"normalisation of the same letters, or spaces the cell ends in); read as the files are named")
    return found


def _where(path: str, root: Path) -> str:
    """The hint of a 'does not exist' message."""
    if re.match(r"^[A-Za-z]:[\\/]|^\\\\", path):
        return f"it is a Windows path: write the paths relative to the CSV's folder, {root}"
    return f"paths are relative to {root}"


def file_identity(path: Path) -> tuple:
    """What makes two paths one file: its device and inode (`./a.png`, `a//b/../a.png`, a symbolic or
    hard link, another case on a case-insensitive disk), or the normalised absolute path of a file
    that cannot be opened."""
    try:
        stat = os.stat(path)
        return ("inode", stat.st_dev, stat.st_ino)
    except OSError:
        return ("path", os.path.normpath(os.path.abspath(path)))


SEPARATORS = {",": "commas", ";": "semicolons", "\t": "tabs"}


def decoded_text(path: Path) -> str:
    """A text file's content: UTF-8 (with or without a byte order mark), or UTF-16 with its byte order
    mark (Excel's "Unicode text"). Anything else raises a DataError naming the first byte that is no
    UTF-8, its line, and how to save the file as UTF-8: a file saved in a Windows code page would
    otherwise name images that do not exist."""
    content = path.read_bytes()
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content.decode("utf-16")
    if b"\x00" in content:
        number = content.count(b"\n", 0, content.index(b"\x00")) + 1
        raise DataError(f"{path} is not a text file: line {number} holds NUL bytes (a copy cut "
                        f"short by a crash or a full disk, a binary file, or UTF-16 without its byte order mark); "
                        f"write the table again, as UTF-8 text")
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        start = content.rfind(b"\n", 0, problem.start) + 1
        end = content.find(b"\n", problem.start)
        line = content[start:end if end >= 0 else len(content)].rstrip(b"\r")
        number = content.count(b"\n", 0, problem.start) + 1
        raise DataError(f"{path} is not UTF-8 text: line {number} has the byte 0x{content[problem.start]:02X} (read "
                        f"as Windows-1252, the code page Excel saves in, the line is "
                        f"{line.decode('cp1252', errors='replace')[:60]!r}); save the file as UTF-8 (Excel: Save As "
                        f"'CSV UTF-8'; or iconv -f cp1252 -t utf-8 {path.name} > utf8.csv) and pass that") from None


def _row_lines(text: str, separator: str, header_line: int, rows: int) -> list[int]:
    """The line of the file each of the `rows` data rows starts on: a quoted cell may hold line breaks
    (a file name with a newline), so row k is not always line header + k."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    starts, previous = [], 0
    for _ in reader:
        starts.append(previous + 1)
        previous = reader.line_num
    starts = [start + header_line - 1 for start in starts[1:]]  # the header's row is not a data row
    return starts if len(starts) == rows else list(range(header_line + 1, header_line + 1 + rows))


def _csv_text(csv_path: Path) -> tuple[str, str, int]:
    """A CSV's text, its separator, and the line number of its header. Excel writes semicolons (or
    tabs) where the decimal separator is a comma, and may put a `sep=;` line first: both are read,
    the first with a notice."""
    text = decoded_text(csv_path)
    lines = text.splitlines()
    first = lines[0].strip().strip('"') if lines else ""
    if first.lower().startswith("sep=") and len(first) == 5:
        return "\n".join(lines[1:]), first[4], 2
    if "," not in first:
        for separator in (";", "\t"):
            if separator in first:
                notice(f"{csv_path} separates its columns with {SEPARATORS[separator]}, not commas; read so")
                return text, separator, 1
    return text, ",", 1


def _fail_on(csv_path: Path, table: pd.DataFrame, line: pd.Series, rows: pd.Series, message) -> None:
    """A DataError naming the first row of `rows` (a bool Series) by its line; `message(row)` says what is wrong."""
    if rows.any():
        first = rows[rows].index[0]
        raise DataError(f"{csv_path} line {line[first]}: {message(table.loc[first])}")


def read_csv_index(csv_path: str | Path, check_files: bool = True) -> pd.DataFrame:
    """The index of every row of the CSV, checked; paths relative to the CSV's folder."""
    csv_path = Path(csv_path)
    table, line = read_table(csv_path, REQUIRED, check_files)
    table["label"] = checked_labels(csv_path, table, line).astype(int).astype(str)
    _fail_on(csv_path, table, line, ~table["split"].str.lower().isin(SPLITS),
             lambda row: f"split {row['split']!r} must be train or valid")
    index = pd.DataFrame({
        "path": table["path"], "split": table["split"].str.lower(), "body_part": dataset_name(csv_path),
        "label": table["label"].astype(int),
    })
    index["study"] = _filled(csv_path, table, line, "study", fallback=table["path"])
    index["patient"] = _patients(csv_path, table, line, index["study"])
    _check_splits(csv_path, index, line)
    columns = ["path", "split", "body_part", "patient", "study", "label"]
    if "mask" in table.columns:
        _fail_on(csv_path, table, line, table["mask"] == "",
                 lambda row: "the mask cell is empty; give every image its mask, or leave the mask column out")
        if check_files:
            table["mask"] = respelled(csv_path, table["mask"], line)
            exists = table["mask"].map(lambda p: (csv_path.parent / p).is_file())
            _fail_on(csv_path, table, line, ~exists,
                     lambda row: f"mask {row['mask']!r} does not exist (paths are relative to {csv_path.parent})")
        index["mask"] = table["mask"]
        columns.append("mask")
    return index[columns]


def checked_labels(csv_path: Path, table: pd.DataFrame, line: pd.Series, blank_unknown: bool = False) -> pd.Series:
    """The `label` column as floats: 0 (normal) or 1 (abnormal), also written 0.0 and 1.0 (pandas
    writes an integer column with a blank so); with `blank_unknown` (apga.predict), a blank cell is
    an unknown label (NaN). Anything else (`abnormal`, `2`, `True`) raises a DataError naming its line:
    a label silently read as unknown, or as a class it is not, would change every metric."""
    labels = table["label"].str.replace(r"^([01])\.0*$", r"\1", regex=True)
    allowed = ["0", "1"] + ([""] if blank_unknown else [])
    _fail_on(csv_path, table, line, ~labels.isin(allowed), lambda row: (
        f"label {row['label']!r} must be 0 (normal) or 1 (abnormal)" + (", or blank where unknown" if blank_unknown else "")))
    return pd.to_numeric(labels.where(labels != ""), errors="coerce")


def _filled(csv_path: Path, table: pd.DataFrame, line: pd.Series, column: str, fallback: pd.Series) -> pd.Series:
    """An optional column with its blank cells (or all of them, when it is absent) taken from `fallback`.
    A blank cell never disables the column for the other rows."""
    if column not in table.columns:
        return fallback.copy()
    blank = table[column] == ""
    if blank.any() and not blank.all():
        notice(f"{csv_path}: {int(blank.sum())} row(s) have no {column} (the first on line {line[blank].iloc[0]}); "
               f"{_FALLBACK_TEXT[column]}")
    return table[column].where(~blank, fallback)


_FALLBACK_TEXT = {"study": "each is a study of its own",
                  "patient": "each counts as its study's patient (its own, when its study names none)"}


def _patients(csv_path: Path, table: pd.DataFrame, line: pd.Series, study: pd.Series) -> pd.Series:
    """The patient column: a blank cell takes the patient its study's other rows name; a study
    that names two patients is refused."""
    if "patient" not in table.columns:
        return study.copy()
    named = table["patient"].where(table["patient"] != "")
    per_study = named.groupby(study).nunique()
    if (per_study > 1).any():
        conflicting = per_study[per_study > 1].index[0]
        rows = study == conflicting
        raise DataError(f"{csv_path}: study {conflicting!r} names more than one patient (lines "
                        f"{', '.join(map(str, line[rows].tolist()[:4]))}); a study belongs to one patient")
    study_patient = named.groupby(study).first()  # NaN where the study names none
    fallback = study.map(study_patient).fillna(study)
    return _filled(csv_path, table, line, "patient", fallback)


def _check_splits(csv_path: Path, index: pd.DataFrame, line: pd.Series) -> None:
    for split in SPLITS:
        rows = index[index["split"] == split]
        if rows.empty:
            raise DataError(f"{csv_path} has no {split} rows; give some images split {split}")
        if rows["label"].nunique() < 2:
            raise DataError(f"the {split} rows of {csv_path} hold only label {rows['label'].iloc[0]}; each split needs "
                            f"normal (0) and abnormal (1) images")
    shared = set(index.loc[index["split"] == "train", "patient"]) & set(index.loc[index["split"] == "valid", "patient"])
    if shared:
        patient = sorted(shared)[0]
        lines = [line[i] for i in index.index[index["patient"] == patient]]
        raise DataError(f"{csv_path}: patient {patient!r} is in both splits (lines {', '.join(map(str, lines[:4]))}); "
                        f"keep each patient's images in one split")
    labels = index.groupby("study")["label"].nunique()
    if (labels > 1).any():
        study = labels[labels > 1].index[0]
        first = index.index[index["study"] == study][0]
        raise DataError(f"{csv_path} line {line[first]}: study {study!r} has images labelled 0 and 1; a study has one "
                        f"label")


