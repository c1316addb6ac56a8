"""Names and paths: every path argument of every command is the path that was typed (digits, `~`,
commas, `#`), and two spellings of one file are one file.

Rebuilt from public reports: google/python-fire#452 and #453 (an all-digit argument becomes an
int), python-fire#95 (date-like strings), OPM/opm-simulators#5063 and boostorg/build#346
(`--output-dir=~/subdir` taken literally: a folder named `~`), ljwztc/CLIP-Driven-Universal-Model#63
(one case in the training and the test set)."""
from __future__ import annotations

import errno
import importlib
import os
import re
import sys

import pandas as pd
import pytest
from fire import parser

from apga.cli import TRAIN, Command
from apga.data.csv_index import read_csv_index
from apga.errors import ConfigError, DataError
from cli_helpers import ROOT
from test_real_world_cases import _csv_task, _one_line_error

sys.path.insert(0, str(ROOT / "benchmarks"))


def _commands() -> dict[str, Command]:
    """Every command line of the project: the three entry points, the sweep, the data tools, the benchmarks."""
    from apga.cli import data_tool_command
    from apga.predict import PREDICT
    from apga.report import REPORT
    from apga.sweep import SWEEP

    found = {"apga_mura.py": TRAIN, "apga.predict": PREDICT, "apga.report": REPORT, "apga.sweep": SWEEP,
             "apga.data.synthetic": data_tool_command("synthetic"), "apga.data.export": data_tool_command("export")}
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        found[f"benchmarks/{script.name}"] = importlib.import_module(script.stem).COMMAND
    return found


LOOKS_LIKE_A_PATH = re.compile(r"(^|_)(dir|root|csv|out|path|file|source)$|^images$")


def _path_arguments(command: Command) -> list[str]:
    names = [flag.name for flag in command.flags if flag.path] + list(command.path_positionals)
    return names


def test_every_argument_named_like_a_path_is_taken_as_a_path():
    """A new flag such as `--log-dir` is a path too: the guard for the next one."""
    for name, command in _commands().items():
        named = {f.name for f in command.flags if LOOKS_LIKE_A_PATH.search(f.name)}
        named |= {p for p in command.positionals if LOOKS_LIKE_A_PATH.search(p)}
        assert named <= set(_path_arguments(command)), (name, sorted(named - set(_path_arguments(command))))
        assert _path_arguments(command) or name == "benchmarks/bench_step.py", name


VALUES = ["20241130", "2024", "1_000", "1e3", "0x10", "runs#2", "a,b", "[x]", "True", "None", "runs 2",
          "r\u00f6ntgen", "caf\udce9"]  # the last: a Latin-1 byte of a file name, as Python passes it on


@pytest.mark.parametrize("value", VALUES)
def test_fire_hands_every_path_argument_of_every_command_the_text_typed(value):
    """Case 07: Fire reads values as Python literals; a path value reaches the function as typed."""
    for name, command in _commands().items():
        for argument in _path_arguments(command):
            if argument in command.positionals:
                before = [value if p == argument else "x" for p in command.positionals]
                argv = command.with_paths(before)
                position = command.positionals.index(argument)
            else:
                argv, position = command.with_paths([f"--{argument.replace('_', '-')}", value]), 1
            assert parser.DefaultParseValue(argv[position]) == value, (name, argument, argv)
        inline = [f"--{a.replace('_', '-')}={value}" for a in _path_arguments(command) if a not in command.positionals]
        for token in command.with_paths(inline):
            assert parser.DefaultParseValue(token.split("=", 1)[1]) == value, (name, token)


