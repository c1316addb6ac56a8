"""The method registry: name -> class, in training order. Each class declares what the rest of the
project needs to know of it (its name, its --train-<name> default and help, whether it masks,
whether it is fine-tuned, its variant and the settings it ignores: apga/methods/base.py); the
experiment's stages, the floors, the results' and summaries' order and the method tests are derived
from it. Adding a method is one file, one line in REGISTRY and its --train-<name> field in
apga/config.py (a test checks that the two agree)."""
from __future__ import annotations

import torch

from apga.methods.apga import APGA
from apga.methods.base import Method, Phase
from apga.methods.baseline import Baseline
from apga.methods.cutout import Cutout
from apga.methods.end2end import EndToEnd
from apga.methods.gradcam_masking import GradCamMasking
from apga.methods.keep_cutout import KeepCutout
from apga.methods.oracle import Oracle
from apga.methods.random_masks import RandomMasking
from apga.methods.trivial_augment import TrivialAugment
from apga.models import build_agent, build_classifier
from apga.utils import memory_format

# In training order: the random floor comes after APGA and the oracle, whose kept areas it copies.
REGISTRY: tuple[type[Method], ...] = (Baseline, Cutout, TrivialAugment, KeepCutout, GradCamMasking, EndToEnd, APGA,
                                      Oracle, RandomMasking)
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in REGISTRY}

# Each switchable method's --train-<name> setting (the original script's four, the new baselines,
# the ceiling's and the floor's); the methods whose masks get floors and mask-quality columns.
FLAGS = {name: f"train_{name}" for name, cls in METHODS.items() if cls.switch is not None}
MASKING_METHODS = tuple(name for name, cls in METHODS.items() if cls.masks)


def build_method(name: str, config, device: torch.device, classifier_state: dict | None = None, *,
                 load_weights: bool = True, **extra) -> Method:
    """Fresh networks for method `name` on `device`, the classifier from `classifier_state` (the
    baseline's best weights, for fine-tuned methods) when given; `extra` goes to the method.
    Under `--pretrained 1` the networks standardise their input as the ImageNet weights expect, and
    start from those weights where nothing else gives theirs (`load_weights` False: the caller
    loads every network from a checkpoint, as apga.predict does)."""
    cls = METHODS[name]
    from_baseline = cls.fine_tuned and classifier_state is not None
    classifier = build_classifier(config.classifier, config.pretrained, load_weights and not from_baseline)
    if from_baseline:
        classifier.load_state_dict(classifier_state)
    agent = (build_agent(config.agent_width, config.pretrained, config.agent_scale, load_weights)
             if cls.uses_agent else None)
    classifier = classifier.to(device, memory_format=memory_format(config.channels_last))
    agent = agent.to(device, memory_format=memory_format(config.channels_last)) if agent is not None else None
    method = cls(config, classifier, agent, **extra)
    if config.compile:
        for net in (classifier, agent):
            if net is not None:
                net.compile()
    return method


__all__ = ["REGISTRY", "METHODS", "FLAGS", "MASKING_METHODS", "Method", "Phase", "build_method"]
