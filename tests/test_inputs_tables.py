"""Tables as spreadsheets write them: encodings, separators, duplicated headers, float labels, blank
lines. Each test names the public report it was rebuilt from; every table here is generated."""
from __future__ import annotations

import pandas as pd
import pytest

from apga.data.csv_index import read_csv_index, read_table
from apga.data.mura import load_split
from apga.errors import DataError
from test_real_world_cases import _csv_task


def _utf8_task(root):
    """A task whose image folder has a non-ASCII name (`Röntgen/`), as in case 33."""
    csv = _csv_task(root)
    (root / "img").rename(root / "R\u00f6ntgen")
    text = csv.read_text(encoding="utf-8").replace("img/", "R\u00f6ntgen/")
    csv.write_text(text, encoding="utf-8")
    return csv, text


def test_a_csv_saved_in_a_windows_code_page_is_named_as_such(tmp_path):
    """Case 33 (pandas-dev/pandas#9315; bank2ynab/bank2ynab#12: Excel's cp1252 CSV): one line saying
    the file is not UTF-8, where, and how to save it, instead of "image 'R?ntgen/...' does not exist";
    the MURA route's CSVs and apga.predict's CSV route say the same."""
    csv, text = _utf8_task(tmp_path)
    expected = read_csv_index(csv)
    (tmp_path / "cp1252.csv").write_bytes(text.encode("cp1252"))
    message = (r"cp1252.csv is not UTF-8 text: line 2 has the byte 0xF6 \(read as Windows-1252, .* the line is "
               r"'R\u00f6ntgen/train_000.png,0,train.*save the file as UTF-8")
    with pytest.raises(DataError, match=message):
        read_csv_index(tmp_path / "cp1252.csv")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_table(tmp_path / "cp1252.csv", required=("path",), what="apga.predict")
    mura = tmp_path / "m" / "MURA-v1.1"
    mura.mkdir(parents=True)
    (mura / "train_image_paths.csv").write_bytes("MURA-v1.1/train/XR_ELBOW/patient1/study1_negative/\u00e9.png\n"
                                                 .encode("latin-1"))
    (mura / "train_labeled_studies.csv").write_text("MURA-v1.1/train/XR_ELBOW/patient1/study1_negative/,0\n")
    with pytest.raises(DataError, match="train_image_paths.csv is not UTF-8 text: line 1 has the byte 0xE9"):
        load_split(tmp_path / "m", "train")
    # Excel's "Unicode text": UTF-16 with its byte order mark, tab-separated: read as it is
    (tmp_path / "utf16.csv").write_bytes(text.replace(",", "\t").encode("utf-16"))
    pd.testing.assert_frame_equal(read_csv_index(tmp_path / "utf16.csv").drop(columns="body_part"),
                                  expected.drop(columns="body_part"))


