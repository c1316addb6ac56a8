"""Image files as archives, scanners and copies hand them over: several images in one file, samples
stored inverted, DICOM without its header, padding around the field, folders of mixed formats,
and files that are no image at all. Every image here is generated (numpy, Pillow, pydicom); each
test names the public report it was rebuilt from."""
from __future__ import annotations

import io
import struct

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from apga.data.decode import decode_image
from apga.errors import ImageError
from apga.predict import image_table

SIZE = 64


def radiograph(seed: int, top: float = 4095.0, size: int = 64) -> np.ndarray:
    """A float (size, size) picture in [0, top]: dark noise, a brighter 'bone', a bright spot."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.24, 0.08, (size, size))
    values[size // 5:-size // 5, size // 3:-size // 3] += 0.3
    values[size // 2 - 4:size // 2 + 4, size // 2 - 3:size // 2 + 3] = 1.0
    return values.clip(0, 1) * top


def tiff(pages: list[tuple[np.ndarray, dict]]) -> bytes:
    """A little-endian baseline TIFF written by hand (one uncompressed strip a page), so that every tag
    is exactly as given: each page is (samples, {tag: value}); BitsPerSample and SampleFormat follow
    the samples' dtype unless given."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for number, (values, extra) in enumerate(pages):
        data = values.astype(values.dtype.newbyteorder("<")).tobytes()
        height, width = values.shape
        tags = {256: width, 257: height, 258: values.dtype.itemsize * 8, 259: 1, 262: 1, 273: 0, 277: 1,
                278: height, 279: len(data), 339: {"u": 1, "i": 2, "f": 3}[values.dtype.kind], **extra}
        ifd_start = len(out)
        data_start = ifd_start + 2 + 12 * len(tags) + 4
        out += struct.pack("<H", len(tags))
        for tag in sorted(tags):
            value = data_start if tag == 273 else tags[tag]
            long = tag in (273, 279)
            out += struct.pack("<HHI", tag, 4 if long else 3, 1) + (struct.pack("<I", value) if long else
                                                                      struct.pack("<HH", value, 0))
        last = number == len(pages) - 1
        out += struct.pack("<I", 0 if last else data_start + len(data)) + data
    return bytes(out)


