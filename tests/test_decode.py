"""Decoding what radiology stores: real CR radiographs (NEMA's, from pydicom-data), DICOM variants
from pydicom's own test files, 16-bit PNGs, JPEGs with EXIF, and files Pillow refuses."""
from __future__ import annotations

import io
import shutil

import numpy as np
import png
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from apga.data.decode import decode_image
from apga.errors import ImageError

SIZE = 64


def data_file(name: str) -> str:
    """A file of pydicom's test data (pydicom itself, or the pydicom-data package): never downloaded."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed: pip install -e '.[test]' (pydicom-data)"
    return path


def resized(unit: np.ndarray) -> np.ndarray:
    """The reference resize: float [0, 1] -> (SIZE, SIZE) uint8, bilinear (as a viewer scales)."""
    image = Image.fromarray(unit.astype(np.float32), mode="F").resize((SIZE, SIZE), Image.BILINEAR)
    return np.clip(np.rint(np.asarray(image) * 255), 0, 255).astype(np.uint8)


def close(a: np.ndarray, b: np.ndarray, tolerance: int = 1) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() <= tolerance


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG1_UNCR.dcm"])
def test_nema_radiographs_decode_as_pydicoms_display_pipeline(name):
    """NEMA's CR radiographs (MONOCHROME1, 10 and 15 bits stored): pydicom's modality and VOI LUT,
    then MONOCHROME1 inverted, is what a viewer shows; the decoder gives that picture."""
    ds = pydicom.dcmread(data_file(name))
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "RescaleSlope" not in ds
    shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)  # the first window
    expected = resized(1 - shown / (2 ** ds.BitsStored - 1))
    decoded = decode_image(data_file(name), SIZE)
    assert decoded.dtype == np.uint8 and decoded.shape == (SIZE, SIZE)
    assert close(decoded, expected)
    raw = resized(ds.pixel_array / (2 ** ds.BitsStored - 1)).astype(float)
    assert np.corrcoef(decoded.ravel(), raw.ravel())[0, 1] < -0.95  # stored values inverted: bone bright
    assert decoded.max() - decoded.min() > 180  # the whole grey range, not 5 levels


@pytest.mark.parametrize("compressed, uncompressed, tolerance", [
    ("RG3_J2KR.dcm", "RG3_UNCR.dcm", 0), ("RG1_J2KR.dcm", "RG1_UNCR.dcm", 0),  # lossless JPEG 2000
    ("RG3_J2KI.dcm", "RG3_UNCI.dcm", 0),  # lossy JPEG 2000 and its decompressed copy
])
def test_jpeg_2000_copies_decode_as_the_uncompressed_files(compressed, uncompressed, tolerance):
    assert close(decode_image(data_file(compressed), SIZE), decode_image(data_file(uncompressed), SIZE), tolerance)


def test_lossy_jpeg_2000_stays_near_the_original():
    lossy, original = decode_image(data_file("RG3_J2KI.dcm"), SIZE), decode_image(data_file("RG3_UNCR.dcm"), SIZE)
    assert np.abs(lossy.astype(int) - original.astype(int)).mean() < 1.0


@pytest.mark.parametrize("suffix", [".dcm", ".tif", ".png", ""])
def test_a_dicom_whose_preamble_is_a_tiff_header_is_read_as_dicom_whatever_its_name(tmp_path, suffix):
    """NEMA's files start with a TIFF header in their preamble: Pillow would open them as TIFFs of
    raw stored values (inverted, 5 grey levels). The content decides, not the name."""
    source = data_file("RG3_UNCR.dcm")
    with open(source, "rb") as handle:
        assert handle.read(4) == b"II*\x00"  # the preamble is a TIFF header
    copy = tmp_path / f"image{suffix}"
    shutil.copyfile(source, copy)
    assert np.array_equal(decode_image(copy, SIZE), decode_image(source, SIZE))


def test_monochrome2_with_rescale_then_its_range_or_its_window(tmp_path):
    """A CT (rescale intercept -1024, signed) without a window shows its own range; with a soft-tissue
    window (40, 400) the window maps to the full grey range (DICOM PS3.3 C.11.2.1.2.1, LINEAR)."""
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    values = apply_modality_lut(ds.pixel_array, ds)
    assert ds.RescaleIntercept == -1024 and "WindowCenter" not in ds and ds.PhotometricInterpretation == "MONOCHROME2"
    own_range = (values - values.min()) / (values.max() - values.min())
    assert close(decode_image(data_file("CT_small.dcm"), SIZE), resized(own_range))
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.save_as(tmp_path / "windowed.dcm")
    windowed = np.clip((values - (40 - 0.5)) / (400 - 1) + 0.5, 0, 1)
    assert close(decode_image(tmp_path / "windowed.dcm", SIZE), resized(windowed))


def test_a_voi_lut_sequence_is_applied_before_a_window(tmp_path):
    """A VOI LUT (here an inverting ramp over the image's range) takes precedence over the window."""
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    low, high = int(ds.pixel_array.min()), int(ds.pixel_array.max())
    item = Dataset()
    item.LUTDescriptor = [high - low + 1, low, 12]
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(4095, 0, high - low + 1).round()])  # LUT Data
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 100, 10  # would saturate most pixels if it were used
    ds.save_as(tmp_path / "lut.dcm")
    lut = apply_voi_lut(ds.pixel_array, pydicom.dcmread(tmp_path / "lut.dcm"))
    assert close(decode_image(tmp_path / "lut.dcm", SIZE), resized(lut / 4095.0))


