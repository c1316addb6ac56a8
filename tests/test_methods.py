"""Every registered method runs real steps on generated data and changes what it must."""
from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from apga.training.checkpoint import save_checkpoint
from apga.config import make_config
from apga.data import make_loader, prepare_run_data
from apga.methods.masks import kept_images
from apga.methods import METHODS
from apga.models import build_agent, build_classifier
from apga.experiment import build_method
from apga.training.loop import Precision, Stage, make_optimizers, model_batch, run_step, train_one_epoch



def _untrained_baseline(config, tmp_path) -> Path:
    """A baseline checkpoint for the fine-tuned methods to start from."""
    path = tmp_path / "baseline.pt"
    save_checkpoint(path, {"classifier": build_classifier(config.classifier).state_dict()})
    return path


def _changed(before: dict, net) -> bool:
    return any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", list(METHODS))
def test_method_runs_real_steps(name, tiny_config, tmp_path):
    config = tiny_config(body_part="elbow", finetune_lr=1e-2, agent_lr=1e-2, lr=1e-2)
    data = prepare_run_data(config, seed=1)
    torch.manual_seed(0)
    method = build_method(name, config, torch.device("cpu"), _untrained_baseline(config, tmp_path))
    if name == "apga":
        method.estimator.reward_baseline = torch.tensor(0.0)  # so the first advantage is not 0 by definition
    classifier_before = copy.deepcopy(method.classifier.state_dict())
    agent_before = copy.deepcopy(method.agent.state_dict()) if method.agent is not None else None
    reference_before = copy.deepcopy(method.reference.state_dict()) if hasattr(method, "reference") else None
    optimizers = make_optimizers(method)
    loader = make_loader(data.train.dataset, config.batch_size, shuffle=True, seed=(0,))
    method.generator = torch.Generator().manual_seed(0)
    stage = Stage(tmp_path, 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    logs = train_one_epoch(method, loader, optimizers, torch.amp.GradScaler("cpu", enabled=False), stage,
                           desc="test", max_steps=2)

    assert logs and all(math.isfinite(v) for v in logs.values())
    assert _changed(classifier_before, method.classifier)
    if METHODS[name].uses_agent:  # its agent trains too
        assert _changed(agent_before, method.agent)
    else:
        assert method.agent is None
    if reference_before is not None:  # Grad-CAM's frozen baseline copy never trains
        assert not _changed(reference_before, method.reference)
    images = torch.rand(2, 3, config.image_size, config.image_size)
    truths = {"bone": (torch.rand(2, 1, config.image_size, config.image_size) > 0.5).float()}
    probabilities = method.mask_probabilities(images, truths)  # the oracle's map is the ground truth
    if not METHODS[name].masks:
        assert probabilities is None
    else:
        assert probabilities.shape == (2, 1, config.image_size, config.image_size)
        assert probabilities.min() >= 0 and probabilities.max() <= 1


def test_apga_also_validates_every_val_every_iterations(tiny_config, tmp_path):
    import pandas as pd

    from apga.experiment import run_stage

    config = tiny_config(body_part="elbow", val_every=1, epochs=1, finetune_epochs=1, gallery="off")
    data = prepare_run_data(config, seed=1)
    seed_dir = Path(config.out_dir) / "seed1"
    args = (config, data, 1, seed_dir, torch.device("cpu"), Precision("cpu", None))
    run_stage("baseline", *args, progress=False)
    run_stage("apga", *args, progress=False)
    steps = -(-len(data.train.index) // config.batch_size)
    baseline = pd.read_csv(seed_dir / "baseline" / "metrics.csv")
    apga = pd.read_csv(seed_dir / "apga" / "metrics.csv")
    assert baseline["epoch"].tolist() == [1.0]  # the baseline validates at epoch end only
    assert apga["epoch"].tolist() == [i / steps for i in range(1, steps)] + [1.0]
    assert apga["val_accuracy_tta"].between(0, 1).all()


def test_fused_optimizers_give_plain_adams_update():
    """make_optimizers uses Adam's fused kernel; its step matches the reference loop's.

    One step from equal networks and equal gradients: later steps would differ by more than
    rounding, because Adam divides by the root of tiny second moments."""
    torch.manual_seed(0)
    method = METHODS["apga"](make_config(preset="cpu"), build_classifier("densenet-small"), build_agent(width=2))
    plain = copy.deepcopy(method)
    fused, reference = make_optimizers(method), make_optimizers(plain)
    assert all(opt.defaults["fused"] for opt in fused.values())
    reference = {name: torch.optim.Adam(opt.param_groups[0]["params"], lr=opt.defaults["lr"], foreach=False)
                 for name, opt in reference.items()}
    initial = [p.detach().clone() for p in method.agent.parameters()]
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    for m, optimizers in ((method, fused), (plain, reference)):
        loss = F.cross_entropy(m.classifier(images), labels) + m.agent(images).square().mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
    for name in ("classifier", "agent"):
        for a, b in zip(method.networks()[name][0].parameters(), plain.networks()[name][0].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(a, b) for a, b in zip(initial, method.agent.parameters()))  # the steps moved them


def test_amp_is_on_for_cuda_and_asked_for_on_the_cpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Precision.for_device(cpu, None).dtype is None
    assert Precision.for_device(cpu, True).dtype == torch.bfloat16
    assert Precision.for_device(cuda, False).dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert Precision.for_device(cuda, None).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert Precision.for_device(cuda, None).dtype == torch.float16  # its scaler: the fp16 test below


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16-scaled"])
@pytest.mark.parametrize("name", list(METHODS))
def test_mixed_precision_step_follows_full_precision(name, dtype, tiny_config, tmp_path):
    """One step under autocast (fp16 with the gradient scaler, as on GPUs without bf16) logs the
    losses of the full-precision step from the same state, and trains the same networks."""
    config = tiny_config(body_part="elbow")
    data = prepare_run_data(config, seed=1)
    batch = model_batch(data.train.dataset.__getitems__(list(range(8))), torch.device("cpu"))  # with its "bone"
    torch.manual_seed(0)
    baseline_checkpoint = _untrained_baseline(config, tmp_path)
    runs = {}
    for precision in (Precision("cpu", None), Precision("cpu", dtype)):
        torch.manual_seed(1)  # the same agent for both
        method = build_method(name, config, torch.device("cpu"), baseline_checkpoint)
        method.generator = torch.Generator().manual_seed(0)
        if name == "apga":
            method.estimator.reward_baseline = torch.tensor(0.0)
        before = copy.deepcopy({n: net.state_dict() for n, (net, _) in method.networks().items()})
        scaler, optimizers = precision.scaler(), make_optimizers(method)
        logs = {}
        for phase_logs in run_step(method, batch, optimizers, scaler, precision):
            logs.update({k: v.item() for k, v in phase_logs.items()})
        for _ in range(2):  # fp16's scaler may skip the first steps (an overflow at its initial scale) by design
            list(run_step(method, batch, optimizers, scaler, precision))
        moved = {n: _changed(before[n], net) for n, (net, _) in method.networks().items()}
        runs[precision.dtype] = logs, moved, scaler
    (full, full_moved, _), (mixed, mixed_moved, scaler) = runs[None], runs[dtype]
    assert mixed.keys() == full.keys() and mixed_moved == full_moved and all(full_moved.values())
    # Values computed before the first update that precision steers. Not after it: APGA's reward is
    # a difference of two near-equal losses (here ~1e-3, below bf16's resolution of a loss near
    # 0.69), so its sign, the agent's update and the next mask can differ under bf16.
    first = "loss" if "loss" in full else "clean_loss"
    assert mixed[first] != full[first]  # autocast was on
    for key in ("loss", "clean_loss", "masked_loss", "adversarial_loss", "mask_area"):
        if key in full:
            assert math.isclose(mixed[key], full[key], rel_tol=0.02, abs_tol=0.01), (key, mixed[key], full[key])
    if dtype == torch.float16:
        assert scaler.is_enabled() and math.isfinite(scaler.get_scale())


SYNCS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def host_syncs_forbidden():
    """Every tensor-to-host conversion raises: on a GPU each one waits for the device."""
    def forbidden(self, *args, **kwargs):
        raise AssertionError("a host sync inside the training step")
    with pytest.MonkeyPatch.context() as patch:
        for name in SYNCS:
            patch.setattr(torch.Tensor, name, forbidden)
        yield


@pytest.mark.parametrize("name, estimator", [(name, "greedy") for name in METHODS]
                         + [("apga", "sample"), ("apga", "rloo")])
def test_training_step_has_no_host_sync(name, estimator, tiny_config, tmp_path):
    """No .item(), tensor truth test or numpy conversion in any method's step (only the loop's
    logging, every --log-every steps, reads values back)."""
    config = tiny_config(body_part="elbow", estimator=estimator, fill="blur")
    method = build_method(name, config, torch.device("cpu"), _untrained_baseline(config, tmp_path))
    method.generator = torch.Generator().manual_seed(0)
    optimizers, scaler = make_optimizers(method), torch.amp.GradScaler("cpu", enabled=False)
    batch = {"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, 1, 0]),
             "bone": (torch.rand(4, 1, 32, 32) > 0.5).float()}  # the oracle's ground truth
    with host_syncs_forbidden():
        for _ in range(2):  # the second step also runs APGA's reward-baseline update
            logs = list(run_step(method, batch, optimizers, scaler, Precision("cpu", None)))
    assert logs and all(isinstance(v, torch.Tensor) for phase in logs for v in phase.values())


def test_host_sync_guard_catches_the_per_image_reference():
    from reference_apga import reference_step

    classifier, agent = build_classifier("densenet-small"), build_agent(width=2)
    optimizers = (torch.optim.Adam(classifier.parameters()), torch.optim.Adam(agent.parameters()))
    with host_syncs_forbidden(), pytest.raises(AssertionError, match="host sync"):
        reference_step(classifier, agent, *optimizers, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), None)


def _inputs_of_classifier_calls(classifier) -> list[torch.Tensor]:
    """Records the input of every forward call of `classifier` (hook kept for the test's life)."""
    calls = []
    classifier.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].detach().clone()))
    return calls


