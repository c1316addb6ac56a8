"""A whole experiment: for each seed, the baseline, then every method fine-tuned from it.

Layout of `--out-dir`:
    results.csv                                   one row per (body part, seed, n_shot, method)
    summary.md                                    the table of `python -m apga.report`
    <part>-<shot>-<selection>/seed<S>/<method>/   best.pt, last.pt, metrics.csv, result.json, gallery/
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from apga import report
from apga.checkpoint import load_checkpoint
from apga.config import Config, config_dict
from apga import distributed
from apga.data import RunData, prepare_run_data
from apga.distributed import Dist, wrap
from apga.errors import ConfigError, NonFiniteError
from apga.methods import FLAGS, METHODS
from apga.models import build_agent, build_classifier
from apga.mura import require_mura
from apga.results import RESULTS_FILE, append_row, has_row, read_results, writable_dir
from apga.synthetic import ensure_generated
from apga.train import Precision, Stage, fit
from apga.utils import code_version, derive_seed, seed_everything

DEMO_DATA = "synthetic"


def selected_methods(config: Config) -> list[str]:
    return ["baseline"] + [name for name in METHODS if name in FLAGS and getattr(config, FLAGS[name])]


def shot_label(config: Config) -> str:
    return "all" if config.n_shot is None else str(config.n_shot)


def build_method(name: str, config: Config, device: torch.device, baseline_checkpoint: Path | None = None,
                 **extra):
    """Fresh networks for a method (the classifier from the baseline's best for fine-tuning)."""
    cls = METHODS[name]
    classifier = build_classifier(config.classifier, config.pretrained)
    if cls.fine_tuned:
        classifier.load_state_dict(load_checkpoint(baseline_checkpoint, "cpu")["classifier"])
    agent = build_agent(config.agent_width, config.pretrained, config.agent_scale) if cls.uses_agent else None
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    classifier = classifier.to(device, memory_format=memory_format)
    agent = agent.to(device, memory_format=memory_format) if agent is not None else None
    method = cls(config, classifier, agent, **extra)
    if config.compile:
        for net in (classifier, agent):
            if net is not None:
                net.compile()
    return method


def run_stage(name: str, config: Config, data: RunData, seed: int, seed_dir: Path, device, precision: Precision,
              progress: bool = True, dist: Dist = Dist(), **extra) -> dict:
    seed_everything(derive_seed(seed, name, "init"))  # the same initial networks on every rank
    method = build_method(name, config, device, seed_dir / "baseline" / "best.pt", **extra)
    method.classifier, method.agent, method.dist = wrap(method.classifier, dist, device), wrap(method.agent, dist, device), dist
    folder = name + (f"-{method.variant}" if method.variant else "")
    stage = Stage(seed_dir / folder, seed, device, precision, config, progress and dist.is_main, dist)
    result = fit(method, data, stage)
    if not dist.is_main:
        return result
    row = {
        "body_part": config.body_part, "seed": seed, "n_shot": shot_label(config), "method": name,
        "variant": method.variant, "model_selection": config.model_selection, **result,
        "estimator": config.estimator if method.uses_agent else "", "classifier": config.classifier,
        "image_size": config.image_size, "run_id": str(stage.run_dir.relative_to(Path(config.out_dir))),
        "device": str(device), "code_version": code_version(), "config": json.dumps(config_dict(config), sort_keys=True),
    }
    results_file = Path(config.out_dir) / RESULTS_FILE
    if not has_row(results_file, row["run_id"]):
        append_row(results_file, row)
    return result


def run(config: Config) -> None:
    """Train and evaluate every selected method for `config.n_runs` seeds; print the summary.

    Under torchrun, every rank runs this; rank 0 alone generates data, builds caches first,
    writes files and prints.
    """
    dist, device = distributed.setup(config.gpu_id)
    try:
        _run(config, dist, device)
    finally:
        distributed.teardown(dist)


def _main_first(dist: Dist, work):
    """Rank 0 does `work` (which writes shared files) before the other ranks do it."""
    result = work() if dist.is_main else None
    dist.barrier()
    return result if dist.is_main else work()


def _run(config: Config, dist: Dist, device) -> None:
    say = print if dist.is_main else (lambda *args, **kwargs: None)
    if config.demo:
        config.data_root = str(_main_first(dist, lambda: ensure_generated(Path(config.data_root) / DEMO_DATA, seed=0)))
    require_mura(Path(config.data_root))
    out_dir = Path(config.out_dir)
    if not dist.from_main(writable_dir(out_dir) if dist.is_main else None):
        raise ConfigError(f"cannot write to --out-dir {out_dir}; choose a writable folder")
    precision = Precision.for_device(device, config.amp)
    names = selected_methods(config)
    say(f"APGA on {config.body_part} (n_shot {shot_label(config)}, {config.n_runs} run(s), {device}"
        f"{f' x {dist.world_size} ranks' if dist.enabled else ''}): {', '.join(names)}")
    for run_index in range(config.n_runs):
        seed = config.seed + run_index + 1  # incremented before each run, as the paper
        data = _main_first(dist, lambda: prepare_run_data(config, seed))
        seed_dir = out_dir / f"{config.body_part}-{shot_label(config)}-{config.model_selection}" / f"seed{seed}"
        say(f"seed {seed}: {len(data.train.index)} training, {len(data.select.index)} selection, "
            f"{len(data.report.index)} report images")
        results: dict[str, dict] = {}
        for name in names:
            extra = {}
            if name == "random" and "apga" in results:
                extra["keep_area"] = results["apga"]["mask_area"]
            try:
                results[name] = run_stage(name, config, data, seed, seed_dir, device, precision, dist=dist, **extra)
            except NonFiniteError as error:
                say(f"error: {error}", file=sys.stderr)
                if name == "baseline":
                    break  # nothing to fine-tune from; the next seed goes on
                continue
            say(f"  {name}: accuracy {results[name]['accuracy']:.3f}"
                + (f", TTA {results[name]['accuracy_tta']:.3f}" if "accuracy_tta" in results[name] else ""))
    if not dist.is_main:
        return
    table = read_results(out_dir / RESULTS_FILE)
    summary = report.summarize(table)
    report.write(summary, out_dir)
    current = summary[(summary["body_part"] == config.body_part) & (summary["n_shot"] == shot_label(config))
                      & (summary["model_selection"] == config.model_selection)]
    print()
    print(report.to_markdown(current))
    print(f"\nresults: {out_dir / RESULTS_FILE}; summary of all runs: {out_dir / report.SUMMARY_FILE}")
