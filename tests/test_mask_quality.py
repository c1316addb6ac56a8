"""The mask-quality measures, the occlusion map and the floors, on hand-made cases."""
from __future__ import annotations

import math

import pytest
import torch
from captum.attr import Occlusion
from sklearn.metrics import roc_auc_score
from torch import nn

from apga.evaluation.floors import Floor, random_box_maps
from apga.evaluation.mask_quality import (MapQuality, location_gap, location_gaps, other_patient_partners, pixel_auroc,
                                         pointing_hit, region_cover, region_precision)
from apga.methods.masks import top_fraction
from apga.evaluation.occlusion import occlusion_map


class BrightLeft(nn.Module):
    """A classifier whose 'abnormal' logit is 20 x the mean of the left quarter of the image:
    blanking that quarter (labels 1) raises the loss, blanking anything else does nothing."""

    def forward(self, images):
        score = 20 * images[:, 0, :, : images.shape[-1] // 4].mean((1, 2))
        return torch.stack([torch.zeros_like(score), score - 5], dim=1)


def _mask(rows, cols, size=8):
    mask = torch.zeros(1, 1, size, size)
    mask[..., rows, cols] = 1
    return mask


def test_precision_and_cover_count_the_top_region_not_its_complement():
    top = _mask(slice(0, 2), slice(0, 4))  # 8 pixels
    region = _mask(slice(0, 8), slice(0, 2))  # 16 pixels, 4 of them in `top`
    assert region_precision(top, region).item() == pytest.approx(4 / 8)
    assert region_cover(top, region).item() == pytest.approx(4 / 16)
    assert math.isnan(region_cover(top, torch.zeros_like(region)).item())  # no finding: undefined


def test_pointing_hit_shares_ties_so_a_constant_map_does_not_hit():
    region = _mask(slice(0, 2), slice(0, 2))  # 4 of 64 pixels
    peak = torch.zeros(1, 1, 8, 8)
    peak[..., 1, 1] = 1.0
    assert pointing_hit(peak, region).item() == 1.0
    peak[..., 1, 1], peak[..., 5, 5] = 0.0, 1.0
    assert pointing_hit(peak, region).item() == 0.0
    assert pointing_hit(torch.full((1, 1, 8, 8), 0.5), region).item() == pytest.approx(4 / 64)


def test_pixel_auroc_equals_sklearn_with_ties():
    generator = torch.Generator().manual_seed(0)
    maps = (torch.rand(3, 1, 6, 7, generator=generator) * 4).round() / 4  # many ties
    region = torch.rand(3, 1, 6, 7, generator=generator) > 0.6
    ours = pixel_auroc(maps, region.float())
    for i in range(3):
        expected = roc_auc_score(region[i].flatten().numpy(), maps[i].flatten().numpy())
        assert ours[i].item() == pytest.approx(expected, abs=1e-6)
    assert pixel_auroc(torch.full((1, 1, 4, 4), 0.3), region[:1, :, :4, :4].float()).item() == pytest.approx(0.5)
    assert math.isnan(pixel_auroc(maps[:1], torch.zeros(1, 1, 6, 7)).item())


def test_top_fraction_takes_the_highest_and_breaks_ties_at_random():
    maps = torch.arange(100.0).view(1, 1, 10, 10)
    top = top_fraction(maps, 0.1)
    assert top.sum() == 10 and top.view(-1)[-10:].sum() == 10
    flat = torch.zeros(2, 1, 10, 10)
    a, b = top_fraction(flat, 0.3, torch.Generator().manual_seed(1)), top_fraction(flat, 0.3, torch.Generator().manual_seed(2))
    assert a.flatten(1).sum(1).tolist() == [30, 30] and not torch.equal(a, b)
    assert a[:, :, :3].sum() < 30  # not simply the first rows


def test_location_gap_is_zero_for_an_image_independent_place_and_positive_where_it_matters():
    images = torch.full((4, 3, 16, 16), 0.5)
    labels = torch.ones(4, dtype=torch.long)
    classifier = BrightLeft()
    left = torch.zeros(4, 1, 16, 16)
    left[..., :, :4] = 1  # the quarter the classifier reads
    assert (location_gap(classifier, images, labels, left) > 1).all()
    middle = torch.zeros(4, 1, 16, 16)
    middle[..., 4:12, 4:8] = 1  # rolled by half the image (to columns 12-15) it stays outside the left quarter too
    assert torch.allclose(location_gap(classifier, images, labels, middle), torch.zeros(4))


def test_occlusion_map_finds_the_cells_the_classifier_reads_and_equals_captum():
    torch.manual_seed(0)
    images, labels = torch.rand(3, 3, 16, 16), torch.tensor([1, 0, 1])
    classifier = BrightLeft()
    ours = occlusion_map(classifier, images, labels, cell=4, max_batch=5)  # (3, 1, 4, 4)
    assert ours.shape == (3, 1, 4, 4)
    assert (ours[[0, 2], :, :, 0] > 0).all() and (ours[1, :, :, 0] < 0).all()  # only the left column matters
    assert torch.allclose(ours[..., 1:], torch.zeros(3, 1, 4, 3), atol=1e-6)

    def negative_loss(x):
        return -torch.nn.functional.cross_entropy(classifier(x), labels, reduction="none")
    reference = Occlusion(negative_loss).attribute(images, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4),
                                                           baselines=0)  # (3, 3, 16, 16), per pixel
    upsampled = torch.nn.functional.interpolate(ours, size=(16, 16), mode="nearest")
    torch.testing.assert_close(upsampled[:, 0], reference[:, 0], atol=1e-5, rtol=1e-5)


