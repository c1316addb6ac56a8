"""The cells of a sweep: one (body part, n_shot, protocol, seed) each, with its training settings.

A cell is what one job trains: the seed's baseline, then the methods fine-tuned from it and the
floors, exactly as `python apga_mura.py ... --seed S-1 --n-runs 1` would (the same run folders,
the same rows).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from apga.config import BODY_PARTS, SELECTIONS, Config, defaults, make_config
from apga.errors import ConfigError
from apga.utils import notice

FIRST_SEED = 89  # the paper: --seed 88, incremented before each run
SET_BY_THE_SWEEP = ("body_part", "n_shot", "seed", "n_runs", "model_selection", "out_dir")
# not for a sweep: a job's GPU is the one it is given; a requeued job must resume, not start over
REFUSED = {"gpu_id": "each job uses the GPU the sweep gives it (CUDA_VISIBLE_DEVICES)",
           "resume": "a sweep resumes; to train runs anew, delete their folders or use another --out-dir",
           "sync_bn": "each cell is one process, with nothing to synchronise; --sync-bn is for torchrun on several GPUs"}


@dataclass(frozen=True)
class Cell:
    body_part: str | None  # None for a --data-csv task
    n_shot: int | None
    model_selection: str
    seed: int
    settings: dict = field(default_factory=dict, compare=False, hash=False)  # the training flags, out_dir included

    def overrides(self) -> dict:
        """make_config's arguments for this cell."""
        placed = {"n_shot": self.n_shot, "model_selection": self.model_selection, "seed": self.seed - 1, "n_runs": 1}
        if self.body_part is not None:
            placed["body_part"] = self.body_part
        return {**self.settings, **placed}

    def config(self) -> Config:
        return make_config(**self.overrides())

    @property
    def name(self) -> str:
        """The cell's run folder under the out-dir, e.g. elbow-all-val/seed89."""
        from apga.experiment import group_name

        return f"{group_name(self.config())}/seed{self.seed}"


def as_list(value) -> list[str]:
    """A comma list as Fire hands it over: a string, a number, or a tuple of them."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def body_parts(value) -> list[str]:
    parts = [part.lower() for part in as_list(value)]
    if parts == ["all"]:
        return list(BODY_PARTS)
    unknown = [part for part in parts if part not in BODY_PARTS]
    if unknown or not parts:
        raise ConfigError(f"unknown --body-part {','.join(unknown) or value!r}; give a comma list of "
                          f"{', '.join(BODY_PARTS)}, or all")
    return parts


def shots(value) -> list[int | None]:
    chosen = []
    for part in as_list(value):
        if part == "all":
            chosen.append(None)
        elif part.isdigit() and int(part) > 0:
            chosen.append(int(part))
        else:
            raise ConfigError(f"--n-shot takes a comma list of positive integers and 'all', got {part!r}")
    return chosen


def seeds(value) -> list[int]:
    """`--seeds N`: the paper's seeds 89, 90, ... (N of them); or a comma list of seeds."""
    parts = as_list(value)
    if len(parts) == 1 and parts[0].isdigit() and not isinstance(value, (list, tuple)) and "," not in str(value):
        count = int(parts[0])
        if count < 1:
            raise ConfigError(f"--seeds must be a positive count or a comma list of seeds, got {value!r}")
        if count >= FIRST_SEED:  # reads like a seed: say what it means before a sweep of that many cells
            notice(f"--seeds {count} is a count: {count} seeds, {FIRST_SEED} to {FIRST_SEED + count - 1}; "
                   f"for seed {count} alone give --seeds {count},")
        return list(range(FIRST_SEED, FIRST_SEED + count))
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--seeds must be a positive count or a comma list of seeds, got {value!r}") from None


def selections(value) -> list[str]:
    chosen = as_list(value)
    unknown = [s for s in chosen if s not in SELECTIONS]
    if unknown or not chosen:
        raise ConfigError(f"unknown --selections {','.join(unknown) or value!r}; give a comma list of val, holdout, last")
    return chosen


def make_cells(out_dir: str, body_part, n_shot, seed_list, selection_list, training: dict) -> list[Cell]:
    """Every cell of the grid, each validated (a bad training flag is one ConfigError, before anything runs)."""
    unknown = sorted(set(training) - set(defaults()))
    if unknown:
        raise ConfigError(f"unknown flag(s) {', '.join('--' + u.replace('_', '-') for u in unknown)}; see "
                          f"python apga_mura.py --help for the training flags")
    for name, why in REFUSED.items():
        if name in training:
            raise ConfigError(f"--{name.replace('_', '-')} does not go with a sweep: {why}")
    placed = sorted(set(training) & set(SET_BY_THE_SWEEP))
    if placed:
        raise ConfigError(f"{', '.join('--' + p.replace('_', '-') for p in placed)} is set by the sweep for each cell; "
                          f"use --body-part, --n-shot, --seeds and --selections")
    settings = {**training, "out_dir": out_dir}
    parts = [None] if training.get("data_csv") else body_parts(body_part)
    seed_values = seeds(seed_list)
    cells = [Cell(part, k, selection, seed, settings) for selection in selections(selection_list)
             for part in parts for k in shots(n_shot) for seed in seed_values]
    for cell in cells:
        cell.config()  # raises a ConfigError for a bad value
    return cells
