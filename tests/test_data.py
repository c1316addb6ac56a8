"""Image decoding, the uint8 cache, batches and the run's splits."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from apga.data import CachedImages, cached_array, decode_image, prepare_run_data, to_model_input
from apga.errors import DataError

GREY = (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint8)


def _save(path, mode):
    if mode == "L":
        Image.fromarray(GREY).save(path)
    elif mode == "RGB":
        Image.fromarray(np.stack([GREY] * 3, axis=2)).save(path)
    elif mode == "RGBA":
        Image.fromarray(np.dstack([GREY] * 3 + [np.full_like(GREY, 128)])).save(path)
    elif mode == "LA":
        Image.fromarray(np.dstack([GREY, np.full_like(GREY, 10)]), mode="LA").save(path)
    elif mode == "P":
        Image.fromarray(np.stack([GREY] * 3, axis=2)).convert("P", palette=Image.ADAPTIVE, colors=256).save(path)
    elif mode == "I;16":
        Image.fromarray(GREY.astype(np.uint16) * 257).save(path)  # 16-bit with the same intensities
    return path


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16"])
def test_every_png_mode_decodes_to_the_same_grey(tmp_path, mode):
    expected = decode_image(_save(tmp_path / "ref.png", "L"), 24)
    decoded = decode_image(_save(tmp_path / f"{mode.replace(';', '')}.png", mode), 24)
    assert decoded.shape == (24, 24) and decoded.dtype == np.uint8
    tolerance = 8 if mode == "P" else 1  # a palette quantises
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= tolerance


def test_sixteen_bit_uses_the_full_range(tmp_path):
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "white.png")
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "mid.png")
    assert decode_image(tmp_path / "white.png", 4).min() == 255
    assert abs(int(decode_image(tmp_path / "mid.png", 4)[0, 0]) - 128) <= 1


def test_model_input_is_three_grey_channels_in_unit_range():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    x = to_model_input(images)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 2]) and x.max() == 1 and x.min() == 0
    assert torch.allclose(x[0, 1], torch.tensor([[0, 1.0], [0.2, 0.4]]))


def test_cache_is_reused_and_rebuilt_for_another_size(tmp_path):
    files = [_save(tmp_path / f"{i}.png", "L") for i in range(3)]
    first, ok, *_ = cached_array(files, 16, tmp_path / "cache")
    assert ok.all() and first.shape == (3, 16, 16)
    assert np.array_equal(first[1], decode_image(files[1], 16))
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1
    cached_array(files, 16, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1  # reused
    cached_array(files, 8, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 2  # new size, new cache


def test_truncated_png_stops_or_is_skipped(tmp_path):
    files = [_save(tmp_path / f"{i}.png", "L") for i in range(3)]
    files[1].write_bytes(files[1].read_bytes()[:60])
    with pytest.raises(DataError, match=r"cannot read image .*1\.png.*--skip-bad-images"):
        cached_array(files, 8, tmp_path / "cache")
    array, ok, *_ = cached_array(files, 8, tmp_path / "cache", skip_bad=True)
    assert ok.tolist() == [True, False, True]


def test_batches_come_back_in_file_order_with_positions():
    images = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2)
    dataset = CachedImages(images, rows=np.array([0, 2, 4]), labels=np.array([0, 1, 0]))
    batch = dataset.__getitems__([2, 0])
    assert batch["position"].tolist() == [0, 2] and batch["label"].tolist() == [0, 0]
    assert torch.equal(batch["image"][1], torch.from_numpy(images[4])) and set(batch) == {"image", "label", "position"}


def test_run_data_splits(tiny_config):
    config = tiny_config(body_part="elbow", n_shot=3, model_selection="holdout", holdout_fraction=0.3)
    data = prepare_run_data(config, seed=5)
    assert len(data.train.index) == 6 and data.train.index["label"].sum() == 3
    assert set(data.train.index["body_part"]) == {"elbow"} and set(data.report.index["split"]) == {"valid"}
    assert set(data.select.index["split"]) == {"train"}
    assert not set(data.select.index["patient"]) & set(data.train.index["patient"])
    assert data.truths == ("bone", "finding")
    assert set(data.report.dataset.truths) == set(data.select.dataset.truths) == {"bone", "finding"}
    assert set(data.train.dataset.truths) == {"bone"}  # the oracle trains on the relevance region, never the finding
    again = prepare_run_data(config, seed=5)
    assert again.train.index["path"].tolist() == data.train.index["path"].tolist()


def test_cache_notices_a_file_replaced_with_the_same_size_and_mtime(tmp_path):
    files = [tmp_path / f"{i}.png" for i in range(3)]
    for file in files:
        Image.fromarray(GREY).save(file, compress_level=0)  # uncompressed: the size depends on the shape only
    first, _, *_ = cached_array(files, 16, tmp_path / "cache")
    stat = files[1].stat()
    Image.fromarray(255 - GREY).save(files[1], compress_level=0)
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime back
    assert files[1].stat().st_size == stat.st_size and files[1].stat().st_mtime_ns == stat.st_mtime_ns
    second, _, *_ = cached_array(files, 16, tmp_path / "cache")
    assert np.array_equal(second[1], decode_image(files[1], 16)) and not np.array_equal(second[1], first[1])


def test_cache_rebuilds_a_truncated_entry_with_a_notice(tmp_path, capsys):
    files = [_save(tmp_path / f"{i}.png", "L") for i in range(3)]
    cached_array(files, 16, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.u8")
    entry.write_bytes(entry.read_bytes()[:100])  # a writer killed mid-write, a full disk
    array, ok, *_ = cached_array(files, 16, tmp_path / "cache")
    assert "rebuilding it" in capsys.readouterr().err and ok.all()
    assert np.array_equal(array[2], decode_image(files[2], 16))
    (meta,) = (tmp_path / "cache").glob("*.json")
    meta.write_text("{not json")
    array, _, *_ = cached_array(files, 16, tmp_path / "cache")
    assert "unreadable" in capsys.readouterr().err and np.array_equal(array[0], decode_image(files[0], 16))


def test_cache_key_covers_the_decoding_settings(tmp_path):
    files = [_save(tmp_path / f"{i}.png", "L") for i in range(3)]
    images, _, *_ = cached_array(files, 16, tmp_path / "cache")
    masks, _, *_ = cached_array(files, 16, tmp_path / "cache", masks=True)  # thresholded, not grey
    assert set(np.unique(masks)) <= {0, 1} and np.asarray(images).max() > 1
    files[1].write_bytes(files[1].read_bytes()[:60])
    cached_array(files, 16, tmp_path / "cache", skip_bad=True)  # a cache made while skipping ...
    with pytest.raises(DataError, match="cannot read image"):
        cached_array(files, 16, tmp_path / "cache")  # ... does not skip silently for a run that does not


def test_cache_content_check_alone_catches_a_changed_file(tmp_path, monkeypatch, capsys):
    """Where ctime is not to be trusted (some network file systems), the CRC check still is."""
    from apga.data import cache as data

    monkeypatch.setattr(data, "_cache_key", lambda files, size, masks, bit_depth=None: f"fixed-{size}-{masks}")
    files = [_save(tmp_path / f"{i}.png", "L") for i in range(3)]
    cached_array(files, 16, tmp_path / "cache")
    Image.fromarray(255 - GREY).save(files[2])
    array, _, *_ = cached_array(files, 16, tmp_path / "cache")
    assert "changed since it was cached" in capsys.readouterr().err
    assert np.array_equal(array[2], decode_image(files[2], 16))


def test_cache_rebuilds_an_array_whose_bytes_were_lost(tmp_path, capsys):
    """An array file of the right size whose bytes are zeros (delayed allocation after a power cut)
    is caught by the row checksums when it is opened, and rebuilt."""
    files = [_save(tmp_path / f"{i}.png", "L") for i in range(3)]
    cached_array(files, 16, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.u8")
    entry.write_bytes(bytes(entry.stat().st_size))
    array, ok, *_ = cached_array(files, 16, tmp_path / "cache")
    assert "3 of the 3 rows checked do not match their checksums" in capsys.readouterr().err
    assert np.array_equal(array[1], decode_image(files[1], 16))
    flipped = bytearray(entry.read_bytes())
    flipped[16 * 16 + 5] ^= 1  # one bit of row 1
    entry.write_bytes(bytes(flipped))
    array, _, *_ = cached_array(files, 16, tmp_path / "cache")
    assert "1 of the 3 rows checked do not match their checksums (e.g. row 1" in capsys.readouterr().err
    assert np.array_equal(array[1], decode_image(files[1], 16))


def test_rows_not_checked_on_opening_are_checked_before_they_are_used(tmp_path, monkeypatch):
    """Opening an entry checks a sample of its rows (its cost does not grow with the data); every
    other row is checked when a process first reads it: a damaged one stops the read, and the
    entry is rebuilt by the next command."""
    from apga.data import cache

    monkeypatch.setattr(cache, "CONTENT_CHECKS", 2)  # rows 0 and 3 of 4 are checked on opening
    files = [_save(tmp_path / f"{i}.png", "L") for i in range(4)]
    cached_array(files, 16, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.u8")
    flipped = bytearray(entry.read_bytes())
    flipped[2 * 16 * 16 + 7] ^= 1  # one bit of row 2
    entry.write_bytes(bytes(flipped))
    array, *_ = cached_array(files, 16, tmp_path / "cache")  # opened: the sample is intact
    assert np.array_equal(array[np.array([0, 1, 3])], np.stack([decode_image(files[i], 16) for i in (0, 1, 3)]))
    with pytest.raises(DataError, match=r"image cache .*\.u8 is damaged: row 2 does not match its checksum"):
        array[np.array([1, 2])]
    with pytest.raises(DataError, match="row 2"):
        np.asarray(array)
    rebuilt, *_ = cached_array(files, 16, tmp_path / "cache")
    assert np.array_equal(rebuilt[2], decode_image(files[2], 16))


def test_cache_key_covers_the_decoder_settings(tmp_path, monkeypatch):
    from apga.data import cache

    files = [_save(tmp_path / f"{i}.png", "L") for i in range(2)]
    cached_array(files, 16, tmp_path / "cache")
    settings = cache.decoder_settings()
    monkeypatch.setattr(cache, "decoder_settings", lambda: {**settings, "pydicom": "another version"})
    cached_array(files, 16, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 2


def test_an_unwritable_cache_folder_is_one_line(tmp_path):
    from apga.errors import StorageError

    files = [_save(tmp_path / f"{i}.png", "L") for i in range(2)]
    (tmp_path / "blocker").write_text("a file where the cache folder should be")
    with pytest.raises(StorageError, match=r"cannot write .*blocker.*choose a writable folder"):
        cached_array(files, 16, tmp_path / "blocker" / "cache")


def test_an_unreadable_image_is_named_with_its_reason(tmp_path):
    files = [_save(tmp_path / f"{i}.png", "L") for i in range(3)]
    files[2].write_bytes(b"not an image at all")
    with pytest.raises(DataError) as error:
        cached_array(files, 8, tmp_path / "cache")
    assert str(error.value).startswith(f"cannot read image {files[2]}: it is truncated, corrupted or not an image")
    assert "--skip-bad-images 1" in str(error.value) and "(1 unreadable in all)" in str(error.value)


def test_k_shot_takes_only_readable_training_images_outside_the_held_out_patients(tiny_config, tmp_path):
    """k-shot draws from what remains after unreadable images are skipped and selection patients are
    held out; the reported split stays whole (the paper: the validation set is not subsampled)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_config().data_root, root)
    config = tiny_config(data_root=str(root), body_part="elbow", model_selection="holdout", holdout_fraction=0.3,
                         skip_bad_images=True)
    whole = prepare_run_data(config, seed=2)
    broken = whole.train.index["path"].iloc[0]
    (root / broken).write_bytes(b"not a png")
    for k in (2, 4):
        data = prepare_run_data(tiny_config(**{**vars(config), "n_shot": k}), seed=2)
        paths = set(data.train.index["path"])
        assert len(paths) == 2 * k and broken not in paths
        assert not set(data.train.index["patient"]) & set(data.select.index["patient"])
        assert len(data.report.index) == len(whole.report.index)


def test_colour_goes_to_luma_and_resizing_averages(tmp_path):
    """8-bit colour decodes to ITU-R 601 luma; downscaling averages (bilinear), it does not pick pixels."""
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    assert np.abs(decode_image(tmp_path / "colour.png", 8).astype(int) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)).max() <= 1
    stripes = np.zeros((64, 64), dtype=np.uint8)
    stripes[:, ::2] = 255
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    halved = decode_image(tmp_path / "stripes.png", 32)
    assert halved.min() > 64 and halved.max() < 192 and np.abs(halved[4:-4, 4:-4].astype(int) - 128).max() <= 1