@pytest.mark.parametrize("estimator", ["greedy", "rloo"])
def test_apga_kept_region_step_uses_the_updated_agents_mask(estimator, tiny_config, tmp_path):
    config = tiny_config(estimator=estimator, agent_lr=0.5)
    method = build_method("apga", config, torch.device("cpu"), _untrained_baseline(config, tmp_path))
    method.generator = torch.Generator().manual_seed(0)
    method.estimator.reward_baseline = torch.tensor(0.0) if estimator == "greedy" else None
    torch.manual_seed(3)
    images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    keep_before = method.keep_mask(method.mask_probabilities(images))
    calls = _inputs_of_classifier_calls(method.classifier)
    list(run_step(method, {"image": images, "label": labels}, make_optimizers(method), torch.amp.GradScaler("cpu", enabled=False),
                  Precision("cpu", None)))
    keep_after = method.keep_mask(method.mask_probabilities(images))
    assert not torch.equal(keep_before, keep_after)  # the agent's step changed the mask
    assert torch.equal(calls[-1], kept_images(images, keep_after))  # and the kept-region step saw the new one


def test_end2end_loss_weights_and_gradient_through_the_soft_mask(tiny_config, tmp_path):
    config = tiny_config()
    method = build_method("end2end", config, torch.device("cpu"), _untrained_baseline(config, tmp_path))
    with torch.no_grad():
        method.agent.final.bias.fill_(0.8)  # p near 0.69, so BCE(p, 0) != BCE(p, 1)
    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    phases = method.phases({"image": images, "label": labels})
    next(phases)
    masked = next(phases)
    assert masked.networks == ("classifier", "agent")
    p = torch.sigmoid(method.agent(images).float())
    expected = (F.cross_entropy(method.classifier(images * p), labels)
                + 0.5 * F.binary_cross_entropy(p, torch.zeros_like(p)) + 0.6 * F.binary_cross_entropy(p, torch.ones_like(p)))
    torch.testing.assert_close(masked.loss, expected, rtol=1e-5, atol=1e-6)
    ours = torch.autograd.grad(masked.loss, list(method.agent.parameters()))
    theirs = torch.autograd.grad(expected, list(method.agent.parameters()))
    for a, b in zip(ours, theirs):  # the classification loss reaches the agent through x * p
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


