"""Does APGA's agent learn where the classifier looks? Train only the agent, against a frozen classifier.

    python benchmarks/agent_probe.py                              # elbow, seeds 0-4, greedy, sample, rloo
    python benchmarks/agent_probe.py --estimators rloo --seeds 0,1 --steps 300 --prior-weight 0
    python benchmarks/agent_probe.py --estimators rloo --baseline-seed 91 --out runs/probe/baseline91.csv

Trains (or, when it is already there, loads) the demo's baseline (seed `--baseline-seed`) on the generated data
(`--preset cpu`, the paper's protocol: the classifier under study, as the full loop starts from
it), freezes it, and for each estimator and agent seed trains a fresh agent alone for `--steps`
steps: each step is APGA's policy phase (steps 2-7 of docs/method.md) on a batch of
`--batch-size` training images, with the classifier in eval mode. 10 % of the training patients are held out
from the agent: every `--select-every` steps the agent is scored on them by its location gap
(apga/evaluation/mask_quality.py), which needs no ground truth, and the best-scoring checkpoint is then
measured on the report split (MURA's validation split) with every mask-quality column (`--select
last`: the last step's agent instead, `gap,last`: both, as `rloo` and `rloo[last]`; `--ema D`:
the checkpoints are the weights' moving average), beside the floors (apga/evaluation/floors.py) at the same areas. Writes one row per (estimator or floor, seed) to
`--out` and prints the table, with the targets of the agent issue.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apga.cli import script_command  # noqa: E402
from apga.config import make_config  # noqa: E402
from apga.data import make_loader, prepare_run_data, to_model_input  # noqa: E402
from apga.evaluation.evaluate import evaluate, occlusion_maps  # noqa: E402
from apga.evaluation.floors import FLOORS, Floor  # noqa: E402
from apga.evaluation.mask_quality import COLUMNS, location_gap, region_precision  # noqa: E402
from apga.methods.masks import top_fraction  # noqa: E402
from apga.methods.apga import APGA  # noqa: E402
from apga.models import build_agent  # noqa: E402
from apga.experiment import baseline_classifier, generated_root, memory_format, run_stage  # noqa: E402
from apga.training.loop import Precision  # noqa: E402
from apga.utils import derive_seed, eval_mode, resolve_device, seed_everything  # noqa: E402


def _list(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split(",")


@torch.no_grad()
def selection_score(method, split, device, batch_size: int) -> tuple[float, float]:
    """Mean location gap of the agent's top-10 % mask on `split` (needs no ground truth: it selects),
    and its bone precision there (a diagnostic of drift, never used to select)."""
    gaps, precisions = [], []
    for batch in make_loader(split.dataset, batch_size, shuffle=False):
        images = to_model_input(batch["image"].to(device), method.config.channels_last)
        maps = method.mask_probabilities(images)
        top = top_fraction(maps, 0.1, torch.Generator(device).manual_seed(0))
        gaps.append(location_gap(method.classifier, images, batch["label"].to(device), top, method.fill))
        if "bone" in batch:
            precisions.append(region_precision(top, batch["bone"].to(device).unsqueeze(1).float()))
    precision = torch.cat(precisions).mean().item() if precisions else float("nan")
    return torch.cat(gaps).mean().item(), precision


@torch.no_grad()
def silent_fraction(agent, split, device, batch_size: int, channels_last: bool) -> float:
    """The fraction of the inputs to the agent's last (1x1) layer that are exactly 0 on `split`:
    the share of its decoder's ReLU outputs that are off. Near 1, the map no longer depends on the
    image (dead ReLUs): its top cells are nearly tied, and ranking them is noise. Needs no ground truth."""
    zeros, total = 0, 0

    def count(module, inputs, output):
        nonlocal zeros, total
        zeros += (inputs[0] == 0).sum().item()
        total += inputs[0].numel()

    hook = agent.final.register_forward_hook(count)
    try:
        for batch in make_loader(split.dataset, batch_size, shuffle=False):
            agent(to_model_input(batch["image"].to(device), channels_last))
    finally:
        hook.remove()
    return zeros / total


def train_agent(config, classifier, data, device, seed: int, steps: int, select_every: int, batch_size: int,
                ema: float = 0.0):
    """A fresh agent trained alone against the frozen classifier; returns the method (at the
    checkpoint of the best location gap), {"gap": (step, weights) of that checkpoint, "last": (step,
    weights) of the last step}, and per checkpoint the selection score and the bone precision on the
    selection split (the drift diagnostic). With `ema` in (0, 1), the
    checkpoints (selected, scored) are the exponential moving average of the agent's weights,
    decay `ema` per step (torch.optim.swa_utils), not the weights of the last step."""
    seed_everything(derive_seed(seed, "probe-agent", config.estimator))
    agent = build_agent(config.agent_width, config.pretrained, config.agent_scale).to(device, memory_format=memory_format(config))
    method = APGA(config, classifier, agent)
    method.generator = torch.Generator(device).manual_seed(derive_seed(seed, "probe-masks"))
    optimizer = torch.optim.Adam(method.agent.parameters(), lr=config.agent_lr)
    loader = make_loader(data.train.dataset, batch_size, shuffle=True, seed=(seed, "probe"))
    averaged = None
    if ema:
        averaged = torch.optim.swa_utils.AveragedModel(
            method.agent, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema), use_buffers=True)
    trained = method.agent
    best = (-float("inf"), 0, copy.deepcopy(method.agent.state_dict()))
    scores, precisions, step = {}, {}, 0
    while step < steps:
        loader.set_epoch(step)  # each pass its own order
        for batch in loader:
            images = to_model_input(batch["image"].to(device), config.channels_last)
            labels = batch["label"].to(device)
            with torch.no_grad():
                clean_loss = F.cross_entropy(classifier(images), labels)
            phase = method.estimator.policy_phase(method, images, labels, clean_loss)
            optimizer.zero_grad(set_to_none=True)
            phase.loss.backward()
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(trained)
            step += 1
            if step % select_every == 0 or step == steps:
                method.agent = trained if averaged is None else averaged.module
                scores[step], precisions[step] = selection_score(method, data.select, device, config.batch_size)
                if scores[step] > best[0]:
                    best = (scores[step], step, copy.deepcopy(method.agent.state_dict()))
                method.agent = trained
            if step == steps:
                break
    last = (steps, copy.deepcopy((trained if averaged is None else averaged.module).state_dict()))
    method.agent.load_state_dict(best[2])
    return method, {"gap": best[1:], "last": last}, scores, precisions


def main(body_part: str = "elbow", seeds: str = "0,1,2,3,4", estimators: str = "greedy,sample,rloo",
         steps: int = 200, batch_size: int = 16, select_every: int = 25, out: str = "runs/probe/probe.csv", data_root: str = "datasets",
         agent_lr: float | None = None, prior_weight: float | None = None, area_weight: float | None = None,
         mask_area: float | None = None, mask_cell: int | None = None, policy_samples: int | None = None,
         fill: str | None = None, agent_width: int | None = None, baseline_seed: int = 89, gpu_id: int = 0,
         ema: float = 0.0, select: str = "gap", epochs: int | None = None, image_size: int | None = None) -> None:
    """Train agents against a frozen baseline, write one row per (estimator or floor, seed), print the table.
    `epochs` (the baseline's) and `image_size`: other than the CPU preset's (a quicker try)."""
    start = time.perf_counter()
    unknown = sorted(set(_list(select)) - {"gap", "last"})
    if unknown:
        raise SystemExit(f"--select {','.join(unknown)}: choose gap (the best location gap), last (the last step) or both")
    overrides = {k: v for k, v in dict(agent_lr=agent_lr, prior_weight=prior_weight, area_weight=area_weight,
                                       mask_area=mask_area, mask_cell=mask_cell, policy_samples=policy_samples,
                                       fill=fill, agent_width=agent_width, epochs=epochs,
                                       image_size=image_size).items() if v is not None}
    root = generated_root(data_root)
    out_path = Path(out)
    config = make_config(preset="cpu", body_part=body_part, data_root=str(root), out_dir=str(out_path.parent),
                         gallery="off", **overrides)
    device = resolve_device(gpu_id)
    precision = Precision.for_device(device, config.amp)
    seed_dir = out_path.parent / f"{body_part}-baseline" / f"seed{baseline_seed}"
    baseline = run_stage("baseline", config, prepare_run_data(config, baseline_seed), baseline_seed, seed_dir, device,
                         precision, progress=False)
    data = prepare_run_data(dataclasses.replace(config, model_selection="holdout"), baseline_seed)
    print(f"frozen baseline: accuracy {baseline['accuracy']:.3f}, AUROC {baseline['auroc']:.3f} on "
          f"{len(data.report.index)} report images; agents train on {len(data.train.index)} images, "
          f"select on {len(data.select.index)} of held-out patients")
    classifier = baseline_classifier(config, seed_dir, device).eval().requires_grad_(False)
    eval_kwargs = dict(batch_size=config.batch_size, channels_last=config.channels_last)
    occlusion = occlusion_maps(classifier, data.report, device, fill=config.fill, **eval_kwargs)

    rows = []
    for seed in (int(s) for s in _list(seeds)):
        for kind in FLOORS:
            quality = evaluate(Floor(kind, classifier, config.fill, seed), data.report, device, mask_quality=True,
                               seed=seed, occlusion=occlusion, **eval_kwargs)
            rows.append({"name": f"floor[{kind}]", "seed": seed, "baseline_seed": baseline_seed, **{c: quality[c] for c in COLUMNS}})
        for estimator in _list(estimators):
            began = time.perf_counter()
            estimator_config = dataclasses.replace(config, estimator=estimator)
            method, checkpoints, scores, precisions = train_agent(estimator_config, classifier, data, device, seed,
                                                                  steps, select_every, batch_size, ema)
            seconds = time.perf_counter() - began
            for selection in _list(select):
                chosen, weights = checkpoints[selection]
                method.agent.load_state_dict(weights)
                with eval_mode(method.agent):
                    quality = evaluate(method, data.report, device, mask_quality=True, seed=seed, occlusion=occlusion,
                                       **eval_kwargs)
                name = estimator if selection == "gap" else f"{estimator}[{selection}]"
                silent = silent_fraction(method.agent, data.report, device, config.batch_size, config.channels_last)
                rows.append({"name": name, "seed": seed, "baseline_seed": baseline_seed,
                             **{c: quality[c] for c in COLUMNS},
                             "policy_area": quality["policy_area"], "selected_step": chosen,
                             "selection_gaps": " ".join(f"{k}:{v:.2f}" for k, v in scores.items()),
                             "selection_bone_precision": " ".join(f"{k}:{v:.3f}" for k, v in precisions.items()),
                             "last_bone_precision": precisions[max(precisions)], "agent_silent": silent,
                             "seconds": seconds})
                print(f"  seed {seed} {name}: bone precision {quality['bone_precision_10']:.3f}, location gap "
                      f"{quality['location_gap_10']:.2f}, policy area {quality['policy_area']:.3f}, agent's last "
                      f"layer input zero {silent:.2f} (step {chosen} of {steps}, {seconds:.0f} s); on the selection split, bone "
                      f"precision by step: {rows[-1]['selection_bone_precision']}")
    table = pd.DataFrame(rows)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_path, index=False)
    print_summary(table, config, f"{steps} steps of {batch_size} images" + (f", weights averaged (EMA {ema:g})" if ema else ""))
    print(f"\nrows: {out_path}; probe took {(time.perf_counter() - start) / 60:.1f} min")


def print_summary(table: pd.DataFrame, config, training: str) -> None:
    """Mean ± sd over seeds of each estimator and floor, and the rloo targets."""
    shown = [c for c in COLUMNS if c not in ("finding_auroc", "collapsed")] + ["last_bone_precision", "agent_silent"]
    print(f"\nfrozen-classifier probe, {training}: {body_settings(config)}; mean ± sd over seeds "
          f"(min for bone precision) at the selected step; last_bone_precision: on the selection split at the "
          f"last step (drift); agent_silent: share of zero inputs to the agent's last layer (dead ReLUs)\n")
    print("| estimator / floor | seeds | " + " | ".join(shown) + " | collapsed |")
    print("|---|---|" + "---|" * len(shown) + "---|")
    for name, runs in table.groupby("name", sort=False):
        cells = []
        for column in shown:
            values = runs[column].dropna() if column in runs else pd.Series(dtype=float)
            if values.empty:
                cells.append("")
                continue
            cell = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}"
            if column == "bone_precision_10":
                cell += f" (min {values.min():.3f})"
            cells.append(cell)
        collapsed = runs["collapsed"].dropna()
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " | "
              + (f"{int(collapsed.sum())}/{len(collapsed)}" if len(collapsed) else "") + " |")
    if "rloo" in set(table["name"]):
        rloo = table[table["name"] == "rloo"]
        precision = rloo["bone_precision_10"]
        floors = {name: table[table["name"] == f"floor[{name}]"]["bone_precision_10"].mean()
                  for name in ("random-boxes", "gradcam")}
        print("\ntargets (rloo):")
        print(f"- bone_precision_10 mean {precision.mean():.3f} (>= 0.85), every seed {precision.min():.3f} (>= 0.75)")
        for name, value in floors.items():
            print(f"- above floor[{name}] by {precision.mean() - value:+.3f} (>= +0.15)")
        print(f"- location_gap_10 mean {rloo['location_gap_10'].mean():.2f} (>= 3)")
        print(f"- collapsed {int(rloo['collapsed'].sum())} of {len(rloo)} (0)")


def body_settings(config) -> str:
    return (f"{config.body_part}, {config.image_size} px, agent width {config.agent_width}, agent lr {config.agent_lr:g}, "
            f"rloo: cells {config.mask_cell} px, K {config.policy_samples}, rho {config.mask_area:g}, "
            f"lambda {config.area_weight:g}, w {config.prior_weight:g}, fill {config.fill}")


COMMAND = script_command(main, "python benchmarks/agent_probe.py [--flag VALUE ...]", paths=('out', 'data_root'))

if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
