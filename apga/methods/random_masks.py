"""The random-mask floor: keep one random box per image, of a given area.

If masking anything at all helps, this method shows it; gains of a masking method over it are
gains of *where* it masks. Its area (`--floor-area`) is APGA's (the default: APGA's mean kept area
on the selection split at its selected checkpoint, for the same seed and APGA variant; 0.5 when
APGA has not run; the variant is then APGA's), the oracle's (the mean area of the training
images' ground-truth masks: the floor of the ceiling), or a number. The experiment passes it in;
it is part of the run's identity (`inputs`).
"""
from __future__ import annotations

import torch

from apga.methods.masks import no_policy_area, random_boxes
from apga.methods.apga import apga_variant
from apga.methods.base import Method, variant_name
from apga.utils import derive_seed

DEFAULT_KEEP_AREA = 0.5


class RandomMasking(Method):
    name = "random"
    switch = 1
    about = "the random-box floor of --floor-area"
    masks = True

    def __init__(self, config, classifier, agent=None, keep_area: float = DEFAULT_KEEP_AREA):
        super().__init__(config, classifier, agent)
        self.keep_area = float(keep_area)

    @property
    def variant(self) -> str:
        if self.config.floor_area == "apga":
            return apga_variant(self.config)
        area = "oraclearea" if self.config.floor_area == "oracle" else f"area{float(self.config.floor_area):g}"
        return "-".join(part for part in (area, variant_name(self.config, kept_step=True, clean_step=True)) if part)

    def inputs(self) -> dict:
        return {"keep_area": self.keep_area}

    def phases(self, batch):
        images, labels = batch["image"], batch["label"]
        yield from self.clean_phase(batch)
        yield self.kept_region_phase(images, labels, self._boxes(images, self.generator))

    def _boxes(self, images, generator):
        b, _, h, w = images.shape
        area = torch.full((b,), self.keep_area, device=images.device)
        return random_boxes(b, h, w, area=area, ratio=(0.5, 2.0), generator=generator, device=images.device)

    def mask_probabilities(self, images, truths=None):
        # Evaluation masks are a fixed function of the batch size, so every evaluation agrees.
        generator = torch.Generator(images.device).manual_seed(derive_seed("random-eval", len(images)))
        return self._boxes(images, generator)

    policy_area = staticmethod(no_policy_area)  # its boxes are given: "collapsed" does not apply

    def state_dict(self):
        return {"keep_area": self.keep_area}

    def load_state_dict(self, state):
        self.keep_area = float(state.get("keep_area", self.keep_area))