@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg.dcm"])
def test_colour_dicom_goes_to_grey(name):
    rgb = pydicom.dcmread(data_file(name)).pixel_array.astype(float)  # pydicom converts YBR to RGB
    grey = rgb @ np.array([0.299, 0.587, 0.114]) / 255
    assert close(decode_image(data_file(name), SIZE), resized(grey))


def test_palette_colour_dicom_goes_to_grey():
    ds = pydicom.dcmread(data_file("examples_palette.dcm"))
    rgb = apply_color_lut(ds.pixel_array, ds).astype(float)
    assert close(decode_image(data_file("examples_palette.dcm"), SIZE), resized(rgb @ np.array([0.299, 0.587, 0.114]) / 65535))


@pytest.mark.parametrize("name, message", [
    ("emri_small.dcm", "it is a multi-frame DICOM (10 frames)"),
    ("examples_ybr_color.dcm", "it is a multi-frame DICOM (30 frames)"),
    ("reportsi.dcm", "it is a DICOM SR object without pixel data"),
    ("rtplan.dcm", "it is a DICOM RTPLAN object without pixel data"),
    ("MR_small_jpeg_ls_lossless.dcm", "compressed as JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) "
                                      "and no decoder for it is installed"),
    ("SC_rgb_jpeg_gdcm.dcm", "and no decoder for it is installed (gdcm - requires gdcm>=3.0.10; or pylibjpeg"),
])
def test_dicom_files_that_cannot_be_used_are_named_in_one_line(name, message):
    with pytest.raises(ImageError) as error:
        decode_image(data_file(name), SIZE)
    text = str(error.value)
    assert text.startswith(f"cannot read image {data_file(name)}: ") and message in text and "\n" not in text


def test_the_jpeg_ls_message_names_the_package_that_decodes_it():
    with pytest.raises(ImageError, match="pyjpegls"):
        decode_image(data_file("MR_small_jpeg_ls_lossless.dcm"), SIZE)


# --- 16-bit PNG -------------------------------------------------------------------------------------

def _smooth(height: int = 48, width: int = 40) -> np.ndarray:
    """A smooth picture in [0, 1] that reaches 1 (a bright cortex) and is not symmetric."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.clip(0.15 + 0.6 * yy / height + 0.3 * np.exp(-((xx - 10) ** 2) / 30), 0, 1)


def test_a_10_bit_cr_exported_as_16_bit_png_uses_its_whole_range(tmp_path):
    """RG3's stored values (0-1023) in a 16-bit PNG, as an export from DICOM writes them."""
    raw = pydicom.dcmread(data_file("RG3_UNCR.dcm")).pixel_array.astype(np.uint16)
    Image.fromarray(raw).save(tmp_path / "rg3.png")
    assert Image.open(tmp_path / "rg3.png").mode.startswith("I;16")
    decoded = decode_image(tmp_path / "rg3.png", SIZE)
    assert close(decoded, resized(raw / 1023.0)) and decoded.max() >= 250


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_a_high_bit_png_decodes_as_its_8_bit_copy(tmp_path, bits):
    picture = _smooth()
    Image.fromarray(np.rint(picture * 255).astype(np.uint8)).save(tmp_path / "eight.png")
    Image.fromarray(np.rint(picture * (2 ** bits - 1)).astype(np.uint16)).save(tmp_path / "high.png")
    assert close(decode_image(tmp_path / "high.png", SIZE), decode_image(tmp_path / "eight.png", SIZE))


def _with_sbit(data: bytes, bits: int) -> bytes:
    """The PNG `data` with an sBIT chunk (`bits` significant bits) before its image data."""
    chunks = list(png.Reader(bytes=data).chunks())
    position = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    chunks.insert(position, (b"sBIT", bytes([bits])))
    buffer = io.BytesIO()
    png.write_chunks(buffer, chunks)
    return buffer.getvalue()