def test_gradcam_keeps_where_the_frozen_baselines_cam_exceeds_one_half(tiny_config, tmp_path):
    from apga.methods.gradcam import grad_cam

    config = tiny_config()
    torch.manual_seed(0)
    checkpoint = tmp_path / "trained.pt"
    trained = build_classifier(config.classifier)
    with torch.no_grad():  # a baseline whose CAM is not flat
        for parameter in trained.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    save_checkpoint(checkpoint, {"classifier": trained.state_dict()})
    method = build_method("gradcam", config, torch.device("cpu"), checkpoint)
    images, labels = torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 1, 0, 1, 0])  # 64 px: a 2 x 2 CAM
    cam = grad_cam(method.reference, images)
    keep = (cam > 0.5).float()
    assert 0.02 < keep.mean() < 0.98
    calls = _inputs_of_classifier_calls(method.classifier)
    phases = list(method.phases({"image": images, "label": labels}))
    assert torch.equal(calls[-1], images * keep) and phases[-1].logs["keep_area"].item() == pytest.approx(keep.mean().item())


@pytest.mark.parametrize("area", [0.15, 0.6])
def test_random_floor_keeps_boxes_of_its_area(area, tiny_config, tmp_path):
    config = tiny_config()
    method = build_method("random", config, torch.device("cpu"), _untrained_baseline(config, tmp_path), keep_area=area)
    method.generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 32, 32) + 0.1  # no pixel is 0, so the kept region is where the input is not
    calls = _inputs_of_classifier_calls(method.classifier)
    list(method.phases({"image": images, "label": torch.zeros(64, dtype=torch.long)}))
    kept_area = (calls[-1][:, 0] != 0).float().flatten(1).mean(1)
    assert abs(kept_area.mean().item() - area) < 0.02 and kept_area.std() < 0.05
    assert method.inputs() == {"keep_area": area}


