"""Decoding what radiology stores into (size, size) uint8 grey images, bone bright.

One decoder serves MURA, `--data-csv` tasks and `apga.predict`:
- **8-bit PNG** (grey, colour, palette, with alpha) and anything else Pillow opens with 8 bits
  (JPEG, BMP, 8-bit TIFF): to grey with Pillow, alpha dropped, then resized: MURA's images decode
  exactly as they always have. EXIF orientation is applied the way viewers show the picture.
- **16-bit PNG and TIFF**: divided by 2**b - 1, where b is the PNG's sBIT (the bits the exporter
  says are significant) when the file has one; else `bit_depth` (`--bit-depth`, the bits the data
  set's values use) when given; else the fewest bits (8 to 16) that hold the image's largest value.
  A radiograph exported with 10 or 12 bits in a 16-bit file so decodes to the full grey range, not
  to its bottom 2 %. sBIT with values that fill 16 bits (the PNG standard's scaling) means b = 16.
  The last rule is per image: an image whose values stay below half its true range comes out
  twice as bright (the image cache warns when a data set's images were read with different b;
  pass --bit-depth then). Colour and alpha 16-bit PNGs are read with pypng (Pillow keeps only
  their top 8 bits). A min-is-white TIFF (WhiteIsZero) is inverted at every depth, so that bright
  is bright; 32-bit unsigned TIFF samples are read unsigned.
- **Files of several images** (a multi-page TIFF, an animated GIF, PNG or WebP) are refused, as
  multi-frame DICOM is; a TIFF's reduced-resolution pages and an MPO's previews do not count.
- **DICOM** (with pydicom): the modality LUT (rescale slope and intercept), then the VOI LUT, or
  else the first window, or else the image's own range; MONOCHROME1 is inverted so that bone is
  bright, as a viewer shows it (Presentation LUT Shape INVERSE, which digital radiographs pair with
  MONOCHROME1, inverts the same way, once); colour (RGB, YBR, palette) goes to grey. JPEG 2000 through
  pylibjpeg-openjpeg; other compressed syntaxes decode when their pydicom plug-in is installed.
  Pixels of the Pixel Padding Value (and up to its range limit) are left out of the image's own
  range and shown black. Multi-frame files and files without pixel data are refused.

A DICOM file is recognised by its content ("DICM" after the 128-byte preamble, which some files
use as a TIFF header: Pillow would otherwise open them as TIFFs of raw stored values; or, without
preamble, a bare data set's first element) or by a .dcm/.dicom suffix. A file that is no image and
says so in its first bytes (empty, a Git LFS pointer, macOS `._` metadata, a web page) is named so. Everything that cannot be decoded raises `ImageError` naming the file and the
reason. The grey value of every pixel is luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), as
Pillow's "L" conversion.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from apga.errors import ImageError

DECODER_VERSION = 6  # bump when decoding changes what an image decodes to (it keys the image cache)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".jp2", ".j2k", ".webp",
                  ".gif") + DICOM_SUFFIXES  # a folder scan takes these whatever their content (and others by content)
LUMA = (0.299, 0.587, 0.114)
APPLE_DOUBLE = b"\x00\x05\x16\x07"  # the magic number of macOS's `._` metadata files
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


PLUGINS = ("pillow", "pydicom", "pypng", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pylibjpeg-rle",
           "pyjpegls", "python-gdcm")


def decoder_settings() -> dict:
    """What decoding depends on beyond a file's bytes and its flags: the decoder's version and the
    installed decoding packages (a DICOM that no plug-in could decode is tried again once one is
    installed). Part of the image cache's key."""
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"decoder": DECODER_VERSION, **{package: version(package) for package in PLUGINS},
            "voi": "lut, else first window, else range", "png16": "sBIT, else --bit-depth, else max bits"}


def is_dicom(content: bytes, name: str = "") -> bool:
    """A DICOM file: "DICM" after the 128-byte preamble, a DICOM suffix, or (no preamble, any name) a
    bare data set (`is_bare_dicom`)."""
    return content[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES or is_bare_dicom(content)


_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF", b"OL",
        b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US",
        b"UT", b"UV"}