def test_sbit_says_the_stored_bit_depth(tmp_path):
    """With sBIT 12, values up to 1500 are 12-bit values (a dark image), not an 11-bit range; values
    scaled to 16 bits as the PNG standard asks (pypng writes them so) decode as 16-bit values."""
    values = np.rint(_smooth() * 1500).astype(np.uint16)
    plain = io.BytesIO()
    Image.fromarray(values).save(plain, format="PNG")
    (tmp_path / "sbit.png").write_bytes(_with_sbit(plain.getvalue(), 12))
    (tmp_path / "plain.png").write_bytes(plain.getvalue())
    assert close(decode_image(tmp_path / "sbit.png", SIZE), resized(values / 4095.0))
    assert close(decode_image(tmp_path / "plain.png", SIZE), resized(values / 2047.0))  # no sBIT: 11 bits hold 1500
    picture = _smooth()
    writer = png.Writer(picture.shape[1], picture.shape[0], greyscale=True, bitdepth=12)  # scaled, sBIT 12
    with open(tmp_path / "standard.png", "wb") as handle:
        writer.write(handle, np.rint(picture * 4095).astype(int).tolist())
    header = png.Reader(filename=str(tmp_path / "standard.png"))
    header.preamble()
    assert header.sbit == bytes([12]) and header.bitdepth == 16
    assert close(decode_image(tmp_path / "standard.png", SIZE), resized(picture))


def test_a_16_bit_colour_png_keeps_its_low_bits(tmp_path):
    """Pillow reads 16-bit colour PNGs as 8-bit RGB (the top byte: 12-bit values come out black)."""
    picture = _smooth()
    values = np.rint(picture * 4095).astype(np.uint16)
    rgb = np.repeat(values[..., None], 3, axis=2).reshape(values.shape[0], -1)
    with open(tmp_path / "colour.png", "wb") as handle:
        png.Writer(values.shape[1], values.shape[0], greyscale=False, bitdepth=16).write(handle, rgb.tolist())
    assert close(decode_image(tmp_path / "colour.png", SIZE), resized(values / 4095.0))


# --- JPEG, and what Pillow refuses ------------------------------------------------------------------

def test_jpeg_exif_orientation_is_applied_as_viewers_show_it(tmp_path):
    picture = np.rint(_smooth() * 255).astype(np.uint8)  # (48, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show it rotated 90 degrees clockwise
    Image.fromarray(picture).save(tmp_path / "turned.jpg", quality=98, exif=exif)
    Image.fromarray(np.rot90(picture, k=-1).copy()).save(tmp_path / "upright.png")
    Image.fromarray(picture).save(tmp_path / "as_stored.png")
    decoded = decode_image(tmp_path / "turned.jpg", SIZE)
    assert close(decoded, decode_image(tmp_path / "upright.png", SIZE), 3)
    assert not close(decoded, decode_image(tmp_path / "as_stored.png", SIZE), 20)  # the orientation matters


def test_an_image_above_pillows_pixel_limit_is_named_not_a_traceback(tmp_path, monkeypatch):
    """Pillow refuses images above 2 x MAX_IMAGE_PIXELS with DecompressionBombError, which is not an
    OSError; lowered here so that a small image stands for a 13,400 px one."""
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"cannot read image .*huge\.png: it is too large for Pillow .*downscale"):
        decode_image(tmp_path / "huge.png", SIZE)


@pytest.mark.parametrize("content, reason", [
    (b"", r"empty \(0 bytes: an interrupted copy or download\?\)"),
    (b"\x89PNG\r\n\x1a\n broken", "truncated, corrupted or not an image"),
    (b"just some text", "truncated, corrupted or not an image"),
])
def test_unreadable_files_are_named_with_their_reason(tmp_path, content, reason):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ImageError, match=f"cannot read image .*bad.png: it is {reason}"):
        decode_image(tmp_path / "bad.png", SIZE)
    with pytest.raises(ImageError, match="cannot read image .*missing.png"):
        decode_image(tmp_path / "missing.png", SIZE)


