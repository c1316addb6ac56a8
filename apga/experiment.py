"""A whole experiment: for each seed, the baseline, then every method fine-tuned from it.

Layout of `--out-dir`:
    results.csv                                   one row per run, rebuilt from the runs' result.json files
    summary.md                                    the tables of `python -m apga.report`, with plots beside it
    <part>-<shot>-<selection>/seed<S>/<method>/   config.json, last.pt, best.pt, metrics.csv, curves.png, gallery/,
                                                  result.json (the run's results row, written when it has finished)
    <part>-<shot>-<selection>/seed<S>/floors/<floor>/   config.json, result.json: mask-quality floors of that seed
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from apga import distributed, methods, utils
from apga.config import Config
from apga.data import RunData, data_source, prepare_run_data
from apga.data.mura import require_mura
from apga.data.synthetic import ensure_generated
from apga.distributed import Dist, wrap
from apga.errors import ConfigError, DataError, NonFiniteError
from apga.evaluation.evaluate import evaluate, occlusion_maps
from apga.evaluation.floors import FLOORS, Floor
from apga.evaluation.mask_quality import COLUMNS as MASK_QUALITY_COLUMNS
from apga.methods import FLAGS, MASKING_METHODS, METHODS
from apga.methods.apga import apga_variant
from apga.methods.base import variant_name
from apga.methods.random_masks import DEFAULT_KEEP_AREA
from apga.models import build_classifier
from apga.reporting import summary as report
from apga.reporting.results import RESULT_FILE, RESULTS_FILE, read_result, rebuild, run_row, writable_dir
from apga.training.checkpoint import PREDICTIONS_DIR, load_checkpoint
from apga.training.loop import Precision, Stage, fit, identity_values, run_state
from apga.utils import atomic_write_json, code_version, derive_seed, file_digest, seed_everything

DEMO_DATA = "synthetic"


def stages(config: Config) -> list[tuple[str, Config]]:
    """(method, its settings) in training order: the baseline, every selected method, and with the
    oracle, a random floor at the oracle's area (the floor of the ceiling, which the report pairs
    with it), beside the selected random floor unless that one already has the oracle's area."""
    chosen = [("baseline", config)] + [(name, config) for name in METHODS
                                       if name in FLAGS and getattr(config, FLAGS[name])]
    if config.train_oracle and not (config.train_random and config.floor_area == "oracle"):
        chosen.append(("random", dataclasses.replace(config, floor_area="oracle")))
    return chosen


def selected_methods(config: Config) -> list[str]:
    return [name for name, _ in stages(config)]


def require_truths(config: Config, data: RunData) -> None:
    """The oracle, and a random floor at its area, need every image's ground-truth relevance region."""
    needs = ("--train-oracle 1" if config.train_oracle else
             "--floor-area oracle" if config.train_random and config.floor_area == "oracle" else None)
    if needs and "bone" not in data.truths:
        raise DataError(f"{needs} needs the ground-truth relevance mask of every image: the generated data "
                        f"has them (MURA-v1.1-masks/), a --data-csv task gives them in a 'mask' column; "
                        f"{data_source(config)[1]} has none (drop {needs.split()[0]})")


def oracle_area(data: RunData) -> float:
    """The mean area of the training images' ground-truth masks: the oracle's kept area."""
    split = data.train.dataset
    return float(split.truths["bone"][split.rows].mean())


def shot_label(config: Config) -> str:
    return "all" if config.n_shot is None else str(config.n_shot)


def memory_format(config: Config) -> torch.memory_format:
    return utils.memory_format(config.channels_last)


def baseline_classifier(config: Config, seed_dir: Path, device) -> torch.nn.Module:
    """The seed's baseline classifier at its selected checkpoint (seed_dir/baseline/best.pt), on `device`."""
    classifier = build_classifier(config.classifier, config.pretrained, load_weights=False)  # its input as trained
    classifier.load_state_dict(load_checkpoint(seed_dir / "baseline" / "best.pt", "cpu")["classifier"])
    return classifier.to(device, memory_format=memory_format(config))


def build_method(name: str, config: Config, device: torch.device, baseline_checkpoint: Path | None = None,
                 **extra):
    """Fresh networks for a method (the classifier from the baseline's best for fine-tuning, when given)."""
    state = None
    if METHODS[name].fine_tuned and baseline_checkpoint is not None:
        state = load_checkpoint(baseline_checkpoint, "cpu")["classifier"]
    return methods.build_method(name, config, device, state, **extra)


def generated_root(data_root: str | Path) -> Path:
    """The generated data set of a benchmark's `--data-root`: the folder itself where it holds one
    (its GENERATED.json, e.g. from `python -m apga.data.synthetic`), else the demo's data set under it
    (made once, as --demo makes it)."""
    root = Path(data_root)
    return root if (root / "GENERATED.json").is_file() else ensure_generated(root / DEMO_DATA, seed=0)