def is_bare_dicom(content: bytes) -> bool:
    """A DICOM data set written without the preamble, "DICM" and File Meta header (ACR-NEMA-era files,
    some modality exports; pydicom/pydicom#150): its first element is of an even group from 0002 to
    0028 (File Meta, identification, patient, acquisition, image), little endian, in explicit VR (two
    letters of a VR follow the tag) or implicit VR (a 4-byte length that fits in the file). No image
    format Pillow reads starts so."""
    if len(content) < 16 or content[1] != 0 or content[0] % 2 or not 0x02 <= content[0] <= 0x28:
        return False
    if content[4:6] in _VRS:
        return True
    return int.from_bytes(content[4:8], "little") < len(content)


def decode_image(path, size: int, bit_depth: int | None = None) -> np.ndarray:
    """Any supported image file -> (size, size) uint8 grey, bone bright. `bit_depth`: the bits the
    values of 16-bit files without sBIT use (module docstring).

    Raises `ImageError` naming the file when it cannot be read or decoded."""
    return decode_bytes(read_image_file(path), size, str(path), bit_depth=bit_depth)


def decode_mask(path, size: int) -> np.ndarray:
    """A ground-truth mask image -> (size, size) uint8 in {0, 1}: a pixel is relevant where its value is
    above half the file's largest (masks stored as 0/1 and as 0/255 alike; an all-zero file is empty)."""
    return decode_bytes(read_image_file(path), size, str(path), mask=True)