def test_a_tilde_is_expanded_in_every_path_argument_and_an_unknown_user_is_one_line(monkeypatch, tmp_path):
    """Case 31: `--out-dir=~/runs` (the shell leaves a `~` after `=` as it is) names the home folder's
    runs, for every command; `~nobody-here/x` is refused in one line instead of making a folder `~...`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, command in _commands().items():
        for argument in _path_arguments(command):
            if argument in command.positionals:
                argv = command.with_paths(["~/runs" if p == argument else "x" for p in command.positionals])
                token = argv[command.positionals.index(argument)]
            else:
                token = command.with_paths([f"--{argument.replace('_', '-')}=~/runs"])[0].split("=", 1)[1]
            assert parser.DefaultParseValue(token) == str(tmp_path / "home" / "runs"), (name, argument, token)
    with pytest.raises(ConfigError, match=r"--out-dir ~nobody-here-x/runs: there is no user 'nobody-here-x'"):
        TRAIN.with_paths(["--out-dir", "~nobody-here-x/runs"])
    from apga.config import make_config

    assert make_config(out_dir="~/r", cache_dir=2024).out_dir == str(tmp_path / "home" / "r")  # Python callers too
    assert make_config(cache_dir=2024).cache_dir == "2024"


def test_the_training_command_gets_the_paths_typed(monkeypatch, tmp_path, capsys):
    """Cases 07 and 31 through the real entry point (its run replaced by a recorder): an all-digit
    --out-dir and a `~` after `=`; an unknown user stops with one line, exit 2, before anything runs."""
    import apga.experiment
    from apga.cli import entry_point

    seen = []
    monkeypatch.setattr(apga.experiment, "run", lambda config: seen.append(config) or [])
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    entry_point(["--data-root", "2024_11", "--out-dir", "20241130", "--cache-dir=~/apga-cache", "--preset", "cpu"])
    assert (seen[0].data_root, seen[0].out_dir) == ("2024_11", "20241130")  # not 202411: Fire's int
    assert seen[0].cache_dir == str(tmp_path / "home" / "apga-cache")
    with pytest.raises(SystemExit) as stopped:
        entry_point(["--out-dir=~nobody-here-x/runs"])
    assert stopped.value.code == 2 and len(seen) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --out-dir ~nobody-here-x/runs: ")


# --- 10: one file under two spellings ---------------------------------------------------------

def test_one_image_under_two_spellings_is_listed_twice(tmp_path, capsys):
    """Case 10: `img/train_001.png` in train and `./img/train_001.png` (or a symbolic link to it, or
    `img//train_001.png`) in valid is one image in both splits: refused naming both lines."""
    csv = _csv_task(tmp_path)
    table = pd.read_csv(csv, dtype=str)
    os.symlink(tmp_path / "img" / "train_003.png", tmp_path / "img" / "linked.png")
    for other in ("./img/train_001.png", "img//train_001.png", "img/../img/train_001.png"):
        spelled = pd.concat([table, pd.DataFrame([{"path": other, "label": "1", "split": "valid", "study": "v",
                                                  "patient": "v"}])])
        spelled.to_csv(tmp_path / "dup.csv", index=False)
        with pytest.raises(DataError, match=rf"dup.csv line 14: image {re.escape(repr(other))} is the file of line 3 "
                                            r"\('img/train_001.png'\)"):
            read_csv_index(tmp_path / "dup.csv")
    linked = pd.concat([table, pd.DataFrame([{"path": "img/linked.png", "label": "1", "split": "valid"}])])
    linked.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DataError, match=r"line 14: image 'img/linked.png' is the file of line 5"):
        read_csv_index(tmp_path / "dup.csv")
    from cli_helpers import run_cli_here
    from test_real_world_cases import BASELINE_ONLY

    done = run_cli_here(capsys, tmp_path, tmp_path / "runs", "--data-csv", str(tmp_path / "dup.csv"), *BASELINE_ONLY)
    _one_line_error(done, "is the file of line 5")


# --- names derived from inputs -------------------------------------------------------------------

def test_names_derived_from_inputs_fit_and_never_collide(tmp_path):
    """A CSV named after its whole cohort description (a stem of 250 bytes: the run folder
    `<stem>-all-val` would pass the 255-byte limit, ENAMETOOLONG) and two data sets whose names differ
    only in characters a plot's file name cannot hold (`task 1`, `task_1`: one plot overwrote the
    other): every derived name fits and each input keeps its own."""
    from apga.config import make_config
    from apga.experiment import group_name
    from apga.reporting.plots import _safe
    from apga.utils import storage_error

    long_stem = "cohort_" + "\u00e9" * 60 + "x" * 120  # 247 bytes in UTF-8
    names = set()
    for ending in ("a", "b"):
        csv = tmp_path / f"{long_stem}{ending}.csv"
        csv.write_text("path,label,split\n")
        group = group_name(make_config(data_csv=str(csv)))
        assert len(group.encode()) <= 120 and group.startswith("cohort_\u00e9")
        (tmp_path / "runs" / group).mkdir(parents=True)  # the file system takes it
        names.add(group)
    assert len(names) == 2
    assert len({_safe("task 1"), _safe("task_1"), _safe("task/1")}) == 3 and _safe("elbow") == "elbow"
    too_long = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
    assert "allows 255 bytes a name" in str(storage_error(tmp_path / ("x" * 300), too_long))


def test_a_validation_image_that_is_a_copy_of_a_training_image_is_named(tmp_path, tiny_config, capsys):
    """One radiograph exported twice under two names, once per split (stefyste/RIAWELC#2: every test
    image a byte-for-byte copy of a training one; elcronos/COVID-19#51): a warning names the pair."""
    import shutil

    from apga.data import prepare_run_data

    csv = _csv_task(tmp_path)
    config = tiny_config(data_csv=str(csv), body_part=None, cache_dir=str(tmp_path / "cache"))
    prepare_run_data(config, 89)
    assert "byte-for-byte copies" not in capsys.readouterr().err
    shutil.copy(tmp_path / "img" / "train_003.png", tmp_path / "img" / "valid_001.png")
    prepare_run_data(config, 89)
    warned = capsys.readouterr().err
    assert "warning: 1 validation image(s) of " in warned
    assert "are byte-for-byte copies of training images (e.g. 'img/valid_001.png' = 'img/train_003.png')" in warned


def test_the_mura_folder_itself_as_data_root_says_to_pass_its_parent(tmp_path):
    """--data-root pointing at MURA-v1.1/ instead of the folder holding it (pyaf/DenseNet-MURA-PyTorch#14:
    the data root was the wrong level): one line naming the folder to pass."""
    from apga.data.mura import load_split

    (tmp_path / "MURA-v1.1").mkdir()
    (tmp_path / "MURA-v1.1" / "train_image_paths.csv").write_text("")
    with pytest.raises(DataError, match=rf"MURA-v1.1 is the MURA-v1.1 folder itself; .*--data-root {tmp_path}$"):
        load_split(tmp_path / "MURA-v1.1", "train")
