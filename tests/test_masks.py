"""Mask semantics and the batched box sampler."""
from __future__ import annotations

import math

import pytest
import torch

from apga.methods.masks import adversarial_images, cutout_masks, greedy_action, kept_images, random_boxes


def test_adversarial_zeroes_exactly_the_marked_pixels_and_kept_keeps_them():
    images = torch.rand(2, 3, 5, 5) + 0.1
    marked = (torch.rand(2, 1, 5, 5) > 0.5).float()
    adversarial, kept = adversarial_images(images, marked), kept_images(images, marked)
    on = marked.expand_as(images).bool()
    assert torch.all(adversarial[on] == 0) and torch.equal(adversarial[~on], images[~on])
    assert torch.all(kept[~on] == 0) and torch.equal(kept[on], images[on])
    assert torch.equal(adversarial + kept, images)


def test_greedy_action_thresholds_at_one_half():
    p = torch.tensor([0.2, 0.5, 0.51, 0.9])
    assert greedy_action(p).tolist() == [0, 0, 1, 1]


def _reference_box(h, w, fraction, log_ratio, u_top, u_left):
    """The obvious per-image computation of one box."""
    area = fraction * h * w
    bh = min(max(round(math.sqrt(area * math.exp(log_ratio))), 0), h)
    bw = min(max(round(math.sqrt(area / math.exp(log_ratio))), 0), w)
    top, left = math.floor((h - bh + 1) * u_top), math.floor((w - bw + 1) * u_left)
    mask = torch.zeros(1, h, w)
    mask[:, top:top + bh, left:left + bw] = 1
    return mask


def test_batched_boxes_equal_a_per_image_reference():
    h, w, b = 20, 30, 16
    generator = torch.Generator().manual_seed(0)
    boxes = random_boxes(b, h, w, area=(0.02, 0.33), ratio=(0.3, 1 / 0.3), generator=generator, device="cpu")
    draws = torch.Generator().manual_seed(0)
    fraction = 0.02 + 0.31 * torch.rand(b, generator=draws)
    log_ratio = math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * torch.rand(b, generator=draws)
    u_top, u_left = torch.rand(b, generator=draws), torch.rand(b, generator=draws)
    for i in range(b):
        reference = _reference_box(h, w, fraction[i].item(), log_ratio[i].item(), u_top[i].item(), u_left[i].item())
        # float32 vs float64 rounding can move an edge by one pixel in rare cases
        assert (boxes[i] != reference).float().sum() <= max(h, w)


def test_cutout_boxes_differ_per_image_and_respect_the_area():
    images = torch.rand(32, 3, 40, 40)
    masks = cutout_masks(images, torch.Generator().manual_seed(1))
    area = masks.flatten(1).mean(1)
    assert masks.shape == (32, 1, 40, 40)
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) > 20
    assert area.min() > 0.005 and area.max() < 0.4
    again = cutout_masks(images, torch.Generator().manual_seed(1))
    assert torch.equal(masks, again)


@pytest.mark.parametrize("fill", ["zero", "mean", "blur"])
def test_blanked_pixels_take_the_fill_in_adversarial_and_kept_images(fill):
    from apga.methods.masks import fill_values

    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16) + 0.1
    marked = (torch.rand(2, 1, 16, 16) > 0.5).float()
    values = torch.as_tensor(fill_values(images, fill)).expand_as(images)
    on = marked.expand_as(images).bool()
    adversarial, kept = adversarial_images(images, marked, fill), kept_images(images, marked, fill)
    assert torch.allclose(adversarial[on], values[on]) and torch.equal(adversarial[~on], images[~on])
    assert torch.allclose(kept[~on], values[~on]) and torch.equal(kept[on], images[on])
    if fill == "mean":
        assert torch.allclose(values[0], images[0].mean().expand(3, 16, 16))
    if fill == "blur":  # a blurred copy: smoother than the image, same mean brightness
        assert values.diff(dim=-1).abs().mean() < 0.5 * images.diff(dim=-1).abs().mean()
        assert abs(values.mean() - images.mean()) < 0.02


@pytest.mark.parametrize("fill", ["zero", "mean", "blur"])
def test_several_masks_per_image_blank_copies_of_the_batch(fill):
    """(r B) masks give the r copies of the batch, each blanked by its own block of masks."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=generator)
    marked = (torch.rand(2 * 3, 1, 16, 16, generator=generator) > 0.5).float()
    together = adversarial_images(images, marked, fill)
    one_by_one = torch.cat([adversarial_images(images, marked[k * 3:(k + 1) * 3], fill) for k in range(2)])
    assert together.shape == (6, 3, 16, 16) and torch.allclose(together, one_by_one)
    with pytest.raises(ValueError, match="multiple of the batch size"):
        adversarial_images(images, marked[:4], fill)


@pytest.mark.parametrize("fill", ["zero", "mean", "blur"])
def test_swapped_background_keeps_the_region_on_another_images_background(fill):
    from apga.methods.masks import donor_indices, fill_values, swapped_background_images

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(7, 3, 8, 8, generator=generator) + 0.1
    keep = (torch.rand(7, 1, 8, 8, generator=generator) > 0.6).float()
    donors = donor_indices(7, torch.Generator().manual_seed(1))
    assert sorted(donors.tolist()) == list(range(7)) and not (donors == torch.arange(7)).any()
    # one cycle through the batch: following donors from image 0 visits every image
    seen, i = set(), 0
    for _ in range(7):
        seen.add(i)
        i = donors[i].item()
    assert seen == set(range(7))
    swapped = swapped_background_images(images, keep, donors, fill)
    values = torch.as_tensor(fill_values(images, fill)).expand_as(images)
    for i, d in enumerate(donors.tolist()):  # the obvious per-image reference
        own, donor_background = keep[i].bool().expand(3, 8, 8), (~keep[d].bool()).expand(3, 8, 8)
        assert torch.equal(swapped[i][own], images[i][own])
        outside = ~own & donor_background
        assert outside.any() and torch.equal(swapped[i][outside], images[d][outside])
        rest = ~own & ~donor_background  # the donor's kept region is never pasted: the donor's fill
        assert torch.allclose(swapped[i][rest], values[d][rest])
    single = swapped_background_images(images[:1], keep[:1], donor_indices(1), fill)
    assert torch.equal(single, kept_images(images[:1], keep[:1], fill))
