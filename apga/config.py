"""One typed configuration for every run, presets as small dicts of overrides.

Every field carries a one-line help text (`field(..., metadata={"help": ...})`): the command
line, `--help` and the README's flag table are all generated from it, so a flag is defined
once. The paper's settings (224 px, DenseNet-169, UNet11 of 32 filters, batch 25, up to 100 epochs,
patience 15, Adam at 1e-5 for fine-tuning and the agent) are the defaults.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field

from apga.errors import ConfigError

BODY_PARTS = ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")
CLASSIFIERS = ("densenet121", "densenet161", "densenet169", "densenet201", "densenet-small")
ESTIMATORS = ("greedy", "sample", "rloo")
FILLS = ("zero", "mean", "blur")
VAL_CADENCES = ("paper", "equal")
KEPT_NORMS = ("batch", "frozen")
KEPT_BACKGROUNDS = ("fill", "swap")
SELECTIONS = ("val", "holdout", "last")
GALLERY_MODES = ("epoch", "end", "off")
AMP_TYPES = ("bf16", "fp16")


def _f(default, help_text):
    return field(default=default, metadata={"help": help_text})


@dataclass
class Config:
    # --- the original script's flags -------------------------------------------------------
    seed: int = _f(88, "base seed; run 1 uses seed+1, run 2 seed+2 (the paper)")
    body_part: str = _f("elbow", "MURA body part (elbow, finger, forearm, hand, humerus, shoulder, wrist) or 'all'")
    n_runs: int = _f(1, "number of runs (seeds) to train, one after another")
    gpu_id: int = _f(0, "CUDA device index (without CUDA: the CPU, with a notice)")
    n_shot: int | None = _f(None, "k-shot: k positive and k negative training images (default: all)")
    train_cutout: int = _f(1, "1 to fine-tune with Cutout, 0 to skip")
    train_apga: int = _f(1, "1 to fine-tune with APGA (the REINFORCE agent), 0 to skip")
    train_gradcam: int = _f(1, "1 to fine-tune with Grad-CAM masking, 0 to skip")
    train_end2end: int = _f(1, "1 to fine-tune with end-to-end (cooperative) masking, 0 to skip")
    train_random: int = _f(1, "1 to fine-tune with the random-box floor of --floor-area")
    train_oracle: int = _f(0, "1 to fine-tune the ceiling (ground-truth masks) beside its floor")
    train_trivialaugment: int = _f(0, "1 to fine-tune with TrivialAugment (a random operation per image)")
    train_keepcutout: int = _f(0, "1 to fine-tune with KeepCutout (Cutout off the salient region)")
    # --- data ------------------------------------------------------------------------------
    data_root: str = _f("datasets", "folder that holds MURA-v1.1/ (and, for generated data, MURA-v1.1-masks/)")
    data_csv: str | None = _f(None, "your own task instead of MURA: a CSV with columns path,label,split[,study,patient,mask]")
    demo: bool = _f(False, "run on the generated MURA-layout data (made once) with --preset demo, into runs/demo (unless given otherwise)")
    image_size: int = _f(224, "images are resized to this square side (the agent pads it to a multiple of 32)")
    num_workers: int = _f(2, "processes decoding a cache of 256+ images (batches: in process)")
    skip_bad_images: bool = _f(False, "skip unreadable images, any format (counted in a warning)")
    cache_dir: str | None = _f(None, "where decoded, resized images are cached (default: <data-root>/.apga-cache)")
    bit_depth: int | None = _f(None, "16-bit PNG/TIFF without sBIT: the bits their values use, e.g. 12 (default: each image's largest value decides)")
    # --- models ----------------------------------------------------------------------------
    classifier: str = _f("densenet169", "classifier: densenet121, densenet161, densenet169, densenet201 or densenet-small")
    pretrained: bool = _f(False, "start the classifier and the agent's encoder from torchvision ImageNet weights (downloads)")
    agent_width: int = _f(32, "UNet11 base filters (32 is TernausNet's, VGG11-sized encoder)")
    agent_scale: float = _f(1.0, "the agent sees the image at this fraction of its side; its mask is upsampled (0.5 = cheaper agent)")
    # --- optimisation ----------------------------------------------------------------------
    batch_size: int = _f(25, "images per batch")
    epochs: int = _f(100, "maximum epochs of the baseline (and of each fine-tuning stage unless --finetune-epochs)")
    finetune_epochs: int | None = _f(None, "maximum epochs of each fine-tuning stage (default: --epochs)")
    patience: int = _f(15, "early stopping: epochs without a better selection accuracy (not under --model-selection last)")
    lr: float = _f(1e-4, "baseline learning rate (Adam; the published script defined none: 1e-4, the MURA paper's)")
    finetune_lr: float = _f(1e-5, "learning rate of every fine-tuning stage (Adam), as the paper")
    agent_lr: float = _f(1e-5, "agent learning rate (Adam), as the paper")
    agent_warmup: int = _f(0, "APGA: steps that train the agent alone against the frozen baseline first (0: none, the paper)")
    freeze_agent: bool = _f(False, "APGA: 1 = the agent learns in --agent-warmup only (two stages)")
    estimator: str = _f("greedy", "APGA policy gradient: 'greedy' (the paper), 'sample' (Bernoulli REINFORCE) or 'rloo' (leave-one-out, on cells)")
    mask_cell: int | None = _f(None, "rloo: side of the agent's action cells in pixels (default: about 1/8 of --image-size)")
    policy_samples: int = _f(4, "rloo: masks sampled per image; all of them go through the classifier as one batch")
    mask_area: float = _f(0.1, "rloo: the area budget rho, the prior of every cell and the area of the deterministic (top-rho) mask")
    keep_fraction: float | None = _f(None, "rloo: share of cells the kept mask keeps (default: --mask-area)")
    area_weight: float = _f(1.0, "rloo: weight lambda of the area budget (mean_c p_c - rho)^2")
    prior_weight: float = _f(0.3, "rloo: weight w of the per-cell prior BCE(p_c, rho) (0: off)")
    fill: str = _f("zero", "what blanked pixels become: 'zero' (the paper), the image's 'mean', or a 'blur'red copy")
    kept_norm: str = _f("batch", "kept-region step's batch norm: 'batch' (the paper: its own statistics) or 'frozen' (the clean running statistics)")
    kept_background: str = _f("fill", "around the kept region: the 'fill' (the paper) or 'swap' (another image's)")
    clean_step: bool = _f(True, "fine-tuned methods: 1 = a clean step beside each masked one (the paper); 0 = the masked step alone")
    floor_area: str = _f("apga", "the random floor's kept area: 'apga' (APGA's), 'oracle' (the ground-truth masks') or a number in (0, 1)")
    val_every: int = _f(100, "APGA, end-to-end also validate every N iterations (0: epochs only)")
    val_cadence: str = _f("paper", "'paper': only APGA and end-to-end validate every --val-every iterations; 'equal': every method does")
    steps_per_epoch: int | None = _f(None, "cap on training iterations per epoch (default: the whole training set)")
    log_every: int = _f(20, "iterations between progress updates (a step's only host syncs)")
    # --- evaluation ------------------------------------------------------------------------
    model_selection: str = _f("val", "the checkpoint: 'val' (best on the validation split, the paper), 'holdout' (best on held-out training patients) or 'last' (the last epoch; no selection, no early stopping)")
    holdout_fraction: float = _f(0.1, "training patients held out by --model-selection holdout")
    gallery: str = _f("epoch", "mask gallery PNG: every 'epoch', at the 'end' only, or 'off'")
    # --- speed -----------------------------------------------------------------------------
    amp: bool | str | None = _f(None, "training steps: 1, bf16, fp16 or 0 (default: 1 on CUDA); eval is fp32")
    channels_last: bool = _f(True, "channels_last memory format (faster on CUDA and the CPU); 0: NCHW")
    compile: bool = _f(False, "wrap the models in torch.compile")
    deterministic: bool = _f(False, "1 = deterministic cuDNN/cuBLAS/torch ops: GPU runs repeat exactly")
    sync_bn: bool = _f(False, "torchrun on GPUs: 1 = batch norm over all processes (SyncBatchNorm)")
    dist_timeout_min: int = _f(180, "torchrun: minutes a process waits while rank 0 evaluates")
    # --- output ----------------------------------------------------------------------------
    out_dir: str = _f("runs", "results.csv, summary and per-run folders (checkpoints, metrics) go here")
    resume: bool = _f(True, "continue a killed run from its last checkpoint; finished runs are skipped (0: start fresh)")
    tensorboard: bool = _f(False, "also write each run's metrics and masks as TensorBoard logs (<run>/tensorboard/; needs tensorboard)")
    preset: str = _f("paper", "named settings: 'paper' (defaults), 'cpu' (small images and models for a CPU) or 'demo' (cpu, fewer epochs)")


# The first field of each group of flags, and the group's title (--help and docs/flags.md).
SECTIONS = {"seed": "The original script's flags", "data_root": "Data", "classifier": "Models",
            "batch_size": "Optimisation", "model_selection": "Evaluation", "amp": "Speed", "out_dir": "Output"}

DEMO_OUT_DIR = "runs/demo"
PATH_FIELDS = ("data_root", "data_csv", "cache_dir", "out_dir")  # settings that name a file or folder

PRESETS: dict[str, dict] = {
    "paper": {},
    # Small images and models for a 2-core CPU: the generated-data study runs with it.
    "cpu": dict(
        image_size=64,
        batch_size=32,
        epochs=40,
        finetune_epochs=6,
        patience=20,  # 10 stopped a baseline that learns late at its majority rate (docs/study.md)
        classifier="densenet-small",
        agent_width=4,
        lr=3e-3,
        finetune_lr=3e-4,
        agent_lr=1e-3,
        val_every=0,
        log_every=5,
    ),
}
# --demo: the cpu preset with the epochs that teach nothing cut, so that every method, the floors, the
# tables and the pictures come out in about a minute on 2 cores (the numbers are a demo's, not a study's).
PRESETS["demo"] = {**PRESETS["cpu"], "epochs": 15, "finetune_epochs": 2, "patience": 15, "gallery": "end"}

# Fields that change what a run computes: a checkpoint from a config that differs in any
# other field (output folders, worker counts, ...) can still be resumed.
SWITCHES = tuple(f.name for f in dataclasses.fields(Config) if f.name.startswith("train_"))  # which methods run

NON_TRAINING_FIELDS = {
    "n_runs", "gpu_id", *SWITCHES,
    "data_root", "data_csv", "demo", "num_workers", "cache_dir", "out_dir", "resume",
    "log_every", "gallery", "preset", "skip_bad_images", "tensorboard", "dist_timeout_min",
    "inputs",  # a run's inputs (baseline checkpoint, floor area) are checked on their own: apga/training/loop.py
    "seed",  # the first seed of a series; a run's own seed is its folder (seedN), whichever series it came from
}


def field_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}


def defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(Config)}


def make_config(**overrides) -> Config:
    """Defaults, then the preset's overrides, then the explicit ones; validated."""
    known = set(defaults())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see --help for the list")
    preset = overrides.get("preset", "demo" if overrides.get("demo") else "paper")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if overrides.get("data_csv") is not None:
        for name in ("demo", "body_part"):
            if overrides.get(name) not in (None, False, 0):
                raise ConfigError(f"--{name.replace('_', '-')} does not go with --data-csv: the CSV's rows are the data "
                                  f"set; drop --{name.replace('_', '-')}")
    values = {**defaults(), **PRESETS[preset], **overrides, "preset": preset}
    if overrides.get("demo") and "out_dir" not in overrides:
        values["out_dir"] = DEMO_OUT_DIR  # generated-data runs never share folders with MURA runs
    config = Config(**values)
    validate(config)
    return config


