"""Every registered method runs real steps on generated data and changes what it must."""
from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from apga.checkpoint import save_checkpoint
from apga.config import make_config
from apga.data import make_loader, prepare_run_data, to_model_input
from apga.methods import METHODS
from apga.models import build_agent, build_classifier
from apga.runner import build_method
from apga.train import Precision, Stage, make_optimizers, run_step, train_one_epoch

CHANGES_AGENT = {"baseline": False, "cutout": False, "gradcam": False, "random": False, "end2end": True, "apga": True}


def _untrained_baseline(config, tmp_path) -> Path:
    """A baseline checkpoint for the fine-tuned methods to start from."""
    path = tmp_path / "baseline.pt"
    save_checkpoint(path, {"classifier": build_classifier(config.classifier).state_dict()})
    return path


def _changed(before: dict, net) -> bool:
    return any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_every_method_is_covered():
    assert set(METHODS) == set(CHANGES_AGENT)


@pytest.mark.parametrize("name", list(METHODS))
def test_method_runs_real_steps(name, tiny_config, tmp_path):
    config = tiny_config(body_part="elbow", finetune_lr=1e-2, agent_lr=1e-2, lr=1e-2)
    data = prepare_run_data(config, seed=1)
    torch.manual_seed(0)
    method = build_method(name, config, torch.device("cpu"), _untrained_baseline(config, tmp_path))
    if name == "apga":
        method.reward_baseline = torch.tensor(0.0)  # so the first advantage is not 0 by definition
    classifier_before = copy.deepcopy(method.classifier.state_dict())
    agent_before = copy.deepcopy(method.agent.state_dict()) if method.agent is not None else None
    reference_before = copy.deepcopy(method.reference.state_dict()) if hasattr(method, "reference") else None
    optimizers = make_optimizers(method)
    loader = make_loader(data.train.dataset, config.batch_size, shuffle=True)
    loader.generator.manual_seed(0)
    method.generator = torch.Generator().manual_seed(0)
    stage = Stage(tmp_path, 1, torch.device("cpu"), Precision("cpu", None), config, progress=False)
    logs = train_one_epoch(method, loader, optimizers, torch.amp.GradScaler("cpu", enabled=False), stage,
                           desc="test", max_steps=2)

    assert logs and all(math.isfinite(v) for v in logs.values())
    assert _changed(classifier_before, method.classifier)
    if CHANGES_AGENT[name]:
        assert _changed(agent_before, method.agent)
    else:
        assert method.agent is None
    if reference_before is not None:  # Grad-CAM's frozen baseline copy never trains
        assert not _changed(reference_before, method.reference)
    images = torch.rand(2, 3, config.image_size, config.image_size)
    probabilities = method.mask_probabilities(images)
    if name in ("baseline", "cutout"):
        assert probabilities is None
    else:
        assert probabilities.shape == (2, 1, config.image_size, config.image_size)
        assert probabilities.min() >= 0 and probabilities.max() <= 1


def test_apga_also_validates_every_val_every_iterations(tiny_config, tmp_path):
    import pandas as pd

    from apga.runner import run_stage

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
    images_u8, labels, _, _ = data.train.dataset.__getitems__(list(range(8)))
    images = to_model_input(images_u8)
    torch.manual_seed(0)
    baseline_checkpoint = _untrained_baseline(config, tmp_path)
    runs = {}
    for precision in (Precision("cpu", None), Precision("cpu", dtype)):
        torch.manual_seed(1)  # the same agent for both
        method = build_method(name, config, torch.device("cpu"), baseline_checkpoint)
        method.generator = torch.Generator().manual_seed(0)
        if name == "apga":
            method.reward_baseline = torch.tensor(0.0)
        before = copy.deepcopy({n: net.state_dict() for n, (net, _) in method.networks().items()})
        scaler = precision.scaler()
        logs = {}
        for phase_logs in run_step(method, images, labels, make_optimizers(method), scaler, precision):
            logs.update({k: v.item() for k, v in phase_logs.items()})
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


@pytest.mark.parametrize("name", list(METHODS))
def test_training_step_has_no_host_sync(name, tiny_config, tmp_path):
    """No .item(), tensor truth test or numpy conversion in any method's step (only the loop's
    logging, every --log-every steps, reads values back)."""
    config = tiny_config(body_part="elbow")
    method = build_method(name, config, torch.device("cpu"), _untrained_baseline(config, tmp_path))
    method.generator = torch.Generator().manual_seed(0)
    optimizers, scaler = make_optimizers(method), torch.amp.GradScaler("cpu", enabled=False)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    with host_syncs_forbidden():
        for _ in range(2):  # the second step also runs APGA's reward-baseline update
            logs = list(run_step(method, images, labels, optimizers, scaler, Precision("cpu", None)))
    assert logs and all(isinstance(v, torch.Tensor) for phase in logs for v in phase.values())


def test_host_sync_guard_catches_the_per_image_reference():
    from reference_apga import reference_step

    classifier, agent = build_classifier("densenet-small"), build_agent(width=2)
    optimizers = (torch.optim.Adam(classifier.parameters()), torch.optim.Adam(agent.parameters()))
    with host_syncs_forbidden(), pytest.raises(AssertionError, match="host sync"):
        reference_step(classifier, agent, *optimizers, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), None)