def with_data(config: Config) -> Config:
    """`config` with its data root where the data is: for --demo, the generated data set (made once)."""
    if not config.demo:
        return config
    return dataclasses.replace(config, data_root=str(ensure_generated(Path(config.data_root) / DEMO_DATA, seed=0)))


def group_name(config: Config) -> str:
    """The out-dir folder of a (body part or CSV task, n_shot, protocol): e.g. elbow-all-val."""
    return f"{data_source(config)[1]}-{shot_label(config)}-{config.model_selection}"


def seed_folder(config: Config, seed: int) -> Path:
    return Path(config.out_dir) / group_name(config) / f"seed{seed}"


@dataclass
class StagePlan:
    """One method of one seed, before any network is built: where it runs and what it is."""
    name: str
    run_dir: Path
    identity: dict          # its results row's identity (reporting.results.run_row)
    inputs: dict            # what it starts from: the baseline's digest, the floor's kept area
    ignored: set[str]       # settings that cannot change it
    extra: dict = field(default_factory=dict)  # keyword arguments of the method (the floor's keep_area)


def plan_stage(name: str, config: Config, seed: int, seed_dir: Path, data: RunData | None = None) -> StagePlan:
    extra = {"keep_area": floor_keep_area(config, seed_dir, data)} if name == "random" else {}
    method = METHODS[name](config, None, None, **extra)  # no networks: names, inputs and settings only
    baseline = seed_dir / "baseline" / "best.pt"
    inputs = {"baseline": file_digest(baseline) if baseline.is_file() else None} if method.fine_tuned else {}
    inputs |= method.inputs()
    run_dir = seed_dir / (name + (f"-{method.variant}" if method.variant else ""))
    identity = {"body_part": data_source(config)[1], "seed": seed, "n_shot": shot_label(config), "method": name,
                "variant": method.variant, "model_selection": config.model_selection,
                "run_id": str(run_dir.relative_to(Path(config.out_dir)))}
    return StagePlan(name, run_dir, identity, inputs, method.ignored_settings(), extra)


def run_stage(name: str, config: Config, data: RunData, seed: int, seed_dir: Path, device, precision: Precision,
              progress: bool = True, dist: Dist = Dist(), write_index: bool = True) -> dict:
    """Train (or resume, or reuse) one method of one seed. Its row is its result.json; with
    `write_index`, results.csv is rebuilt as soon as the run starts anew (its old row leaves the
    table, so a run killed half way never leaves the previous run's numbers in it) and when it ends."""
    seed_everything(derive_seed(seed, name, "init"))  # the same initial networks on every rank
    plan = plan_stage(name, config, seed, seed_dir, data)
    method = build_method(name, config, device, seed_dir / "baseline" / "best.pt", **plan.extra)
    if config.sync_bn:  # batch norm over every process's share of the batch (torchrun on GPUs: _run checks)
        method.classifier = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.classifier)
        method.agent = method.agent and torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.agent)
    method.classifier, method.agent, method.dist = wrap(method.classifier, dist, device), wrap(method.agent, dist, device), dist
    index = (lambda: rebuild(config.out_dir)) if write_index else None
    stage = Stage(plan.run_dir, seed, device, precision, config, progress and dist.is_main, dist, plan.inputs,
                  on_fresh=index, identity=plan.identity)
    result = fit(method, data, stage)
    if dist.is_main and index is not None:
        index()
    return result


def floor_keep_area(config: Config, seed_dir: Path, data: RunData | None) -> float:
    """The random floor's kept area, by --floor-area: APGA's, the oracle's (needs `data`), or a number."""
    if config.floor_area == "apga":
        return apga_kept_area(config, seed_dir)
    if config.floor_area == "oracle":
        return oracle_area(data)
    return float(config.floor_area)


def apga_kept_area(config: Config, seed_dir: Path) -> float:
    """APGA's kept area on the selection split at its selected checkpoint (the random floor's area),
    from APGA's finished run of this seed and variant, if it started from the current baseline;
    0.5 when there is none."""
    run_dir = seed_dir / ("apga" + (f"-{apga_variant(config)}" if apga_variant(config) else ""))
    baseline = seed_dir / "baseline" / "best.pt"
    if (run_dir / "result.json").is_file() and (run_dir / "config.json").is_file() and baseline.is_file():
        started_from = json.loads((run_dir / "config.json").read_text()).get("inputs", {}).get("baseline")
        area = (read_result(run_dir / RESULT_FILE) or {}).get("selection_mask_area", math.nan)
        if started_from == file_digest(baseline) and area is not None and math.isfinite(area):
            return float(area)
    return DEFAULT_KEEP_AREA