def test_exported_dicom_and_16_bit_tasks_decode_as_their_8_bit_originals(tiny_data, tmp_path):
    """`python -m apga.data.export` writes the generated images as CR DICOM files (MONOCHROME1,
    12 bits) and as 12-bit values in 16-bit PNGs: both decode to the originals up to rounding."""
    import pandas as pd

    from apga.data.export import export_task

    originals = {}
    for fmt in ("dicom", "png16"):
        csv = export_task(tiny_data, tmp_path / fmt, fmt, body_part="elbow")
        table = pd.read_csv(csv, dtype=str)
        assert set(table.columns) == {"path", "label", "split", "study", "patient"}
        for path in table["path"][:6]:
            original = tiny_data / "MURA-v1.1" / path.replace(".dcm", ".png")
            originals.setdefault(path[:-4], decode_image(original, SIZE))
            assert close(decode_image(tmp_path / fmt / path, SIZE), originals[path[:-4]])
    ds = pydicom.dcmread(tmp_path / "dicom" / table["path"][0].replace(".png", ".dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 12 and ds.Modality == "CR"


def test_a_dicom_task_trains_and_a_folder_of_dicom_files_is_predicted(tiny_data, tmp_path, capsys):
    """The README's route for DICOM data: export, train on the CSV, predict a folder of .dcm files
    (a study's files share a Study Instance UID, which becomes their study)."""
    import pandas as pd

    from apga.data.export import export_task
    from apga.predict import run_prediction
    from cli_helpers import run_cli_here

    csv = export_task(tiny_data, tmp_path / "task", "dicom", body_part="wrist")
    done = run_cli_here(capsys, tmp_path, tmp_path / "runs", "--data-csv", str(csv), "--train-cutout", "0",
                        "--train-gradcam", "0", "--train-end2end", "0", "--train-random", "0", "--epochs", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "runs" / "task-all-val" / "seed89" / "apga"
    path = run_prediction(str(run_dir), str(tmp_path / "task" / "valid"), out=str(tmp_path / "predicted"))
    predictions = pd.read_csv(path)
    task = pd.read_csv(csv, dtype=str)
    valid = task[task["split"] == "valid"]
    assert len(predictions) == len(valid) and predictions["probability"].between(0, 1).all()
    assert predictions["study"].nunique() == valid["study"].nunique()  # one Study Instance UID per study
    assert (predictions.groupby("study")["study_probability"].nunique() == 1).all()


def test_presentation_lut_inverse_with_monochrome1_inverts_once(tmp_path):
    """Digital radiographs (DX) pair MONOCHROME1 with Presentation LUT Shape INVERSE: one inversion,
    bone bright; INVERSE on a MONOCHROME2 image inverts it too."""
    ds = pydicom.dcmread(data_file("RG3_UNCR.dcm"))
    ds.PresentationLUTShape = "INVERSE"
    ds.save_as(tmp_path / "dx.dcm")
    assert np.array_equal(decode_image(tmp_path / "dx.dcm", SIZE), decode_image(data_file("RG3_UNCR.dcm"), SIZE))
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "mono2_inverse.dcm")
    assert close(decode_image(tmp_path / "mono2_inverse.dcm", SIZE), decode_image(data_file("RG3_UNCR.dcm"), SIZE))


def test_a_window_under_a_negative_rescale_slope(tmp_path):
    """pydicom's window output range runs from high to low under a negative slope; the window still
    maps its lower side to black."""
    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = -1, 4000
    values = 4000.0 - ds.pixel_array
    center, width = float(np.median(values)), float(values.max() - values.min())
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.save_as(tmp_path / "negative.dcm")
    expected = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    decoded = decode_image(tmp_path / "negative.dcm", SIZE)
    assert decoded.max() > 100 and close(decoded, resized(expected))  # not the black picture of an empty range


def test_a_voi_lut_that_spans_part_of_its_range_is_shown_over_its_own_output(tmp_path):
    """A LUT whose entries span 1000-3000 of 16 bits (descriptors are often wrong about the bits):
    displayed over the table's own output range, not darkened to its 5 %."""
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    low, high = int(ds.pixel_array.min()), int(ds.pixel_array.max())
    item = Dataset()
    item.LUTDescriptor = [high - low + 1, low, 16]
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(1000, 3000, high - low + 1).round()])
    ds.VOILUTSequence = [item]
    ds.save_as(tmp_path / "partial.dcm")
    lut = apply_voi_lut(ds.pixel_array, pydicom.dcmread(tmp_path / "partial.dcm")).astype(float)
    assert close(decode_image(tmp_path / "partial.dcm", SIZE), resized((lut - 1000) / 2000))


