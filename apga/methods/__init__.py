"""The method registry: name -> class. Adding a method is one file plus one line here."""
from apga.methods.apga import APGA
from apga.methods.base import Method, Phase
from apga.methods.baseline import Baseline
from apga.methods.cutout import Cutout
from apga.methods.end2end import EndToEnd
from apga.methods.gradcam_masking import GradCamMasking
from apga.methods.random_masks import RandomMasking

# In training order: the random floor comes after APGA, whose kept area it copies.
METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Baseline, Cutout, GradCamMasking, EndToEnd, APGA, RandomMasking)
}

# The original script's switches, and the floor's.
FLAGS = {"cutout": "train_cutout", "gradcam": "train_gradcam", "end2end": "train_end2end",
         "apga": "train_apga", "random": "train_random"}

__all__ = ["METHODS", "FLAGS", "Method", "Phase"]