def dicom(values: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> pydicom.Dataset:
    """A single-frame 12-bit CR image as a pydicom data set, explicit VR little endian."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyInstanceUID = "CR", "GEN0001", "1.2.3.4"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.rint(values).astype("<u2").tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def bare(ds: pydicom.Dataset, path, implicit: bool = True) -> None:
    """The data set written without preamble, 'DICM' and File Meta header, as ACR-NEMA-era files."""
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)


# --- several images in one file ----------------------------------------------------------------

def test_a_multi_page_tiff_is_refused_like_multi_frame_dicom(tmp_path):
    """Case 26 (alephdata/aleph#20: only the first page of a multi-page TIFF was read): page 1 a label
    card, page 2 the radiograph: refused in one line naming the file and the pages. A second page that
    is a reduced-resolution copy (NewSubfileType 1) is a preview: the first page is the image."""
    card = np.full((64, 64), 60000, dtype=np.uint16)
    xray = np.rint(radiograph(26)).astype(np.uint16)
    (tmp_path / "stack.tif").write_bytes(tiff([(card, {}), (xray, {})]))
    with pytest.raises(ImageError, match=r"stack.tif: it is a multi-page TIFF \(2 pages\); save the page to use"):
        decode_image(tmp_path / "stack.tif", SIZE)
    (tmp_path / "single.tif").write_bytes(tiff([(xray, {})]))
    (tmp_path / "preview.tif").write_bytes(tiff([(xray, {}), (xray[::4, ::4].copy(), {254: 1})]))
    assert np.array_equal(decode_image(tmp_path / "preview.tif", SIZE), decode_image(tmp_path / "single.tif", SIZE))
    frames = [Image.fromarray(np.rint(radiograph(s, 255)).astype(np.uint8)) for s in (1, 2)]
    frames[0].save(tmp_path / "cine.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"cine.gif: it is a multi-frame GIF \(2 frames\)"):
        decode_image(tmp_path / "cine.gif", SIZE)
    frames[0].convert("RGB").save(tmp_path / "phone.jpg", "MPO", save_all=True, append_images=frames[1:])
    frames[0].convert("RGB").save(tmp_path / "plain.jpg")  # a phone's MPO: its first image is the picture
    assert np.abs(decode_image(tmp_path / "phone.jpg", SIZE).astype(int)
                  - decode_image(tmp_path / "plain.jpg", SIZE).astype(int)).max() <= 1


# --- samples stored inverted ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
def test_min_is_white_tiffs_decode_as_their_black_is_zero_twins_at_every_depth(tmp_path, dtype):
    """Case 42 (darktable-org/darktable#18815; image-rs/image-tiff#297; InsightSoftwareConsortium/ITK#6636):
    PhotometricInterpretation 0 (WhiteIsZero, the TIFF counterpart of MONOCHROME1) stores 0 as white;
    Pillow inverts 8-bit samples only, so 16-bit and float files decoded as their negative. 32-bit
    unsigned samples (which Pillow hands over as signed) keep their order; Pillow opens no 32-bit
    integer WhiteIsZero file at all: that one is refused in one line saying so."""
    unit = radiograph(42, 1.0)
    if dtype == np.float32:
        values, inverted = unit.astype(np.float32), (1 - unit).astype(np.float32)
    else:
        top = np.iinfo(dtype).max
        values = np.rint(unit * top).astype(dtype)
        inverted = (top - values.astype(np.uint64)).astype(dtype)
    (tmp_path / "black_is_zero.tif").write_bytes(tiff([(values, {262: 1})]))
    (tmp_path / "white_is_zero.tif").write_bytes(tiff([(inverted, {262: 0})]))
    expected = np.clip(np.rint(np.asarray(Image.fromarray(unit.astype(np.float32), mode="F")
                                          .resize((SIZE, SIZE), Image.BILINEAR)) * 255), 0, 255)
    if dtype == np.uint32:
        with pytest.raises(ImageError, match="white_is_zero.tif: it starts as a TIFF file does, but Pillow cannot"):
            decode_image(tmp_path / "white_is_zero.tif", SIZE)
    for name in ("black_is_zero.tif",) + (() if dtype == np.uint32 else ("white_is_zero.tif",)):
        decoded = decode_image(tmp_path / name, SIZE).astype(int)
        assert np.abs(decoded - expected).max() <= 2, (name, np.abs(decoded - expected).max())


# --- DICOM without its header, DICOM padding -------------------------------------------------------

def test_dicom_without_preamble_or_suffix_is_read_by_both_routes(tmp_path, capsys):
    """Case 27 (pydicom/pydicom#150: files 'missing DICM marker'; GSTT-CSC/hazen#433: no File Meta
    header): IM0003 and IM0004 are bare data sets (implicit and explicit VR) named without a suffix.
    They decode as the same data set written as a Part 10 file, and a folder scan takes all four."""
    export = tmp_path / "export"
    export.mkdir()
    for i, implicit in ((1, None), (2, None), (3, True), (4, False)):
        ds = dicom(radiograph(i))
        if implicit is None:
            ds.save_as(export / f"IM000{i}", enforce_file_format=True)
        else:
            dicom(radiograph(i)).save_as(tmp_path / f"part10_{i}.dcm", enforce_file_format=True)
            bare(ds, export / f"IM000{i}", implicit)
            assert (export / f"IM000{i}").read_bytes()[128:132] != b"DICM"
            assert np.array_equal(decode_image(export / f"IM000{i}", SIZE),
                                  decode_image(tmp_path / f"part10_{i}.dcm", SIZE))
    table = image_table(export)
    assert list(table["image"]) == ["IM0001", "IM0002", "IM0003", "IM0004"]
    assert set(table["study"]) == {"1.2.3.4"} and "left out" not in capsys.readouterr().err


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_pixel_padding_is_left_out_of_the_range_and_shown_as_background(tmp_path, photometric):
    """Case 28 (fo-dicom/fo-dicom#406 and #675; OHIF/Viewers#4449): a 12 px frame of Pixel Padding
    Value 4095 around a field of 1000-2500, no window: inside the field the picture equals the file
    without padding (not half its contrast), and the frame is black. Pixel Padding Range Limit too."""
    field = 1000 + radiograph(28, 1500.0)
    inside = np.zeros(field.shape, dtype=bool)
    inside[12:-12, 12:-12] = True
    unpadded, padded, ranged = field.copy(), field.copy(), field.copy()
    unpadded[~inside] = field[inside].min() if photometric == "MONOCHROME2" else field[inside].max()
    padded[~inside] = 4095
    ranged[~inside] = np.where(np.arange(64) % 2, 4000, 4095)[None, :].repeat(64, 0)[~inside]
    dicom(unpadded, photometric).save_as(tmp_path / "unpadded.dcm", enforce_file_format=True)
    dicom(padded, photometric, PixelPaddingValue=4095).save_as(tmp_path / "padded.dcm", enforce_file_format=True)
    dicom(ranged, photometric, PixelPaddingValue=4095, PixelPaddingRangeLimit=4000).save_as(
        tmp_path / "ranged.dcm", enforce_file_format=True)
    bare(dicom(padded, photometric, PixelPaddingValue=4095), tmp_path / "bare_padded")  # implicit VR: US or SS
    reference = decode_image(tmp_path / "unpadded.dcm", SIZE).astype(int)
    for name in ("padded.dcm", "ranged.dcm", "bare_padded"):
        decoded = decode_image(tmp_path / name, SIZE).astype(int)
        assert np.abs(decoded - reference)[14:-14, 14:-14].max() <= 1, name
        assert decoded[:10].max() == 0 and decoded[-10:].max() == 0, name


# --- folders of mixed formats, and files that are no image ---------------------------------------

def test_a_folder_scan_takes_what_the_decoder_reads_and_says_what_it_left_out(tmp_path, capsys):
    """Case 36 (pytorch/vision#735: .webp skipped; hyperfield/ai-file-sorter#105): a study of .png,
    .jp2, .webp, .jfif, .tif and a JPEG named .jpeg_large: all six predicted from the folder as from a
    CSV listing them. Left out, counted in one notice: macOS '._' files (upscayl/upscayl#1474,
    jurplel/qView#651), a DICOMDIR, notes."""
    study = tmp_path / "study1_positive"
    study.mkdir()
    names = {"image1.png": "PNG", "image2.jp2": "JPEG2000", "image3.webp": "WEBP", "image4.jfif": "JPEG",
             "image5.tif": "TIFF", "image6.jpeg_large": "JPEG"}
    for seed, (name, kind) in enumerate(names.items()):
        Image.fromarray(np.rint(radiograph(seed, 255)).astype(np.uint8)).save(study / name, format=kind,
                                                                              **({"lossless": True} if kind == "WEBP" else {}))
    (study / "._image1.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    (study / "notes.txt").write_text("seen by Dr X")
    dicomdir = dicom(radiograph(9))
    dicomdir.save_as(study / "DICOMDIR", enforce_file_format=True)
    capsys.readouterr()
    scanned = image_table(study)
    assert sorted(scanned["image"]) == sorted(names)
    assert ("notice: left out 3 of the 9 files in" in capsys.readouterr().err)
    pd.DataFrame({"path": [f"study1_positive/{n}" for n in names], "label": 1}).to_csv(tmp_path / "t.csv", index=False)
    listed = image_table(tmp_path / "t.csv")
    for file_a, file_b in zip(sorted(scanned["file"]), sorted(listed["file"])):
        assert np.array_equal(decode_image(file_a, SIZE), decode_image(file_b, SIZE))


@pytest.mark.parametrize("content, reason", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 81234\n", "it is a Git LFS pointer"),
    (b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ", "it is macOS metadata"),
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "it is a web page, not an image"),
    (b"II*\x00\x08\x00\x00\x00\xff\xff", "it starts as a TIFF file does, but Pillow cannot decode it"),
])
def test_files_that_are_no_image_say_what_they_are(tmp_path, content, reason):
    """A data set cloned without Git LFS (git-lfs/git-lfs#4240: 'All LFS files are just pointers'), a
    Mac's '._' files, a download that saved a login page: one line saying what the file is and how
    to get the image, not 'truncated, corrupted or not an image'."""
    (tmp_path / "image1.png").write_bytes(content)
    with pytest.raises(ImageError, match=f"cannot read image .*image1.png: {reason}"):
        decode_image(tmp_path / "image1.png", SIZE)


def test_an_image_in_memory_round_trips(tmp_path):
    """The TIFF writer above is a TIFF as Pillow reads it (a check of the test's own generator)."""
    values = np.rint(radiograph(7)).astype(np.uint16)
    with Image.open(io.BytesIO(tiff([(values, {})]))) as image:
        assert np.array_equal(np.asarray(image), values)


def test_a_float_tiff_with_nan_or_inf_keeps_its_picture(tmp_path):
    """One NaN (no data) or inf pixel in a float TIFF made the whole image black (wkentaro/labelme#2255,
    kidanger/vpv#38): the range is the finite pixels'; NaN is black, +inf white."""
    unit = radiograph(5, 1.0).astype(np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "clean.tif")
    reference = decode_image(tmp_path / "clean.tif", SIZE).astype(int)
    for bad in (np.nan, np.inf):
        values = unit.copy()
        values[0, 0] = bad
        Image.fromarray(values, mode="F").save(tmp_path / "bad.tif")
        decoded = decode_image(tmp_path / "bad.tif", SIZE).astype(int)
        assert np.abs(decoded - reference)[2:, 2:].max() <= 1, bad


def test_dicom_with_empty_rescale_and_window_values_reads_as_without_them(tmp_path):
    """Rescale Slope, Intercept, Window Center and Width present but empty (pydicom/pydicom#1237,
    ImagingDataCommons/highdicom#418: TypeError on None): read as absent, as viewers do."""
    values = radiograph(11)
    dicom(values).save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    dicom(values, RescaleSlope=None, RescaleIntercept=None, WindowCenter=None, WindowWidth=None).save_as(
        tmp_path / "empty.dcm", enforce_file_format=True)
    assert "RescaleSlope" in pydicom.dcmread(tmp_path / "empty.dcm")
    assert np.array_equal(decode_image(tmp_path / "empty.dcm", SIZE), decode_image(tmp_path / "plain.dcm", SIZE))


def test_encodings_that_already_decode_keep_decoding(tmp_path):
    """Reports whose inputs this decoder already reads, kept as regressions: a DICOM data set written
    in a VR other than its File Meta header says (pydicom/pydicom#1943: 'Expected explicit VR, but
    found implicit VR'), big-endian DICOM, an Adobe CMYK JPEG (stored inverted: haraldk/TwelveMonkeys#141),
    16-bit TIFFs compressed with LZW or deflate and big-endian ones."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRBigEndian

    values = radiograph(12)
    dicom(values).save_as(tmp_path / "reference.dcm", enforce_file_format=True)
    reference = decode_image(tmp_path / "reference.dcm", SIZE)
    mismatched = dicom(values)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, mismatched.file_meta, enforce_standard=True)  # says explicit VR ...
    bare(mismatched, tmp_path / "implicit_body")  # ... the data set is implicit
    (tmp_path / "mismatched.dcm").write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue()
                                              + (tmp_path / "implicit_body").read_bytes())
    big = dicom(values)
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    big.PixelData = np.rint(values).astype(">u2").tobytes()
    pydicom.dcmwrite(tmp_path / "big.dcm", big, enforce_file_format=True)
    for name in ("mismatched.dcm", "big.dcm"):
        assert np.array_equal(decode_image(tmp_path / name, SIZE), reference), name
    grey = Image.fromarray(np.rint(values / 16).astype(np.uint8))
    grey.save(tmp_path / "grey.jpg", quality=95)
    grey.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert np.abs(decode_image(tmp_path / "cmyk.jpg", SIZE).astype(int)
                  - decode_image(tmp_path / "grey.jpg", SIZE).astype(int)).max() <= 2
    sixteen = np.rint(values * 16).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "plain16.tif")
    Image.fromarray(sixteen).save(tmp_path / "lzw16.tif", compression="tiff_lzw")
    Image.fromarray(sixteen).save(tmp_path / "deflate16.tif", compression="tiff_adobe_deflate")
    Image.frombytes("I;16B", sixteen.shape[::-1], sixteen.astype(">u2").tobytes()).save(tmp_path / "big16.tif")
    plain = decode_image(tmp_path / "plain16.tif", SIZE)
    for name in ("lzw16.tif", "deflate16.tif", "big16.tif"):
        assert np.array_equal(decode_image(tmp_path / name, SIZE), plain), name


# --- headers that contradict their pixels -------------------------------------------------------

def _png_chunks(data: bytes, extra: list[tuple[bytes, bytes]], before: bytes = b"IDAT") -> bytes:
    """The PNG `data` with the chunks `extra` inserted before its first `before` chunk (pypng writes
    their CRCs)."""
    import png

    chunks = list(png.Reader(bytes=data).chunks())
    position = next(i for i, (kind, _) in enumerate(chunks) if kind == before)
    buffer = io.BytesIO()
    png.write_chunks(buffer, chunks[:position] + extra + chunks[position:])
    return buffer.getvalue()


def _png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 samples, (H, W) grey or (H, W, 3) colour, written by pypng."""
    import png

    height, width = values.shape[:2]
    colour = values.ndim == 3
    buffer = io.BytesIO()
    png.Writer(width, height, greyscale=not colour, bitdepth=16).write(buffer, values.reshape(height, -1).tolist())
    return buffer.getvalue()


def test_dicom_headers_that_contradict_their_samples_follow_the_samples(tmp_path):
    """Photometric Interpretation absent (old modalities; pydicom's AttributeError) is MONOCHROME2
    for one sample a pixel and RGB for three; three samples labelled MONOCHROME2 (an exporter that
    kept a grey template's header, fo-dicom/fo-dicom#837: TypeError from the resize) are the RGB they
    are; 12 bits stored MSB-aligned (High Bit 15) are shifted into place, not masked to noise."""
    values = radiograph(21)
    dicom(values).save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    plain = decode_image(tmp_path / "plain.dcm", SIZE)
    unlabelled = dicom(values)
    del unlabelled.PhotometricInterpretation
    unlabelled.save_as(tmp_path / "unlabelled.dcm", enforce_file_format=True)
    dicom(np.rint(values) * 16, HighBit=15).save_as(tmp_path / "msb.dcm", enforce_file_format=True)
    for name in ("unlabelled.dcm", "msb.dcm"):
        assert np.array_equal(decode_image(tmp_path / name, SIZE), plain), name

    rgb = np.stack([values / 16, values / 16 * 0.8, values / 32], axis=-1).astype(np.uint8)
    reference = None
    for photometric in ("RGB", "MONOCHROME2", None):
        ds = dicom(values, SamplesPerPixel=3, PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7)
        ds.PixelData = rgb.tobytes()
        if photometric:
            ds.PhotometricInterpretation = photometric
        else:
            del ds.PhotometricInterpretation
        ds.save_as(tmp_path / "colour.dcm", enforce_file_format=True)
        decoded = decode_image(tmp_path / "colour.dcm", SIZE)
        reference = decoded if reference is None else reference
        assert np.array_equal(decoded, reference), photometric
    luma = np.asarray(Image.fromarray(rgb, "RGB").convert("L").resize((SIZE, SIZE), Image.BILINEAR)).astype(int)
    assert np.abs(reference.astype(int) - luma).max() <= 2


def test_a_palette_of_8_bit_entries_in_16_bit_words_keeps_its_picture(tmp_path):
    """PALETTE COLOR whose descriptor says 8-bit entries but whose LUT Data hold a 16-bit word an
    entry (PS3.3 C.7.6.3.1.5 notes implementations that wrote so): pydicom reads every entry as 0, a
    black image; it decodes as the standard palette, entries in the low or the high byte."""
    index = np.rint(radiograph(22, top=255)).astype(np.uint8)
    results = {}
    for name, data in [("standard", np.arange(256, dtype=np.uint8).tobytes()),
                       ("low", np.arange(256, dtype="<u2").tobytes()),
                       ("high", (np.arange(256, dtype="<u2") << 8).tobytes())]:
        ds = dicom(index, "PALETTE COLOR", BitsAllocated=8, BitsStored=8, HighBit=7)
        ds.PixelData = index.tobytes()
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 8])
            setattr(ds, f"{colour}PaletteColorLookupTableData", data)
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
        results[name] = decode_image(tmp_path / f"{name}.dcm", SIZE)
    assert results["standard"].mean() > 40
    assert np.array_equal(results["low"], results["standard"]) and np.array_equal(results["high"], results["standard"])


def test_png_metadata_that_contradicts_the_pixels_is_not_trusted(tmp_path):
    """sBIT of no 16-bit sample (20: the image came out black) or below the values that do not fill
    16 bits either (sBIT 8, 12-bit values: nearly black) is ignored, as without sBIT; a 16-bit colour
    PNG (read by pypng) turns by its EXIF orientation as every Pillow-read file does; a text chunk
    over Pillow's limit (python-pillow/Pillow#8363) or a text chunk with a bad CRC costs no image."""
    values = np.rint(radiograph(23)).astype(np.uint16)  # 12-bit values
    plain = _png16(values)
    (tmp_path / "plain.png").write_bytes(plain)
    reference = decode_image(tmp_path / "plain.png", SIZE)
    assert reference.max() >= 250
    import zlib

    broken_text = _png_chunks(plain, [(b"tEXt", b"Comment\x00x")])
    at = broken_text.index(b"tEXt") + 4 + 9
    broken_text = broken_text[:at] + b"\x00\x00\x00\x00" + broken_text[at + 4:]  # the CRC zeroed
    for name, data in [("sbit20", _png_chunks(plain, [(b"sBIT", bytes([20]))])),
                       ("sbit8", _png_chunks(plain, [(b"sBIT", bytes([8]))])),
                       ("ztxt", _png_chunks(plain, [(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 3_000_000))])),
                       ("badcrc", broken_text)]:
        (tmp_path / f"{name}.png").write_bytes(data)
        assert np.array_equal(decode_image(tmp_path / f"{name}.png", SIZE), reference), name

    colour = np.stack([values, values // 2, values // 4], axis=-1).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show it rotated 90 degrees clockwise
    (tmp_path / "upright.png").write_bytes(_png16(np.ascontiguousarray(np.rot90(colour, -1))))
    (tmp_path / "turned.png").write_bytes(_png_chunks(_png16(colour), [(b"eXIf", exif.tobytes())]))
    upright = decode_image(tmp_path / "upright.png", SIZE)
    assert np.array_equal(decode_image(tmp_path / "turned.png", SIZE), upright)
    assert not np.array_equal(decode_image(tmp_path / "turned.png", SIZE), np.rot90(upright))


def test_a_cielab_tiff_decodes_as_its_grey_twin(tmp_path):
    """A CIELAB TIFF (colour-managed exports): Pillow cannot convert LAB to grey ('conversion from
    LAB to RGB not supported'); littlecms takes it to sRGB first, as a viewer does."""
    grey = Image.fromarray(np.rint(radiograph(24, top=255)).astype(np.uint8))
    grey.save(tmp_path / "grey.tif")
    from PIL import ImageCms

    lab = ImageCms.applyTransform(grey.convert("RGB"), ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"))
    lab.save(tmp_path / "lab.tif")
    assert Image.open(tmp_path / "lab.tif").mode == "LAB"
    assert np.abs(decode_image(tmp_path / "lab.tif", SIZE).astype(int)
                  - decode_image(tmp_path / "grey.tif", SIZE).astype(int)).max() <= 3