def test_map_quality_summary_on_a_known_batch():
    images = torch.full((2, 3, 16, 16), 0.5)
    labels = torch.tensor([1, 1])
    bone = torch.zeros(2, 1, 16, 16)
    bone[..., :, :8] = 1  # the left half is bone
    finding = torch.zeros(2, 1, 16, 16)
    finding[0, :, 0:4, 0:4] = 1  # image 0 has a finding; image 1 has none
    maps = torch.zeros(2, 1, 16, 16)
    maps[..., :, :4] = 0.9  # the left quarter: 64 pixels, inside the bone
    maps[..., :, 8:12] = 0.5  # the third quarter: outside it
    maps[0, :, 0:4, 0:4] = 1.0  # image 0's maximum is its finding
    quality = MapQuality()
    quality.add(BrightLeft(), images, labels, maps, policy_area=torch.tensor([0.25, 0.25]), bone=bone, finding=finding)
    summary = quality.summary()
    # top 30 % = 77 pixels: the 64 of the left quarter (bone), then 13 of the third quarter (not bone)
    assert summary["bone_precision_10"] == 1.0 and summary["bone_precision_30"] == pytest.approx(64 / 77)
    assert summary["pointing_hit"] == 1.0 and summary["finding_cover_10"] == 1.0  # only image 0 has a finding
    # bone pixels: 64 at 0.9 beat every non-bone one; 64 at 0 lose to 0.5 and tie with 0
    assert summary["bone_auroc"] == pytest.approx((64 * 128 + 0.5 * 64 * 64) / (128 * 128))
    # the top 10 % (26 of the left quarter's 64 pixels) blanked, against the same pixels rolled out of it
    expected_gap = math.log1p(math.exp(-(20 * 0.5 * 38 / 64 - 5))) - math.log1p(math.exp(-5))
    assert summary["location_gap_10"] == pytest.approx(expected_gap, rel=1e-4)
    # both masks lie in the left quarter: the other image's mask hurts as much (a place, not this image)
    assert summary["swap_gap_10"] == pytest.approx(0.0, abs=1e-6)
    # image 0's finding (16 pixels) is its map's maximum: AUROC 1; image 1 has none
    assert summary["finding_auroc"] == 1.0
    assert summary["mask_sd"] == pytest.approx(16 * 0.05 / 256, rel=1e-5)  # 16 pixels differ (1.0 vs 0.9): sd 0.05
    assert summary["collapsed"] == 0.0 and summary["policy_area"] == pytest.approx(0.25)
    collapsed = MapQuality()
    collapsed.add(BrightLeft(), images, labels, maps, policy_area=torch.tensor([0.995, 1.0]))
    assert collapsed.summary()["collapsed"] == 1.0 and math.isnan(collapsed.summary()["bone_precision_10"])