def read_image_file(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read image {path} ({error.strerror or error})") from None


def decode_bytes(content: bytes, size: int, name: str, mask: bool = False, bit_depth: int | None = None) -> np.ndarray:
    """`decode_image` of a file's bytes (`name`: its path, for format hints and messages)."""
    return decode_with_depth(content, size, name, mask, bit_depth)[0]


def decode_with_depth(content: bytes, size: int, name: str, mask: bool = False,
                      bit_depth: int | None = None) -> tuple[np.ndarray, int | None]:
    """`decode_bytes`, and the bit depth b read off a 16-bit file's largest value (None when b came
    from sBIT or `bit_depth`, or the file is no 16-bit PNG or TIFF)."""
    inferred = []
    not_an_image = what_else(content)
    if not_an_image:
        raise ImageError(f"cannot read image {name}: {not_an_image}")
    try:
        grey = _grey_png_metadata_aside(content, name, bit_depth, inferred)
        if not isinstance(grey, Image.Image) and np.ndim(grey) != 2:
            raise ImageError(f"cannot read image {name}: its pixels have shape {np.shape(grey)}, not one grey plane "
                             f"(height, width) nor colour this decoder knows; convert it to a grey PNG")
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"cannot read image {name}: {_bomb_reason(error)}") from None
    except Exception as error:  # noqa: BLE001 - any failure to decode a file makes that file unreadable
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        kind = _signature_format(content) if isinstance(error, UnidentifiedImageError) else None
        what = (f"it starts as {kind} file does, but Pillow cannot decode it (truncated, or a variant it does not "
                f"read{', without a plug-in such as pillow-heif' if 'HEIF' in kind else ''}); convert it to PNG (a "
                f"16-bit PNG for more than 8 bits)" if kind else "it is truncated, corrupted or not an image")
        raise ImageError(f"cannot read image {name}: {what} ({type(error).__name__}: {reason[:160]})") from None
    if mask:  # binary at full size, above half the file's own maximum (0/1 and 0/255 masks alike)
        values = np.asarray(grey, dtype=np.float32)
        top = float(values.max()) if values.size else 0.0
        grey = Image.fromarray(((values > top / 2) & (top > 0)).astype(np.uint8) * 255, mode="L")
    if isinstance(grey, Image.Image):  # 8-bit sources: resized as uint8, exactly as always
        pixels = np.asarray(grey.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    else:
        resized = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
        resized = np.asarray(resized.resize((size, size), Image.BILINEAR))
        pixels = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
    return ((pixels >= 128).astype(np.uint8) if mask else pixels), (inferred[0] if inferred else None)


def what_else(content: bytes) -> str | None:
    """What a file that is no image is, when its first bytes say so, and how to get the image (None
    otherwise): an empty file, a Git LFS pointer (a repository cloned without its LFS objects), macOS
    metadata (an AppleDouble `._` file, copied from a Mac to a USB disk or a share), a web page saved
    under an image's name."""
    if not content:
        return "it is empty (0 bytes: an interrupted copy or download?); copy it again"
    if content.startswith(b"version https://git-lfs"):
        return ("it is a Git LFS pointer, not the image (the repository was cloned without its LFS files); run "
                "git lfs pull there")
    if content.startswith(APPLE_DOUBLE):
        return ("it is macOS metadata (an AppleDouble '._' file, made when a Mac copies to a FAT/exFAT disk or a share), "
                "not an image; delete those files (dot_clean, or find DIR -name '._*' -delete)")
    if content[:512].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "it is a web page, not an image (a download that got a login, quota or error page); download it again"
    return None


_SIGNATURES = {b"II*\x00": "a TIFF", b"MM\x00*": "a TIFF", b"II+\x00": "a BigTIFF", b"\xff\xd8\xff": "a JPEG",
               b"\x00\x00\x00\x0cjP  ": "a JPEG 2000", b"\xff\x4f\xff\x51": "a JPEG 2000 codestream",
               b"\xff\x0a": "a JPEG XL", b"\x00\x00\x00\x0cJXL ": "a JPEG XL"}


def _signature_format(content: bytes) -> str | None:
    """The format a file's first bytes announce (for a message), or None."""
    if content[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "a HEIF/AVIF photo"
    return next((kind for signature, kind in _SIGNATURES.items() if content.startswith(signature)), None)


def _bomb_reason(error: Exception) -> str:
    limit = Image.MAX_IMAGE_PIXELS or 0
    return (f"it is too large for Pillow ({error}); its limit against decompression bombs is "
            f"{2 * limit / 1e6:.0f} Mpx: downscale the image")


_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _grey_png_metadata_aside(content: bytes, name: str, bit_depth: int | None, inferred: list):
    """`_grey`; a PNG that fails for its metadata (a text chunk larger than Pillow's limit against
    decompression bombs, python-pillow/Pillow#8363; an ancillary chunk with a bad CRC, which libpng
    and viewers skip) is decoded again without its text chunks and broken ancillary chunks, which
    hold no pixel."""
    try:
        return _grey(content, name, bit_depth, inferred)
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - retried once without metadata, else the first failure stands
        pixels_only = _png_without_metadata(content) if content.startswith(PNG_SIGNATURE) else None
        if pixels_only is None or pixels_only == content:
            raise
        try:
            return _grey(pixels_only, name, bit_depth, inferred)
        except Exception:  # noqa: BLE001
            pass
        raise


def _png_without_metadata(content: bytes) -> bytes | None:
    """A PNG's bytes without its text chunks and its ancillary chunks whose CRC is wrong (None when
    the chunk structure itself is broken)."""
    import zlib

    out, at = bytearray(content[:8]), 8
    while at + 12 <= len(content):
        length = int.from_bytes(content[at:at + 4], "big")
        kind, end = content[at + 4:at + 8], at + 12 + length
        if end > len(content):
            return None
        body, crc = content[at + 8:at + 8 + length], int.from_bytes(content[end - 4:end], "big")
        ancillary = bool(kind[0] & 0x20)
        if kind not in _PNG_TEXT_CHUNKS and not (ancillary and zlib.crc32(kind + body) != crc):
            out += content[at:end]
        at = end
        if kind == b"IEND":
            break
    return bytes(out)


def _grey(content: bytes, name: str, bit_depth: int | None = None, inferred: list | None = None):
    """An "L" image (8-bit sources) or a float32 (H, W) array in [0, 1] (everything else); a bit
    depth read off an image's largest value is appended to `inferred`."""
    if is_dicom(content, name):
        return _dicom_grey(content, name)
    if content.startswith(PNG_SIGNATURE) and content[12:16] == b"IHDR" and content[24:25] == b"\x10":
        import png  # 16-bit PNGs only (IHDR's bit depth byte): 8-bit files stay with Pillow, as always

        header = png.Reader(bytes=content)
        header.preamble()
        return _png16_grey(content, header, name, bit_depth, inferred)
    with Image.open(io.BytesIO(content)) as image:
        _require_one_image(image, name)
        image.load()
        tags = dict(getattr(image, "tag_v2", {}) or {})  # a TIFF's: how its samples are stored
        image = ImageOps.exif_transpose(image)
        if image.mode in _HIGH_DEPTH_MODES:
            return _high_depth_grey(_tiff_samples(np.asarray(image), tags), name, bit_depth, inferred)
        if image.mode in ("LA", "RGBA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA").convert("RGB")  # drop alpha, keep the intensities
        if image.mode == "LAB":  # CIELAB (a TIFF from a colour-managed export): to sRGB with littlecms, as viewers
            from PIL import ImageCms

            image = ImageCms.applyTransform(image, ImageCms.buildTransform(
                ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"))
        return image.convert("L")


def _require_one_image(image: Image.Image, name: str) -> None:
    """Refuses a file of several images (a multi-page TIFF: a label card and the radiograph, or every
    view of a study; an animated GIF, PNG or WebP), as multi-frame DICOM is refused: which page is
    the image is not ours to guess (alephdata/aleph#20: only the first page was read). Pages that
    are reduced-resolution copies of the first (TIFF NewSubfileType bit 0) and an MPO's previews
    (phones' JPEGs: the first image is the picture) do not count."""
    frames = getattr(image, "n_frames", 1)
    if frames <= 1 or image.format == "MPO":
        return
    if image.format == "TIFF":
        previews = 0
        for page in range(1, frames):
            image.seek(page)
            previews += int(image.tag_v2.get(254, 0)) & 1
        image.seek(0)
        if previews == frames - 1:
            return
    kind = "page" if image.format == "TIFF" else "frame"
    raise ImageError(f"cannot read image {name}: it is a multi-{kind} {image.format} ({frames} {kind}s); save the "
                     f"{kind} to use as a file of its own (e.g. tiffsplit, or Pillow's Image.seek and save)")


def _tiff_samples(values: np.ndarray, tags: dict) -> np.ndarray:
    """A high-depth image's samples as stored, the TIFF tags `tags` applied: unsigned 32-bit samples
    (which Pillow hands over as signed) read unsigned, and WhiteIsZero ("min-is-white", the TIFF
    counterpart of MONOCHROME1) inverted at every depth (darktable-org/darktable#18815; Pillow
    inverts 1- to 8-bit samples only), so that a bright value is bright."""
    def first(tag: int, default):
        value = tags.get(tag, default)
        return value[0] if isinstance(value, tuple) else value

    bits, sample_format = first(258, None), first(339, 1)
    if values.dtype == np.int32 and bits == 32 and sample_format == 1:
        values = values.view(np.uint32)
    if first(262, 1) != 0:
        return values
    if values.dtype.kind == "u":
        top = 2 ** bits - 1 if bits else np.iinfo(values.dtype).max
        return (top - values.astype(np.uint64)).astype(values.dtype.newbyteorder("="))
    return -values.astype(np.float64)  # signed or float: shown over their own range, inverted


def unit_range(values: np.ndarray, significant_bits: int | None = None, bit_depth: int | None = None,
               name: str = "", inferred: list | None = None) -> np.ndarray:
    """Unsigned integer samples of a 16-bit container -> float32 in [0, 1] (see the module docstring)."""
    top = int(values.max()) if values.size else 0
    if significant_bits and not 1 <= significant_bits <= 16:
        significant_bits = None  # no bit count of a 16-bit sample (a broken exporter): as without sBIT
    if significant_bits and top >= 2 ** significant_bits and top < 2 ** 15:
        significant_bits = None  # values above sBIT that do not fill 16 bits either: sBIT is wrong, not the values
    if significant_bits:
        bits = significant_bits if top < 2 ** significant_bits else 16  # else scaled to 16 bits, as the standard asks
    elif bit_depth:
        if top >= 2 ** bit_depth:
            raise ImageError(f"cannot read image {name}: it holds values up to {top}, more than --bit-depth {bit_depth} "
                             f"allows ({2 ** bit_depth - 1}); pass the bits its values use, or leave --bit-depth out")
        bits = bit_depth
    else:
        bits = max(8, top.bit_length())
        if inferred is not None:
            inferred.append(bits)
    return (values.astype(np.float32) / np.float32(2 ** bits - 1)).clip(0, 1)


def _high_depth_grey(values: np.ndarray, name: str = "", bit_depth: int | None = None,
                     inferred: list | None = None) -> np.ndarray:
    """16-bit grey (and 32-bit integer or float TIFF) samples -> [0, 1]."""
    if values.dtype.kind == "u" or (values.dtype.kind == "i" and values.min() >= 0 and values.max() < 2 ** 16):
        return unit_range(values.astype(np.uint32), None, bit_depth, name, inferred)
    return _min_max(values.astype(np.float64))  # signed or float samples: their own range


def _png16_grey(content: bytes, header, name: str = "", bit_depth: int | None = None,
                inferred: list | None = None) -> np.ndarray:
    colours = 1 if header.greyscale else 3
    significant = max(header.sbit[:colours]) if header.sbit else None  # one byte per channel; alpha's is not ours
    if header.greyscale and not header.alpha:  # the common case: Pillow decodes it fast
        with Image.open(io.BytesIO(content)) as image:
            image = ImageOps.exif_transpose(image)
            return unit_range(np.asarray(image).astype(np.uint32), significant, bit_depth, name, inferred)
    width, height, rows, info = header.read()
    planes = info["planes"]
    samples = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    colour = samples[..., :colours]  # alpha dropped
    scaled = unit_range(colour, significant, bit_depth, name, inferred)
    grey = scaled[..., 0] if colours == 1 else scaled @ np.asarray(LUMA, dtype=np.float32)
    return _oriented(grey, content)


_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}  # EXIF Orientation -> the transpose that shows it upright (as exif_transpose)


def _oriented(grey: np.ndarray, content: bytes) -> np.ndarray:
    """A float (H, W) picture decoded outside Pillow, turned as the file's EXIF Orientation says, the
    way `ImageOps.exif_transpose` turns the files Pillow decodes (a 16-bit colour PNG from a phone or
    a viewer's export; the pypng route read none of it)."""
    with Image.open(io.BytesIO(content)) as image:
        orientation = image.getexif().get(0x0112)
    if orientation not in _ORIENTATIONS:
        return grey
    return np.asarray(Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
                      .transpose(_ORIENTATIONS[orientation]))


def _min_max(values: np.ndarray) -> np.ndarray:
    """Values -> [0, 1] over their own finite range: NaN is black, +inf white, -inf black (one NaN
    made the whole of a float TIFF black: wkentaro/labelme#2255, kidanger/vpv#38)."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.where(values == np.inf, np.float32(1), np.float32(0))
    low, high = float(np.min(values[finite])), float(np.max(values[finite]))
    if high <= low:
        scaled = np.zeros(values.shape, dtype=np.float64)
    else:
        with np.errstate(invalid="ignore"):
            scaled = (values - low) / (high - low)
    return np.nan_to_num(np.clip(scaled, 0, 1), nan=0.0).astype(np.float32)


def _dicom_grey(content: bytes, name: str) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(content), force=content[128:132] != b"DICM")
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError) as error:
        raise ImageError(f"cannot read image {name}: it is not a readable DICOM file ({error})") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = ds.get("Modality", "") or str(getattr(ds.get("SOPClassUID"), "name", "") or "")
        raise ImageError(f"cannot read image {name}: it is a DICOM {kind + ' ' if kind else ''}object without pixel "
                         f"data (a report, a plan, a key object); leave it out of the image list")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"cannot read image {name}: it is a multi-frame DICOM ({frames} frames); export the frame to "
                         f"use as a single-frame file")
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds and ds[keyword].value in (None, "", b"", []):
            del ds[keyword]  # present but empty (pydicom/pydicom#1237): as absent, as viewers read it
    _photometric_from_samples(ds)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:  # a bare data set: its pixels are native, in the encoding pydicom read it in
        _set_transfer_syntax(ds)
    compressed = syntax is not None and syntax.is_compressed
    if compressed:
        _require_decoder(syntax, name)
    try:
        arr = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - the plug-ins' own errors, as one line
        if not compressed:
            raise
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise ImageError(f"cannot read image {name}: its {syntax.name} pixel data could not be decoded by the "
                         f"installed plug-ins ({reason[:120]}); pylibjpeg-libjpeg (GPL-3.0) or python-gdcm decode more "
                         f"JPEG variants") from None
    if not compressed:
        arr = _high_bit_aligned(arr, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        padding = _padding(arr, ds)
        unit = _displayed(arr, ds, padding)
        # MONOCHROME1 (or Presentation LUT Shape INVERSE, which DX images pair with it): one inversion
        inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
        unit = 1.0 - unit if inverse else unit
        return np.where(padding, np.float32(0), unit) if padding is not None else unit
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        _palette_entries_as_bytes(ds)
        rgb = apply_color_lut(arr, ds)
        bits = 8 if rgb.dtype == np.uint8 else 16
    else:  # RGB; pydicom returns YBR_* as RGB
        rgb, bits = arr, int(ds.get("BitsStored", 8))
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ImageError(f"cannot read image {name}: its photometric interpretation {photometric} with pixel shape "
                         f"{rgb.shape} is not one this decoder knows")
    return ((rgb.astype(np.float32) @ np.asarray(LUMA, dtype=np.float32)) / (2 ** bits - 1)).clip(0, 1)


def _photometric_from_samples(ds) -> None:
    """A Photometric Interpretation the pixels can have: absent (old modalities and hand-made
    files; pydicom cannot decode without it) it is MONOCHROME2 for one sample a pixel and RGB for
    three, as viewers assume; a monochrome label on three samples a pixel (an exporter that kept a
    grey template's header: fo-dicom/fo-dicom#837) is read as the RGB the samples are."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if samples == 3 and photometric in ("", "MONOCHROME1", "MONOCHROME2"):
        ds.PhotometricInterpretation = "RGB"
    elif samples == 1 and not photometric:
        ds.PhotometricInterpretation = "MONOCHROME2"


def _palette_entries_as_bytes(ds) -> None:
    """Palette LUT Data whose descriptor says 8-bit entries but which hold one 16-bit word an entry
    (PS3.3 C.7.6.3.1.5 notes implementations that did so; pydicom then reads every entry as 0 and the
    image is black): the words' values (or their high bytes, where the low ones are padding) as the
    8-bit entries the descriptor promises."""
    for colour in ("Red", "Green", "Blue"):
        descriptor = ds.get(f"{colour}PaletteColorLookupTableDescriptor")
        data = ds.get(f"{colour}PaletteColorLookupTableData")
        if descriptor is None or data is None or int(descriptor[2]) != 8:
            continue
        entries = int(descriptor[0]) or 2 ** 16
        raw = bytes(data)
        if len(raw) != 2 * entries:
            continue
        words = np.frombuffer(raw, dtype="<u2")
        entries8 = words if int(words.max()) <= 255 else words >> 8
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OB"
        ds[f"{colour}PaletteColorLookupTableData"].value = entries8.astype(np.uint8).tobytes()


def _high_bit_aligned(arr: np.ndarray, ds) -> np.ndarray:
    """Native 16-bit grey pixels stored with their High Bit above Bits Stored - 1 (12 bits in bits 4
    to 15: older scanners' MSB-aligned data, which PS3.5 8.1.1 allows): the stored values shifted
    down into place. pydicom keeps the low Bits Stored bits instead, which is noise there."""
    bits, high = int(ds.get("BitsStored", 0) or 0), int(ds.get("HighBit", 0) or 0)
    if not bits or high <= bits - 1 or high > 15 or int(ds.get("BitsAllocated", 0) or 0) != 16 \
            or int(ds.get("SamplesPerPixel", 1) or 1) != 1 or "PixelData" not in ds:
        return arr
    syntax = ds.file_meta.TransferSyntaxUID
    raw = np.frombuffer(ds.PixelData, dtype=">u2" if syntax == "1.2.840.10008.1.2.2" else "<u2")
    values = ((raw[:arr.size].reshape(arr.shape).astype(np.uint32) >> (high + 1 - bits)) & ((1 << bits) - 1))
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:  # two's complement in `bits` bits
        return np.where(values >= 1 << (bits - 1), values.astype(np.int32) - (1 << bits), values).astype(np.int32)
    return values.astype(np.uint16)


def _set_transfer_syntax(ds) -> None:
    """The File Meta header's transfer syntax of a data set read without one, from the encoding
    pydicom detected (implicit or explicit VR, little or big endian): what pixel decoding needs."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = getattr(ds, "original_encoding", (True, True))
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def _padding(arr: np.ndarray, ds) -> np.ndarray | None:
    """Where the stored values are Pixel Padding (0028,0120), up to Pixel Padding Range Limit
    (0028,0121) when given: the pixels outside a collimated or reconstructed field (PS3.3
    C.7.5.1.1.2). None when the image has no padding value, or no pixel holds it."""
    value = ds.get("PixelPaddingValue")
    if value is None or isinstance(value, (bytes, list)):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if isinstance(limit, int):
        padded = (arr >= min(value, limit)) & (arr <= max(value, limit))
    else:
        padded = arr == value
    return padded if padded.any() else None


def _require_decoder(syntax, name: str) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageError(f"cannot read image {name}: pydicom has no decoder for its transfer syntax {syntax.name} "
                         f"({syntax})") from None
    if not decoder.is_available:
        needs = "; or ".join(decoder.missing_dependencies)
        raise ImageError(f"cannot read image {name}: it is compressed as {syntax.name} ({syntax}) and no decoder for "
                         f"it is installed ({needs})")


def _displayed(arr: np.ndarray, ds, padding: np.ndarray | None = None) -> np.ndarray:
    """Stored values -> [0, 1] as a viewer displays them (before MONOCHROME1's inversion): the
    modality LUT, then the VOI LUT, or else the first window, or else the image's own range, which
    leaves the `padding` pixels out (fo-dicom/fo-dicom#406: they would take the contrast)."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    values = apply_modality_lut(arr, ds)
    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        entries, first, _ = (int(v) for v in lut[0].LUTDescriptor)
        table = apply_voi(np.arange(first, first + (entries or 2 ** 16)), ds, 0)  # the LUT's own output range
        return _scaled(apply_voi(np.rint(values).astype(np.int64), ds, 0), float(table.min()), float(table.max()))
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            low, high = apply_windowing(np.array([-1e300, 1e300]), ds, 0)  # pydicom's output range
            return _scaled(apply_windowing(values, ds, 0), float(low), float(high))
        except ValueError:  # an invalid window (width < 1): shown as the image's range
            pass
    if padding is not None and not padding.all():
        inside = values[~padding]
        return _scaled(values, float(inside.min()), float(inside.max()))
    return _min_max(values.astype(np.float64))


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`low` -> 0 and `high` -> 1, linearly. `low` may exceed `high`: pydicom's window output range
    under a negative rescale slope, where the window's lower side is still `low`."""
    if high == low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values.astype(np.float64) - low) / (high - low)).clip(0, 1).astype(np.float32)