def default_mask_cell(image_size: int) -> int:
    """The largest divisor of the side that gives at least 8 cells a side (8 px at 64, 28 at 224)."""
    return max(d for d in range(1, max(1, image_size // 8) + 1) if image_size % d == 0)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _check_kinds(c: Config) -> None:
    """Every setting of the kind its field declares, before any check compares it: a number where a
    number is declared (`--holdout-fraction 20%` is text, `--lr 1e-3,` a tuple to Fire), one word
    where a name is (`--preset [cpu]` is a list). The checks after this name the allowed values."""
    for item in dataclasses.fields(Config):
        value, declared = getattr(c, item.name), str(item.type)
        if value is None and "None" in declared:
            continue
        several = (" (brackets and commas make Fire read a list or tuple: write the value alone)"
                   if isinstance(value, (list, tuple, dict)) else "")
        if declared.startswith("float"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            percent = " (a fraction: 20% is 0.2)" if isinstance(value, str) and "%" in value else ""
            _require(ok, f"{_flag(item.name)} must be a number (e.g. {item.default if item.default is not None else 0.5}), "
                         f"got {value!r}{percent}{several}")
        elif declared.startswith("str") and item.name not in PATH_FIELDS and value is not None:
            _require(isinstance(value, (str, int, float)) and not isinstance(value, bool),
                     f"{_flag(item.name)} takes one value, got {value!r}{several}")


def validate(c: Config) -> None:
    from apga.utils import expand_path

    for name in PATH_FIELDS:  # as the command line does it, for a config made in Python or by the sweep
        if getattr(c, name) is not None:
            setattr(c, name, expand_path(getattr(c, name), f"--{name.replace('_', '-')}"))
    if c.data_csv is None:
        c.body_part = str(c.body_part).lower()
        _require(c.body_part in BODY_PARTS + ("all",),
                 f"unknown --body-part {c.body_part!r}; choose one of {', '.join(BODY_PARTS)} or all")
    else:
        c.data_csv, c.body_part = str(c.data_csv), None  # the CSV's rows are the data set
    _check_kinds(c)
    _require(_is_int(c.seed), f"--seed must be an integer, got {c.seed!r}")
    _require(_is_int(c.n_runs) and c.n_runs > 0, f"--n-runs must be a positive integer, got {c.n_runs!r}")
    _require(c.bit_depth is None or (_is_int(c.bit_depth) and 8 <= c.bit_depth <= 16),
             f"--bit-depth must be the bits of 16-bit images' values, 8 to 16 (e.g. 12), got {c.bit_depth!r}")
    _require(c.n_shot is None or (_is_int(c.n_shot) and c.n_shot > 0),
             f"--n-shot must be a positive integer (or left out for all images), got {c.n_shot!r}")
    _require(_is_int(c.gpu_id) and c.gpu_id >= 0, f"--gpu-id must be a GPU index >= 0, got {c.gpu_id!r}")
    for name in SWITCHES:
        value = getattr(c, name)
        _require(value in (0, 1), f"--{name.replace('_', '-')} must be 0 or 1, got {value!r}")
        setattr(c, name, int(value))
    for name in ("image_size", "batch_size", "epochs", "patience", "agent_width", "log_every"):
        value = getattr(c, name)
        _require(_is_int(value) and value > 0,
                 f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    _require(c.batch_size >= 2, f"--batch-size must be at least 2, got {c.batch_size}: batch norm, in the classifier "
                                f"and the agent, cannot train on batches of one image")
    _require(_is_int(c.agent_warmup) and c.agent_warmup >= 0,
             f"--agent-warmup must be an integer >= 0 (steps; 0: none), got {c.agent_warmup!r}")
    _require(_is_int(c.num_workers) and c.num_workers >= 0, f"--num-workers must be >= 0, got {c.num_workers!r}")
    _require(_is_int(c.dist_timeout_min) and c.dist_timeout_min > 0,
             f"--dist-timeout-min must be a positive integer (minutes), got {c.dist_timeout_min!r}")
    _require(_is_int(c.val_every) and c.val_every >= 0, f"--val-every must be >= 0, got {c.val_every!r}")
    _require(c.finetune_epochs is None or (_is_int(c.finetune_epochs) and c.finetune_epochs > 0),
             f"--finetune-epochs must be a positive integer, got {c.finetune_epochs!r}")
    _require(c.steps_per_epoch is None or (_is_int(c.steps_per_epoch) and c.steps_per_epoch > 0),
             f"--steps-per-epoch must be a positive integer, got {c.steps_per_epoch!r}")
    for name in ("lr", "finetune_lr", "agent_lr"):
        value = getattr(c, name)
        _require(isinstance(value, (int, float)) and value > 0,
                 f"--{name.replace('_', '-')} must be a positive number, got {value!r}")
    _require(c.classifier in CLASSIFIERS, f"unknown --classifier {c.classifier!r}; choose one of {', '.join(CLASSIFIERS)}")
    _require(c.estimator in ESTIMATORS, f"unknown --estimator {c.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    _require(c.fill in FILLS, f"unknown --fill {c.fill!r}; choose one of {', '.join(FILLS)}")
    _require(c.val_cadence in VAL_CADENCES, f"unknown --val-cadence {c.val_cadence!r}; choose paper or equal")
    _require(c.kept_norm in KEPT_NORMS, f"unknown --kept-norm {c.kept_norm!r}; choose batch or frozen")
    _require(c.kept_background in KEPT_BACKGROUNDS,
             f"unknown --kept-background {c.kept_background!r}; choose fill or swap")
    _require(_is_int(c.policy_samples) and c.policy_samples >= 2,
             f"--policy-samples must be an integer >= 2 (the leave-one-out baseline needs two), got {c.policy_samples!r}")
    _require(isinstance(c.mask_area, (int, float)) and 0 < c.mask_area < 1,
             f"--mask-area must be in (0, 1), got {c.mask_area!r}")
    _require(c.keep_fraction is None or (isinstance(c.keep_fraction, (int, float)) and not isinstance(c.keep_fraction, bool)
                                         and 0 < c.keep_fraction < 1),
             f"--keep-fraction must be in (0, 1) (default: --mask-area), got {c.keep_fraction!r}")
    for name in ("area_weight", "prior_weight"):
        value = getattr(c, name)
        _require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                 f"--{name.replace('_', '-')} must be a number >= 0, got {value!r}")
    if c.mask_cell is None and _is_int(c.image_size) and c.image_size > 0:
        c.mask_cell = default_mask_cell(c.image_size)
    _require(_is_int(c.mask_cell) and c.mask_cell > 0 and c.image_size % c.mask_cell == 0
             and c.image_size // c.mask_cell >= 2,
             f"--mask-cell must divide --image-size {c.image_size} into at least 2 cells a side, got {c.mask_cell!r} "
             f"(e.g. {default_mask_cell(c.image_size) if _is_int(c.image_size) and c.image_size > 0 else 8})")
    _require(c.model_selection in SELECTIONS, f"unknown --model-selection {c.model_selection!r}; choose val, holdout or last")
    _require(c.gallery in GALLERY_MODES, f"unknown --gallery {c.gallery!r}; choose epoch, end or off")
    _require(isinstance(c.agent_scale, (int, float)) and 0 < c.agent_scale <= 1,
             f"--agent-scale must be in (0, 1], got {c.agent_scale!r}")
    _require(0 < c.holdout_fraction < 1, f"--holdout-fraction must be in (0, 1), got {c.holdout_fraction!r}")
    agent_side = round(c.image_size * c.agent_scale)
    _require(agent_side >= 32,
             f"--image-size {c.image_size} with --agent-scale {c.agent_scale} gives the UNet11 agent {agent_side} px; "
             f"it needs at least 32 px (e.g. --image-size 224, or 64 with --preset cpu)")
    _require(not c.tensorboard or importlib.util.find_spec("tensorboard") is not None,
             "--tensorboard 1 needs the tensorboard package: pip install tensorboard (or pip install -e '.[tensorboard]')")
    if c.floor_area not in ("apga", "oracle"):
        try:
            area = float(c.floor_area)
        except (TypeError, ValueError):
            area = -1.0
        _require(0 < area < 1, f"--floor-area must be apga, oracle or a number in (0, 1), got {c.floor_area!r}")
        c.floor_area = f"{area:g}"
    for name in ("demo", "pretrained", "skip_bad_images", "compile", "resume", "amp", "channels_last", "tensorboard",
                 "clean_step", "freeze_agent", "deterministic", "sync_bn"):
        value = getattr(c, name)
        if name == "amp" and (value is None or value in AMP_TYPES):
            continue  # None: decided by the device
        _require(value in (0, 1, True, False), f"--{name.replace('_', '-')} must be 0 or 1"
                 + (", bf16 or fp16" if name == "amp" else "") + f", got {value!r}")
        setattr(c, name, bool(value))
    _require(not (c.pretrained and c.classifier == "densenet-small"),
             "no ImageNet weights exist for --classifier densenet-small; drop --pretrained (or pick a torchvision DenseNet)")
    _require(not c.freeze_agent or c.agent_warmup,
             "--freeze-agent 1 keeps the agent as its warm-up leaves it: give it one, e.g. --agent-warmup 300")


def config_dict(c: Config) -> dict:
    return dataclasses.asdict(c)


def training_fields(c: Config | dict) -> dict:
    values = c if isinstance(c, dict) else config_dict(c)
    return {k: v for k, v in values.items() if k not in NON_TRAINING_FIELDS}