class CellReader(nn.Module):
    """'Abnormal' score = sum of the first channel weighted by a distinct weight per 2 x 2 cell."""

    def __init__(self):
        super().__init__()
        cells = torch.randperm(64, generator=torch.Generator().manual_seed(0)).float().view(1, 1, 8, 8) + 1
        self.weights = torch.nn.functional.interpolate(cells, size=(16, 16), mode="nearest")[0, 0] / 200

    def forward(self, images):
        score = (images[:, 0] * self.weights).flatten(1).sum(1) - 10
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_occlusion_agreement_is_high_for_the_classifiers_own_ranking_and_zero_for_its_reverse():
    reader = CellReader()
    images, labels = torch.full((3, 3, 16, 16), 0.5), torch.ones(3, dtype=torch.long)
    scores = {}
    for name, maps in (("aligned", reader.weights), ("reversed", -reader.weights)):
        quality = MapQuality()
        quality.add(reader, images, labels, maps.expand(3, 1, 16, 16), policy_area=torch.full((3,), 0.1))
        scores[name] = quality.summary()["occlusion_agreement_10"]
    # the top 10 % (26 pixels) of both maps are the top 6 cells (24 pixels) and 2 pixels of the 7th
    assert scores["aligned"] >= 24 / 26 and scores["reversed"] == 0.0


def test_random_box_floor_is_a_box_of_the_asked_area_and_brightest_ranks_intensity():
    maps = random_box_maps(16, 32, 32, torch.Generator().manual_seed(0), "cpu")
    boxes = top_fraction(maps, 0.1, torch.Generator().manual_seed(0))
    for box in boxes[:, 0]:
        rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert box.sum() == round(0.1 * 32 * 32) and box.sum() >= 0.85 * height * width  # (nearly) filled box
    images = torch.rand(2, 3, 8, 8)
    floor = Floor("brightest", classifier=None)
    assert torch.equal(top_fraction(floor.mask_probabilities(images), 0.25).bool(),
                       top_fraction(images[:, :1], 0.25).bool())


@pytest.mark.parametrize("area, collapsed", [(0.015, 1.0), (0.025, 0.0), (0.5, 0.0), (0.975, 0.0), (0.985, 1.0)])
def test_collapse_is_a_policy_area_outside_two_and_ninety_eight_percent(area, collapsed):
    quality = MapQuality()
    maps = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    quality.add(BrightLeft(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), maps, policy_area=torch.full((2,), area))
    assert quality.summary()["collapsed"] == collapsed


def test_swap_partners_are_the_nearest_earlier_image_of_another_patient():
    partners, has = other_patient_partners(torch.tensor([7, 7, 3, 3, 5]))
    assert partners.tolist() == [4, 4, 1, 1, 3] and has.all()
    partners, has = other_patient_partners(torch.tensor([2, 2, 2]))
    assert not has.any() and partners.tolist() == [0, 1, 2]


class BrightPatchReader(nn.Module):
    """'Abnormal' score: how much of the image is brighter than 0.75 (its patch)."""

    def forward(self, images):
        score = (images[:, 0] > 0.75).flatten(1).float().sum(1) / 4 - 2
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_the_swap_gap_pairs_images_across_patients():
    """Two views per patient with the patient's patch in the same place: a partner of the same
    patient would blank the same place (gap 0); another patient's mask blanks elsewhere."""
    patients = torch.tensor([0, 0, 1, 1])
    images = torch.full((4, 3, 16, 16), 0.5)
    masks = torch.zeros(4, 1, 16, 16)
    for i, patient in enumerate(patients.tolist()):
        rows = slice(2, 6) if patient == 0 else slice(10, 14)
        images[i, :, rows, 2:6] = 1.0
        masks[i, :, rows, 2:6] = 1.0
    labels = torch.ones(4, dtype=torch.long)
    _, across = location_gaps(BrightPatchReader(), images, labels, masks, patients=patients)
    assert (across > 1).all()  # blanking its own patch hurts; another patient's place does not
    _, by_position = location_gaps(BrightPatchReader(), images, labels, masks)  # each image its own patient
    assert by_position[[1, 3]].abs().max() < 1e-6  # the previous image is the same patient's view
    _, alone = location_gaps(BrightPatchReader(), images[:2], labels[:2], masks[:2], patients=patients[:2])
    assert torch.isnan(alone).all()  # one patient in the batch: no partner