def test_sbit_of_a_grey_and_alpha_png_is_the_greys(tmp_path):
    values = np.rint(_smooth() * 4095).astype(np.uint16)
    grey_alpha = np.stack([values, np.full_like(values, 65535)], axis=2).reshape(values.shape[0], -1)
    buffer = io.BytesIO()
    png.Writer(values.shape[1], values.shape[0], greyscale=True, alpha=True, bitdepth=16).write(buffer, grey_alpha.tolist())
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    chunks.insert(next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT"), (b"sBIT", bytes([12, 16])))
    with open(tmp_path / "alpha.png", "wb") as handle:
        png.write_chunks(handle, chunks)
    assert close(decode_image(tmp_path / "alpha.png", SIZE), resized(values / 4095.0))


def test_bit_depth_flag_and_the_warning_for_mixed_inferred_depths(tmp_path, capsys):
    """Without sBIT, a 12-bit image whose values stay below 2048 reads as 11 bits (twice as bright);
    the cache warns when a data set mixes inferred depths, and --bit-depth 12 reads both alike."""
    from apga.data.cache import cached_array

    picture = _smooth()
    files = []
    for name, top in (("bright", 4095), ("dark", 2000)):
        Image.fromarray(np.rint(picture * top).astype(np.uint16)).save(tmp_path / f"{name}.png")
        files.append(tmp_path / f"{name}.png")
    inferred = cached_array(files, SIZE, tmp_path / "cache").array
    assert "read with different bit depths (11, 12 bits" in capsys.readouterr().err
    assert close(inferred[1], resized(picture * 2000 / 2047))
    fixed = cached_array(files, SIZE, tmp_path / "cache", bit_depth=12).array
    assert "different bit depths" not in capsys.readouterr().err
    assert close(fixed[0], resized(picture)) and close(fixed[1], resized(picture * 2000 / 4095))
    with pytest.raises(ImageError, match="holds values up to 4095, more than --bit-depth 10 allows"):
        decode_image(files[0], SIZE, bit_depth=10)


def test_what_a_run_learns_from_is_in_its_fingerprint(tiny_config, tmp_path):
    """The decoded images enter the data fingerprint: reading a 12-bit task with another
    --bit-depth is other data for a run; a flag that leaves the pixels as they were is not."""
    from apga.data import prepare_run_data

    rows = []
    for split, count in (("train", 6), ("valid", 4)):
        for i in range(count):
            Image.fromarray(np.rint(_smooth() * (i % 2 * 1000 + 3000)).astype(np.uint16)).save(
                tmp_path / f"{split}{i}.png")
            rows.append(f"{split}{i}.png,{i % 2},{split}")
    (tmp_path / "task.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")

    def fingerprint(**flags):
        config = tiny_config(data_csv=str(tmp_path / "task.csv"), body_part=None, cache_dir=str(tmp_path / "c"),
                             **flags)
        return prepare_run_data(config, 89).fingerprint

    assert fingerprint() != fingerprint(bit_depth=16)  # 16 bits: a darker picture
    assert fingerprint() == fingerprint(bit_depth=12)  # the depth each image implies anyway


def test_an_8_bit_png_that_pillow_reads_decodes_as_before_even_with_a_malformed_chunk(tmp_path):
    """8-bit files are Pillow's, as they always were: a wrong-length sBIT, which a strict PNG reader
    refuses, changes nothing."""
    picture = np.rint(_smooth() * 255).astype(np.uint8)
    plain = io.BytesIO()
    Image.fromarray(picture).save(plain, format="PNG")
    chunks = list(png.Reader(bytes=plain.getvalue()).chunks())
    chunks.insert(next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT"), (b"sBIT", bytes([8, 8, 8])))
    broken = io.BytesIO()
    png.write_chunks(broken, chunks)
    (tmp_path / "plain.png").write_bytes(plain.getvalue())
    (tmp_path / "odd.png").write_bytes(broken.getvalue())
    assert np.array_equal(decode_image(tmp_path / "odd.png", SIZE), decode_image(tmp_path / "plain.png", SIZE))


def test_masks_stored_as_0_1_and_as_0_255_are_the_same_mask(tmp_path):
    from apga.data.decode import decode_mask

    region = np.zeros((48, 40), dtype=np.uint8)
    region[10:30, 8:25] = 1
    for name, values in (("ones.png", region), ("full.png", region * 255), ("wide.png", region.astype(np.uint16) * 65535)):
        Image.fromarray(values).save(tmp_path / name)
    ones, full, wide = (decode_mask(tmp_path / name, SIZE) for name in ("ones.png", "full.png", "wide.png"))
    assert np.array_equal(ones, full) and np.array_equal(wide, full)
    assert 0.1 < full.mean() < 0.4 and set(np.unique(full).tolist()) == {0, 1}
    Image.fromarray(np.zeros((48, 40), dtype=np.uint8)).save(tmp_path / "empty.png")
    assert not decode_mask(tmp_path / "empty.png", SIZE).any()