def test_frozen_kept_norm_leaves_the_running_statistics_to_the_clean_images(tiny_config, tmp_path):
    images, labels = torch.rand(8, 3, 32, 32), torch.tensor([0, 1] * 4)
    for kept_norm, moved in (("batch", True), ("frozen", False)):
        config = tiny_config(kept_norm=kept_norm)
        method = build_method("random", config, torch.device("cpu"), _untrained_baseline(config, tmp_path),
                              keep_area=0.2)
        method.generator = torch.Generator().manual_seed(0)
        norm = method.classifier.features.norm0
        phases = method.phases({"image": images, "label": labels})
        next(phases)  # the clean step updates the running statistics
        after_clean = norm.running_mean.clone(), norm.running_var.clone()
        kept = next(phases)
        assert torch.equal(norm.running_mean, after_clean[0]) != moved and kept.loss.requires_grad
        assert torch.equal(norm.running_var, after_clean[1]) != moved and method.classifier.training
        assert method.variant == ("" if kept_norm == "batch" else "frozenbn")


def test_swapped_background_changes_only_the_kept_region_step(tiny_config, tmp_path):
    # each image one constant value (0.1 ... 0.8), so every pixel says which image it came from
    images, labels = (torch.arange(1, 9).float() / 10).view(8, 1, 1, 1).expand(8, 3, 32, 32).clone(), torch.tensor([0, 1] * 4)
    inputs = {}
    for background in ("fill", "swap"):
        config = tiny_config(kept_background=background, kept_norm="frozen")
        method = build_method("random", config, torch.device("cpu"), _untrained_baseline(config, tmp_path),
                              keep_area=0.3)
        method.generator = torch.Generator().manual_seed(0)
        calls = _inputs_of_classifier_calls(method.classifier)
        list(method.phases({"image": images, "label": labels}))
        inputs[background] = calls
        assert method.variant == ("frozenbn" if background == "fill" else "frozenbn-swapbg")
    (clean_fill, kept_fill), (clean_swap, kept_swap) = inputs["fill"], inputs["swap"]
    assert torch.equal(clean_fill, clean_swap)  # the clean step is untouched
    assert (kept_fill == 0).float().mean() > 0.5 and (kept_swap == 0).float().mean() < 0.3  # whole-looking images
    kept = kept_fill != 0  # the kept region: the same box in both (the boxes are drawn first)
    assert torch.equal(kept_swap[kept], kept_fill[kept])
    for i in range(8):
        outside = (~kept[i]) & (kept_swap[i] != 0)
        assert outside.any() and not torch.isclose(kept_swap[i][outside], images[i][outside]).any()  # another image's
    assert "kept_background" in build_method("baseline", tiny_config(), torch.device("cpu")).ignored_settings()
    with pytest.raises(Exception, match="unknown --kept-background 'other'; choose fill or swap"):
        tiny_config(kept_background="other")