def test_semicolons_and_excels_separator_line_are_read(tmp_path, capsys):
    """Excel writes semicolons where the decimal separator is a comma (BodenmillerGroup/steinbock#28),
    and may declare it in a first line `sep=;` (pandas-dev/pandas#47303): the same rows, and errors
    name the lines as a text editor numbers them."""
    csv = _csv_task(tmp_path)
    expected = read_csv_index(csv).drop(columns="body_part")
    text = csv.read_text()
    (tmp_path / "semi.csv").write_text(text.replace(",", ";"))
    pd.testing.assert_frame_equal(read_csv_index(tmp_path / "semi.csv").drop(columns="body_part"), expected)
    assert "semi.csv separates its columns with semicolons, not commas; read so" in capsys.readouterr().err
    (tmp_path / "declared.csv").write_text('"sep=;"\n' + text.replace(",", ";"))
    pd.testing.assert_frame_equal(read_csv_index(tmp_path / "declared.csv").drop(columns="body_part"), expected)
    lines = text.splitlines()
    lines[4] = lines[4].replace(",1,train,", ",yes,train,")
    (tmp_path / "declared.csv").write_text("sep=,\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match="declared.csv line 6: label 'yes' must be 0"):  # line 5 of the table, after sep=
        read_csv_index(tmp_path / "declared.csv")


def test_a_header_that_names_a_column_twice_is_refused(tmp_path):
    """pandas renames a second `label` to `label.1` (pandas-dev/pandas#14704, #7160) and the first
    was trained on, silently: refused in one line naming both columns, whatever their case or spaces."""
    csv = _csv_task(tmp_path)
    table = pd.read_csv(csv, dtype=str)
    table["second"] = 1 - table["label"].astype(int)
    table.to_csv(tmp_path / "twice.csv", index=False, header=["path", "label", "split", "study", "patient", " Label"])
    with pytest.raises(DataError, match=r"twice.csv line 1: the header names column 'label' more than once "
                                        r"\(columns 2 and 6\); keep one"):
        read_csv_index(tmp_path / "twice.csv")


def test_float_labels_and_blank_lines(tmp_path):
    """pandas turns an integer column with a blank cell into floats and writes them as `1.0`
    (pandas-dev/pandas#28335, #20717): read as 0 and 1. A blank line in the table is left out and the lines after it keep their
    numbers in messages."""
    csv = _csv_task(tmp_path)
    expected = read_csv_index(csv)
    lines = csv.read_text().splitlines()
    floats = [line.replace(",1,train,", ",1.0,train,").replace(",0,valid,", ",0.0,valid,") for line in lines]
    csv.write_text("\n".join(floats) + "\n")
    pd.testing.assert_frame_equal(read_csv_index(csv), expected)
    blank = lines[:3] + [""] + lines[3:]
    blank[6] = blank[6].replace(",train,", ",test,")
    csv.write_text("\n".join(blank) + "\n")
    with pytest.raises(DataError, match="task.csv line 7: split 'test' must be train or valid"):
        read_csv_index(csv)


def test_paths_spelled_otherwise_than_their_files_are_read_as_the_files_are_named(tmp_path, capsys):
    """A CSV written on Windows (`img\\train_000.png`: abbyy/barcode_detection_benchmark#2,
    CellProfiler/CellProfiler#1385) and a folder copied from a Mac, whose names are in Unicode NFD
    while the CSV says `Röntgen` in NFC (vgough/encfs#316, unmade/shelf-back#50): the same rows, with
    one notice. An absolute Windows path is refused saying so."""
    import unicodedata

    csv, text = _utf8_task(tmp_path)
    expected = read_csv_index(csv)
    (tmp_path / "R\u00f6ntgen").rename(tmp_path / unicodedata.normalize("NFD", "R\u00f6ntgen"))
    capsys.readouterr()
    nfd = read_csv_index(csv)
    assert "12 path(s) name their file in another spelling (the first on line 2" in capsys.readouterr().err
    assert (nfd["path"] == expected["path"].map(lambda p: unicodedata.normalize("NFD", p))).all()
    pd.testing.assert_frame_equal(nfd.drop(columns=["path", "study"]), expected.drop(columns=["path", "study"]))
    (tmp_path / "windows.csv").write_text(unicodedata.normalize("NFD", text).replace("/", "\\"), encoding="utf-8")
    assert (read_csv_index(tmp_path / "windows.csv")["path"] == nfd["path"]).all()
    (tmp_path / "absolute.csv").write_text(text.replace("R\u00f6ntgen/", "C:\\data\\"), encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: .* does not exist \(it is a Windows path: write the paths relative"):
        read_csv_index(tmp_path / "absolute.csv")


def test_rows_as_spreadsheets_and_file_systems_write_them(tmp_path, capsys):
    """Rows that pandas or the strip of a cell misread, each with the index of the plain task:
    a comma ending every data row but not the header (pandas-dev/pandas#14124, #9295: the first column
    became the index and every cell shifted: "image '1' is listed twice"); a file name that ends in
    a space (the stripped cell named no file); a quoted file name with a line break (Linux allows
    one), after which every message named the wrong line."""
    csv = _csv_task(tmp_path)
    expected = read_csv_index(csv).drop(columns="body_part")
    header, *rows = csv.read_text().splitlines()
    (tmp_path / "trailing.csv").write_text("\n".join([header] + [row + "," for row in rows]) + "\n")
    pd.testing.assert_frame_equal(read_csv_index(tmp_path / "trailing.csv").drop(columns="body_part"), expected)

    (tmp_path / "img" / "train_000.png").rename(tmp_path / "img" / "train_000.png ")
    (tmp_path / "spaced.csv").write_text(csv.read_text().replace("img/train_000.png,", '"img/train_000.png ",'))
    spaced = read_csv_index(tmp_path / "spaced.csv")
    assert spaced["path"].iloc[0] == "img/train_000.png "
    assert "spaces the cell ends in" in capsys.readouterr().err
    pd.testing.assert_frame_equal(spaced.drop(columns=["body_part", "path"]), expected.drop(columns="path"))

    (tmp_path / "img" / "two\nlines.png").write_bytes((tmp_path / "img" / "train_001.png").read_bytes())
    lines = csv.read_text().replace("img/train_000.png ", "img/train_000.png").splitlines()
    lines[1] = lines[1].replace("img/train_000.png", '"img/two\nlines.png"')
    lines[4] = lines[4].replace(",1,train", ",7,train")  # a bad label after the name with a line break
    (tmp_path / "newline.csv").write_text("\n".join(lines) + "\n")
    bad = next(i for i, line in enumerate((tmp_path / "newline.csv").read_text().splitlines(), 1) if ",7,train" in line)
    with pytest.raises(DataError, match=f"newline.csv line {bad}: label '7' must be 0"):
        read_csv_index(tmp_path / "newline.csv")


def test_a_table_that_is_no_text_or_names_a_folder_says_so(tmp_path):
    """A CSV with NUL bytes (a copy cut short by a crash: the disk's blocks zeroed; john-corcoran/backblaze-backup-checker#1)
    printed a row of NULs as "does not exist"; a row naming a folder was "does not exist" too."""
    csv = _csv_task(tmp_path)
    (tmp_path / "nul.csv").write_bytes(csv.read_bytes() + b"\x00" * 64)
    lines = csv.read_text().count("\n") + 1
    with pytest.raises(DataError, match=f"nul.csv is not a text file: line {lines} holds NUL bytes"):
        read_csv_index(tmp_path / "nul.csv")
    (tmp_path / "img" / "folder.png").mkdir()
    (tmp_path / "folder.csv").write_text(csv.read_text().replace("img/train_000.png", "img/folder.png"))
    with pytest.raises(DataError, match="line 2: image 'img/folder.png' is a folder, not an image file"):
        read_csv_index(tmp_path / "folder.csv")
