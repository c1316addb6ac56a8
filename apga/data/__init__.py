"""Data: decoding image files, the image cache, MURA's index, CSV tasks, the generated data set,
and the splits and batches of a run."""
from apga.data.batches import CachedImages, make_loader, to_model_input
from apga.data.cache import cached_array
from apga.data.decode import decode_image, decode_mask
from apga.data.splits import RunData, Split, data_fingerprint, data_source, load_index, prepare_run_data

__all__ = ["CachedImages", "RunData", "Split", "cached_array", "data_fingerprint", "data_source", "decode_image",
           "decode_mask", "load_index", "make_loader", "prepare_run_data", "to_model_input"]