def floor_plans(config: Config, data: RunData, seed: int, seed_dir: Path) -> list[tuple[str, Path, dict]]:
    """(kind, folder, inputs) of each floor of this seed: seed_dir/floors/<floor>[-<fill>fill]/."""
    baseline = seed_dir / "baseline" / "best.pt"
    inputs = {"baseline": file_digest(baseline) if baseline.is_file() else None, "data_fingerprint": data.fingerprint,
              "fill": config.fill}
    plans = []
    for kind in FLOORS:
        variant = "-".join(part for part in (kind, variant_name(config)) if part)
        plans.append((kind, seed_dir / "floors" / variant, inputs))
    return plans


def floor_finished(folder: Path, inputs: dict) -> bool:
    return (read_result(folder / RESULT_FILE) or {}).get("inputs") == inputs


def run_floors(config: Config, data: RunData, seed: int, seed_dir: Path, device) -> None:
    """Mask-quality rows of the floors (apga/evaluation/floors.py) for this seed, from the baseline's
    classifier, each in its own folder with its inputs (the baseline checkpoint's digest, the data
    fingerprint, the fill): reused while those are the same, recomputed otherwise. A floor of
    another fill is another floor (its own folder and row), as masking methods of another fill are
    other variants."""
    classifier = occlusion = None
    eval_kwargs = dict(batch_size=config.batch_size, channels_last=config.channels_last)
    for kind, folder, inputs in floor_plans(config, data, seed, seed_dir):
        if config.resume and floor_finished(folder, inputs):
            continue
        if classifier is None:  # the baseline and its occlusion maps, once for every floor
            classifier = baseline_classifier(config, seed_dir, device)
            occlusion = occlusion_maps(classifier, data.report, device, fill=config.fill, **eval_kwargs)
        quality = evaluate(Floor(kind, classifier, config.fill, seed), data.report, device, mask_quality=True,
                           seed=seed, occlusion=occlusion, **eval_kwargs)
        result = {k: quality[k] for k in MASK_QUALITY_COLUMNS} | {
            "data_fingerprint": data.fingerprint, "code_version": code_version(), "device": str(device)}
        identity = {"body_part": data_source(config)[1], "seed": seed, "n_shot": shot_label(config),
                    "method": "floor", "variant": folder.name, "model_selection": config.model_selection,
                    "run_id": str(folder.relative_to(Path(config.out_dir)))}
        # a floor trains nothing: one process (rank 0) measures it in float32, one evaluation batch at a time
        measured = {"precision": "fp32", "world_size": 1, "effective_batch": config.batch_size}
        values = identity_values(config, data.fingerprint, inputs, measured)
        atomic_write_json(folder / RESULT_FILE, run_row(identity, values, inputs, result) | {"inputs": inputs})


def unfinished_runs(config: Config, seed: int, runtime: dict | None = None) -> list[str]:
    """The run ids of this seed (its methods and floors) that `run` would train under `runtime`
    (what is known of its precision and number of processes: `sweep.jobs.planned_runtime`); raises
    `CheckpointError` for a run folder that holds a run of other settings, runtime or data."""
    config = with_data(config)
    data = prepare_run_data(config, seed)
    require_truths(config, data)
    seed_dir = seed_folder(config, seed)
    pending = []
    for name, settings in stages(config):
        plan = plan_stage(name, settings, seed, seed_dir, data)
        state, _ = run_state(plan.run_dir, identity_values(settings, data.fingerprint, plan.inputs, runtime),
                             plan.ignored)
        if state != "finished" or not config.resume:
            pending.append(plan.identity["run_id"])
    if any(m in selected_methods(config) for m in MASKING_METHODS):
        pending += [str(folder.relative_to(Path(config.out_dir))) for _, folder, inputs
                    in floor_plans(config, data, seed, seed_dir) if not (config.resume and floor_finished(folder, inputs))]
    return pending


def run(config: Config, write_index: bool = True) -> list[str]:
    """Train and evaluate every selected method for `config.n_runs` seeds; print the summary.

    Returns the runs that stopped (a loss or output that became NaN or infinite): the others go
    on, and a baseline that stopped skips the methods of its seed. Under torchrun, every rank
    runs this; rank 0 alone generates data, builds caches first, writes files and prints. With
    `write_index` (a plain command), results.csv and the summary are rebuilt as runs finish; a
    sweep's cells leave that to the sweep.
    """
    if config.deterministic:
        utils.deterministic_algorithms()
    dist, device = distributed.setup(config.gpu_id, config.dist_timeout_min)
    try:
        return _run(config, dist, device, write_index)
    finally:
        distributed.teardown(dist)


def _main_first(dist: Dist, work):
    """Rank 0 does `work` (which writes shared files) before the other ranks do it."""
    result = work() if dist.is_main else None
    dist.barrier()
    return result if dist.is_main else work()


