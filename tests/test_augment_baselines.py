"""The two baselines a reviewer asks for first: TrivialAugment (batched, the same images as
torchvision's TrivialAugmentWide on the same draws) and KeepCutout (Cutout's boxes, placed where they
cover no more of the classifier's saliency than the median place)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from torchvision.transforms.v2 import TrivialAugmentWide

from apga.methods import FLAGS, MASKING_METHODS, METHODS
from apga.methods import keep_cutout as kc
from apga.methods import trivial_augment as ta
from apga.methods.masks import cutout_masks

TORCHVISION_NAMES = {"identity": "Identity", "shear_x": "ShearX", "shear_y": "ShearY", "translate_x": "TranslateX",
                     "translate_y": "TranslateY", "rotate": "Rotate", "brightness": "Brightness", "color": "Color",
                     "contrast": "Contrast", "sharpness": "Sharpness", "posterize": "Posterize",
                     "solarize": "Solarize", "autocontrast": "AutoContrast", "equalize": "Equalize"}


def _radiographs(count: int, side: int = 40, seed: int = 0) -> torch.Tensor:
    """Grey images as the loader gives them: uint8 values / 255 in 3 equal channels, of varied contrast."""
    generator = torch.Generator().manual_seed(seed)
    grey = torch.randint(0, 256, (count, 1, side, side), generator=generator).float().div(255)
    scale = torch.rand(count, 1, 1, 1, generator=generator) * 0.8 + 0.2
    return (grey * scale).mul(255).round().div(255).expand(-1, 3, -1, -1).contiguous()


def test_trivial_augments_space_and_draws_are_torchvisions():
    torchvision_space = TrivialAugmentWide._AUGMENTATION_SPACE
    assert [TORCHVISION_NAMES[name] for name in ta.OPERATIONS] == list(torchvision_space)
    table = ta.magnitude_table()
    for row, name in enumerate(ta.OPERATIONS):
        magnitudes, signed = torchvision_space[TORCHVISION_NAMES[name]]
        expected = magnitudes(ta.BINS, 64, 64)
        assert torch.equal(table[row], torch.zeros(ta.BINS, dtype=torch.float64) if expected is None
                           else expected.double()), name
        assert (name in ta.SIGNED) == signed, name
    operation, magnitude = ta.draw(14_000, torch.Generator().manual_seed(0), "cpu")
    counts = torch.bincount(operation, minlength=len(ta.OPERATIONS))
    assert counts.min() > 850 and counts.max() < 1150  # uniform over the 14 operations
    for row, name in enumerate(ta.OPERATIONS):
        drawn = magnitude[operation == row]
        assert torch.isin(drawn.abs(), table[row]).all(), name
        assert (drawn < 0).any() == (name in ta.SIGNED and name != "identity"), name


def test_trivial_augment_gives_torchvisions_images_on_the_same_draws():
    """Every image of a batch through its own draw equals torchvision's kernel on that image with
    that draw, for every operation at the strength bins that differ in kind (none, the smallest, middle
    ones, 90 degrees of rotation, where torchvision takes a fast path, the largest), both signs; then a
    batch of mixed draws."""
    colour = torch.randint(0, 256, (3, 3, 40, 40), generator=torch.Generator().manual_seed(9)).float().div(255)
    images = torch.cat([_radiographs(6), colour])  # grey as the data is, and colour, where the channel weights show
    reference = TrivialAugmentWide()
    table = ta.magnitude_table()
    for row, name in enumerate(ta.OPERATIONS):
        for bin_ in (0, 1, 9, 15, 20, 29, 30):
            for sign in ((1, -1) if name in ta.SIGNED else (1,)):
                operation = torch.full((len(images),), row)
                magnitude = torch.full((len(images),), float(table[row, bin_]) * sign, dtype=torch.float64)
                ours = ta.photometric(ta.geometric(images, operation, magnitude), operation, magnitude)
                theirs = torch.stack([reference._apply_image_or_video_transform(
                    image, TORCHVISION_NAMES[name], float(magnitude[0]), reference.interpolation, {})
                    for image in images])
                assert (ours - theirs).abs().max() <= 2e-7, (name, bin_, sign)
    mixed = _radiographs(64, seed=1)
    generator = torch.Generator().manual_seed(5)
    operation, magnitude = ta.draw(len(mixed), torch.Generator().manual_seed(5), "cpu")
    ours = ta.trivial_augment(mixed, generator)  # one batch, a different draw per image
    for i in range(len(mixed)):
        theirs = reference._apply_image_or_video_transform(mixed[i], TORCHVISION_NAMES[ta.OPERATIONS[operation[i]]],
                                                           float(magnitude[i]), reference.interpolation, {})
        assert (ours[i] - theirs).abs().max() <= 2e-7, (i, ta.OPERATIONS[operation[i]])
    assert len(set(operation.tolist())) >= 12


def test_box_scores_are_the_share_of_saliency_each_place_covers():
    generator = torch.Generator().manual_seed(0)
    saliency = torch.rand(3, 1, 9, 11, generator=generator)
    box_h, box_w = torch.tensor([2.0, 9.0, 4.0]), torch.tensor([3.0, 1.0, 11.0])
    scores = kc.box_scores(saliency, box_h, box_w)
    for b in range(3):
        h, w = int(box_h[b]), int(box_w[b])
        for top in range(9):
            for left in range(11):
                if top + h > 9 or left + w > 11:
                    assert torch.isnan(scores[b, top, left])
                else:
                    share = saliency[b, 0, top:top + h, left:left + w].sum() / saliency[b, 0].sum()
                    assert torch.isclose(scores[b, top, left], share, atol=1e-5)


def test_keep_cutout_cuts_cutouts_boxes_where_little_saliency_is():
    side, count = 32, 64
    saliency = torch.zeros(count, 1, side, side)
    saliency[:, :, 4:14, 6:20] = 1.0  # the salient region
    saliency[:, :, 20:, 20:] = 0.05
    erased = kc.keep_cutout_masks(saliency, torch.Generator().manual_seed(3))
    cutout = cutout_masks(torch.zeros(count, 3, side, side), torch.Generator().manual_seed(3))
    assert torch.equal(erased.flatten(1).sum(1), cutout.flatten(1).sum(1))  # Cutout's box sizes, draw for draw
    covered = (erased * saliency).flatten(1).sum(1) / saliency.flatten(1).sum(1)
    for i in range(count):  # at most the median place's share, brute force
        rows, cols = erased[i, 0].nonzero(as_tuple=True)
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        shares = torch.stack([saliency[i, 0, t:t + h, l:l + w].sum() for t in range(side - h + 1)
                              for l in range(side - w + 1)]) / saliency[i].sum()
        assert covered[i] <= torch.quantile(shares, kc.KEEP_QUANTILE) + 1e-6
    assert covered.mean() < (cutout * saliency).flatten(1).sum(1).div(saliency.flatten(1).sum(1)).mean()
    places = {tuple(erased[i, 0].nonzero()[0].tolist()) for i in range(count)}
    assert len(places) > count // 2  # placed at random among the allowed places, not at one


def test_keep_cutout_takes_the_saliency_of_the_classifier_it_trains(tiny_config, monkeypatch):
    from apga.models import build_classifier

    config = tiny_config()
    method = METHODS["keepcutout"](config, build_classifier(config.classifier))
    method.generator = torch.Generator().manual_seed(0)
    seen = []

    def saliency(model, images, layer, targets=None):
        seen.append((model, targets))
        maps = torch.rand(len(images), 1, *images.shape[-2:])
        maps[0] = 0  # one flat map
        return maps

    monkeypatch.setattr(kc, "grad_cam", saliency)
    batch = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 1, 1])}
    phases = list(method.phases(batch))
    assert [p.networks for p in phases] == [("classifier",), ("classifier",)]
    assert seen[0][0] is method.classifier and torch.equal(seen[0][1], batch["label"])  # the label's saliency
    assert set(phases[1].logs) == {"cutout_loss", "flat_saliency"} and phases[1].logs["flat_saliency"] == 0.25


@pytest.mark.parametrize("name", ["trivialaugment", "keepcutout"])
def test_the_new_baselines_are_switched_off_by_default_and_fine_tuned(name):
    from apga.config import defaults, field_help

    cls = METHODS[name]
    assert FLAGS[name] == f"train_{name}" and defaults()[FLAGS[name]] == 0 == cls.switch
    assert cls.fine_tuned and not cls.masks and name not in MASKING_METHODS and cls.about in field_help()[FLAGS[name]]


def test_every_method_switch_in_the_config_is_the_registrys(tiny_config):
    from apga.config import defaults, field_help

    switches = {name[len("train_"):] for name in defaults() if name.startswith("train_")}
    assert switches == {name for name, cls in METHODS.items() if cls.switch is not None}
    for name in switches:
        assert defaults()[f"train_{name}"] == METHODS[name].switch and METHODS[name].about in field_help()[f"train_{name}"]


def test_both_run_from_the_baseline_into_results_and_the_summary(tiny_config, capsys):
    from apga.experiment import run
    from apga.reporting.summary import SUMMARY_FILE

    config = tiny_config(train_cutout=0, train_apga=0, train_gradcam=0, train_end2end=0, train_random=0,
                         train_trivialaugment=1, train_keepcutout=1, gallery="off")
    run(config)
    table = pd.read_csv(f"{config.out_dir}/results.csv")
    assert sorted(table["method"]) == ["baseline", "keepcutout", "trivialaugment"]
    assert table["accuracy"].between(0, 1).all()
    digests = table.set_index("method")["baseline_digest"]
    assert digests.drop("baseline").notna().all() and digests.drop("baseline").str.len().gt(8).all()  # fine-tuned
    assert (table.set_index("method")["baseline_digest"].drop("baseline").nunique() == 1)
    summary = open(f"{config.out_dir}/{SUMMARY_FILE}").read()
    assert "| trivialaugment |" in summary and "| keepcutout |" in summary


def test_trivial_augment_is_one_run_whatever_the_fill_and_keep_cutout_is_not():
    from apga.config import make_config

    blurred = make_config(preset="cpu", fill="blur")
    trivial = METHODS["trivialaugment"](blurred, None)
    assert trivial.variant == "" and "fill" in trivial.ignored_settings()  # it blanks nothing
    keep = METHODS["keepcutout"](blurred, None)
    assert keep.variant == "blurfill" and "fill" not in keep.ignored_settings()  # its box is the fill
