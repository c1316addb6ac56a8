"""A whole experiment: for each seed, the baseline, then every method fine-tuned from it.

Layout of `--out-dir`:
    results.csv                                   one row per run: (body part, seed, n_shot, protocol, method[variant])
    summary.md                                    the table of `python -m apga.report`
    <part>-<shot>-<selection>/seed<S>/<method>/   best.pt, last.pt, metrics.csv, config.json, result.json, gallery/
    <part>-<shot>-<selection>/seed<S>/floors/     <floor>.json: mask-quality floors of that seed (apga/evaluation/floors.py)
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from apga.reporting import summary as report
from apga.training.checkpoint import load_checkpoint
from apga.config import Config, config_dict
from apga import distributed
from apga.data import RunData, data_source, prepare_run_data
from apga.distributed import Dist, wrap
from apga.errors import ConfigError, NonFiniteError
from apga import methods, utils
from apga.methods import FLAGS, METHODS
from apga.methods.random_masks import DEFAULT_KEEP_AREA
from apga.models import build_agent, build_classifier
from apga.data.mura import require_mura
from apga.evaluation.evaluate import evaluate, occlusion_maps
from apga.evaluation.floors import FLOORS, Floor
from apga.evaluation.mask_quality import COLUMNS as MASK_QUALITY_COLUMNS
from apga.methods.apga import apga_variant
from apga.methods.base import blanking_variant
from apga.reporting.results import RESULTS_FILE, read_results, remove_row, upsert_row, writable_dir
from apga.data.synthetic import ensure_generated
from apga.training.loop import Precision, Stage, fit
from apga.utils import atomic_write_json, code_version, derive_seed, file_digest, seed_everything

DEMO_DATA = "synthetic"
MASKING_METHODS = ("gradcam", "end2end", "apga", "random")


def selected_methods(config: Config) -> list[str]:
    return ["baseline"] + [name for name in METHODS if name in FLAGS and getattr(config, FLAGS[name])]


def shot_label(config: Config) -> str:
    return "all" if config.n_shot is None else str(config.n_shot)


def memory_format(config: Config) -> torch.memory_format:
    return utils.memory_format(config.channels_last)


def build_method(name: str, config: Config, device: torch.device, baseline_checkpoint: Path | None = None,
                 **extra):
    """Fresh networks for a method (the classifier from the baseline's best for fine-tuning, when given)."""
    state = None
    if METHODS[name].fine_tuned and baseline_checkpoint is not None:
        state = load_checkpoint(baseline_checkpoint, "cpu")["classifier"]
    return methods.build_method(name, config, device, state, **extra)


def run_stage(name: str, config: Config, data: RunData, seed: int, seed_dir: Path, device, precision: Precision,
              progress: bool = True, dist: Dist = Dist(), **extra) -> dict:
    """Train (or resume, or reuse) one method of one seed; its row in results.csv is replaced by this run's.

    A run trained anew (`--resume 0`, or its inputs changed) loses its old row before it starts,
    so a run killed half way never leaves the previous run's numbers in the table."""
    seed_everything(derive_seed(seed, name, "init"))  # the same initial networks on every rank
    baseline_checkpoint = seed_dir / "baseline" / "best.pt"
    method = build_method(name, config, device, baseline_checkpoint, **extra)
    method.classifier, method.agent, method.dist = wrap(method.classifier, dist, device), wrap(method.agent, dist, device), dist
    inputs = {"baseline": file_digest(baseline_checkpoint)} if method.fine_tuned else {}
    inputs |= method.inputs()
    folder = name + (f"-{method.variant}" if method.variant else "")
    results_file, run_dir = Path(config.out_dir) / RESULTS_FILE, seed_dir / folder
    run_id = str(run_dir.relative_to(Path(config.out_dir)))
    stage = Stage(run_dir, seed, device, precision, config, progress and dist.is_main, dist, inputs,
                  on_fresh=lambda: remove_row(results_file, run_id))
    result = fit(method, data, stage)
    if dist.is_main:
        saved = json.loads((run_dir / "config.json").read_text())  # the settings this run was trained with
        row = _row(config, name, method.variant, seed, run_dir, result, saved, inputs)
        if name == "baseline":
            row["checkpoint_digest"] = file_digest(baseline_checkpoint)
        upsert_row(results_file, row)
    return result


def _row(config: Config, name: str, variant: str, seed: int, run_dir: Path, result: dict, trained_with: dict,
         inputs: dict) -> dict:
    """A results row: the run's identity and result. Settings come from what the run was trained
    with (`trained_with`, its config.json), not from this command, which may differ in ignored ones."""
    settings = {k: v for k, v in trained_with.items() if k not in ("data_fingerprint", "inputs")}
    return {
        "body_part": data_source(config)[1], "seed": seed, "n_shot": shot_label(config), "method": name,
        "variant": variant, "model_selection": config.model_selection, **result,
        "estimator": settings["estimator"] if name in ("apga", "random") else "",
        "classifier": settings["classifier"], "image_size": settings["image_size"],
        "run_id": str(run_dir.relative_to(Path(config.out_dir))), "device": result.get("device", ""),
        "code_version": result.get("code_version", ""), "keep_area": inputs.get("keep_area", math.nan),
        "baseline_digest": inputs.get("baseline", ""), "config": json.dumps(settings, sort_keys=True),
    }


def apga_kept_area(config: Config, seed_dir: Path) -> float:
    """APGA's kept area on the selection split at its selected checkpoint (the random floor's area),
    from APGA's finished run of this seed and variant, if it started from the current baseline;
    0.5 when there is none."""
    run_dir = seed_dir / ("apga" + (f"-{apga_variant(config)}" if apga_variant(config) else ""))
    if (run_dir / "result.json").is_file() and (run_dir / "config.json").is_file():
        started_from = json.loads((run_dir / "config.json").read_text()).get("inputs", {}).get("baseline")
        area = json.loads((run_dir / "result.json").read_text()).get("selection_mask_area", math.nan)
        if started_from == file_digest(seed_dir / "baseline" / "best.pt") and area is not None and math.isfinite(area):
            return float(area)
    return DEFAULT_KEEP_AREA


def run_floors(config: Config, data: RunData, seed: int, seed_dir: Path, device, precision: Precision) -> None:
    """Mask-quality rows of the floors (apga/evaluation/floors.py) for this seed, from the baseline's classifier.

    Stored in <seed_dir>/floors/<floor>[-<fill>fill].json with their inputs (the baseline
    checkpoint's digest, the data fingerprint, the fill): reused while those are the same,
    recomputed otherwise. A floor of another fill is another floor (its own file and row), as
    masking methods of another fill are other variants."""
    baseline_checkpoint = seed_dir / "baseline" / "best.pt"
    inputs = {"baseline": file_digest(baseline_checkpoint), "data_fingerprint": data.fingerprint, "fill": config.fill}
    classifier = occlusion = None
    eval_kwargs = dict(batch_size=config.batch_size, autocast=precision.autocast, channels_last=config.channels_last)
    for kind in FLOORS:
        variant = "-".join(part for part in (kind, blanking_variant(config, kept_step=False)) if part)
        path = seed_dir / "floors" / f"{variant}.json"
        saved = json.loads(path.read_text()) if config.resume and path.is_file() else {}
        if saved.get("inputs") != inputs:
            if classifier is None:  # the baseline and its occlusion maps, once for every floor
                classifier = build_classifier(config.classifier)
                classifier.load_state_dict(load_checkpoint(baseline_checkpoint, "cpu")["classifier"])
                classifier = classifier.to(device, memory_format=memory_format(config))
                occlusion = occlusion_maps(classifier, data.report, device, fill=config.fill, **eval_kwargs)
            floor = Floor(kind, classifier, config.fill, seed)
            quality = evaluate(floor, data.report, device, mask_quality=True, seed=seed, occlusion=occlusion,
                               **eval_kwargs)
            result = {k: quality[k] for k in MASK_QUALITY_COLUMNS} | {
                "data_fingerprint": data.fingerprint, "code_version": code_version(), "device": str(device)}
            saved = {"inputs": inputs, "result": result, "config": config_dict(config)}
            atomic_write_json(path, saved)
        upsert_row(Path(config.out_dir) / RESULTS_FILE, _row(config, "floor", variant, seed, path.with_suffix(""),
                                                             saved["result"], saved["config"], inputs))


def run(config: Config) -> list[str]:
    """Train and evaluate every selected method for `config.n_runs` seeds; print the summary.

    Returns the runs that stopped (a loss or output that became NaN or infinite): the others go
    on, and a baseline that stopped skips the methods of its seed. Under torchrun, every rank
    runs this; rank 0 alone generates data, builds caches first, writes files and prints.
    """
    dist, device = distributed.setup(config.gpu_id)
    try:
        return _run(config, dist, device)
    finally:
        distributed.teardown(dist)


def _main_first(dist: Dist, work):
    """Rank 0 does `work` (which writes shared files) before the other ranks do it."""
    result = work() if dist.is_main else None
    dist.barrier()
    return result if dist.is_main else work()


def _run(config: Config, dist: Dist, device) -> list[str]:
    say = print if dist.is_main else (lambda *args, **kwargs: None)
    failures = []
    if config.demo:
        config.data_root = str(_main_first(dist, lambda: ensure_generated(Path(config.data_root) / DEMO_DATA, seed=0)))
    if not config.data_csv:
        require_mura(Path(config.data_root))
    out_dir = Path(config.out_dir)
    if not dist.from_main(writable_dir(out_dir) if dist.is_main else None):
        raise ConfigError(f"cannot write to --out-dir {out_dir}; choose a writable folder")
    precision = Precision.for_device(device, config.amp)
    names = selected_methods(config)
    label = data_source(config)[1]
    say(f"APGA on {label} (n_shot {shot_label(config)}, {config.n_runs} run(s), {device}"
        f"{f' x {dist.world_size} ranks' if dist.enabled else ''}): {', '.join(names)}")
    for run_index in range(config.n_runs):
        seed = config.seed + run_index + 1  # incremented before each run, as the paper
        data = _main_first(dist, lambda: prepare_run_data(config, seed))
        seed_dir = out_dir / f"{label}-{shot_label(config)}-{config.model_selection}" / f"seed{seed}"
        say(f"seed {seed}: {len(data.train.index)} training, {len(data.select.index)} selection, "
            f"{len(data.report.index)} report images")
        results: dict[str, dict] = {}
        for name in names:
            extra = {"keep_area": apga_kept_area(config, seed_dir)} if name == "random" else {}
            try:
                results[name] = run_stage(name, config, data, seed, seed_dir, device, precision, dist=dist, **extra)
            except NonFiniteError as error:
                say(f"error: {error}", file=sys.stderr)
                failures.append(f"{name} of seed {seed}")
                if name == "baseline":
                    break  # nothing to fine-tune from; the next seed goes on
                continue
            if name == "baseline" and dist.is_main and any(m in names for m in MASKING_METHODS):
                run_floors(config, data, seed, seed_dir, device, precision)
            say(f"  {name}: accuracy {results[name]['accuracy']:.3f}"
                + (f", TTA {results[name]['accuracy_tta']:.3f}" if "accuracy_tta" in results[name] else ""))
    if not dist.is_main:
        return failures
    table = read_results(out_dir / RESULTS_FILE)
    report.write(table, out_dir)
    current = table[(table["body_part"] == label) & (table["n_shot"] == shot_label(config))
                    & (table["model_selection"] == config.model_selection)]
    print()
    print(report.render(current))
    print(f"results: {out_dir / RESULTS_FILE}; summary of all runs: {out_dir / report.SUMMARY_FILE}")
    return failures