def _run(config: Config, dist: Dist, device, write_index: bool = True) -> list[str]:
    say = print if dist.is_main else (lambda *args, **kwargs: None)
    failures = []
    config = _main_first(dist, lambda: with_data(config))
    if not config.data_csv:
        require_mura(Path(config.data_root))
    out_dir = Path(config.out_dir)
    if not dist.from_main(writable_dir(out_dir) if dist.is_main else None):
        raise ConfigError(f"cannot write to --out-dir {out_dir}; choose a writable folder")
    precision = Precision.for_device(device, config.amp)
    if config.sync_bn and not dist.enabled:
        raise ConfigError("--sync-bn 1 synchronises batch norm across torchrun's processes, and this command is one "
                          "process (nothing to synchronise); start it with torchrun --nproc-per-node N, or drop --sync-bn")
    if config.sync_bn and device.type != "cuda":
        raise ConfigError("--sync-bn 1 needs GPUs (torch's SyncBatchNorm syncs CUDA tensors only); drop it on the CPU")
    chosen = stages(config)
    names = [name for name, _ in chosen]
    label = data_source(config)[1]
    say(f"APGA on {label} (n_shot {shot_label(config)}, {config.n_runs} run(s), {device}"
        f"{f' x {dist.world_size} ranks' if dist.enabled else ''}): {', '.join(names)}")
    for run_index in range(config.n_runs):
        seed = config.seed + run_index + 1  # incremented before each run, as the paper
        data = _main_first(dist, lambda: prepare_run_data(config, seed))
        require_truths(config, data)
        seed_dir = seed_folder(config, seed)
        say(f"seed {seed}: {len(data.train.index)} training, {len(data.select.index)} selection, "
            f"{len(data.report.index)} report images")
        for name, settings in chosen:
            try:
                result = run_stage(name, settings, data, seed, seed_dir, device, precision, dist=dist,
                                   write_index=write_index)
            except NonFiniteError as problem:
                if dist.is_main:
                    utils.error(str(problem))
                failures.append(f"{name} of seed {seed}")
                if name == "baseline":
                    break  # nothing to fine-tune from; the next seed goes on
                continue
            if name == "baseline" and dist.is_main and any(m in names for m in MASKING_METHODS):
                run_floors(config, data, seed, seed_dir, device)
            shown = name + (f"[{result['variant']}]" if result.get("variant") else "")
            say(f"  {shown}: accuracy {result['accuracy']:.3f}"
                + (f", TTA {result['accuracy_tta']:.3f}" if "accuracy_tta" in result else ""))
            if dist.is_main and collapse_warning(shown, result):
                utils.warn(collapse_warning(shown, result))
    if not dist.is_main or not write_index:
        return failures
    table = rebuild(out_dir)
    report.write(table, out_dir)
    current = table[(table["body_part"] == label) & (table["n_shot"] == shot_label(config))
                    & (table["model_selection"] == config.model_selection)]
    print()
    print(report.render(current))
    print(where_things_are(config, out_dir))
    return failures


def collapse_warning(shown: str, result: dict) -> str | None:
    """The console line for a run whose policy collapsed (its `collapsed` flag), or None."""
    if result.get("collapsed") != 1:
        return None
    return (f"{shown}'s policy collapsed: it marks {result['policy_area']:.1%} of the pixels (outside 2-98 %), nearly "
            f"all or none, so its masks say little about where the classifier looks (the summary's mask quality)")


def where_things_are(config: Config, out_dir: Path) -> str:
    """The closing lines of a command: where its tables, pictures and run folders are."""
    plots = sorted(p.name for pattern in report.plots.REPORT_PLOTS for p in out_dir.glob(pattern))
    group = out_dir / group_name(config)
    shown = sorted((name for name in MASKING_METHODS if name != "random"),  # APGA's first, the oracle's last
                   key=lambda name: (name == "oracle", -MASKING_METHODS.index(name)))
    masking = [run for name in shown for run in sorted(group.glob(f"seed*/{name}*"))]
    apga = masking[0] if masking else group / "seed<S>" / "<method>"
    return "\n".join([
        f"tables:   {out_dir / RESULTS_FILE} (one row per run), {out_dir / report.SUMMARY_FILE} (all runs' summary)",
        f"plots:    {out_dir}/{{{', '.join(plots)}}}" if plots else f"plots:    none yet ({out_dir})",
        f"runs:     {group}/seed<S>/<method>/ (best.pt, metrics.csv, curves.png, gallery/final.png, "
        f"report_predictions.csv)",
        f"predict:  python -m apga.predict {apga} <images>  (predictions.csv, metrics.json and overlays/ in "
        f"{PREDICTIONS_DIR}/ of that folder)",
    ])
