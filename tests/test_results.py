"""results.csv appends (also from concurrent processes) and the summary table."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pandas as pd
import pytest

from apga.reporting.summary import summarize, summarize_masks, to_markdown
from apga.reporting.results import RESULTS_FILE, read_results, rebuild
from apga.utils import atomic_write_json


def _finish(out, worker: int, i: int, **metrics):
    """What a finished run leaves: its result.json, carrying its row."""
    run_id = f"elbow-all-val/seed{worker}/m{i}"
    atomic_write_json(out / run_id / "result.json", {
        "body_part": "elbow", "seed": worker, "n_shot": "all", "method": f"m{i}", "variant": "",
        "model_selection": "val", "run_id": run_id, **metrics})


def _worker(args):
    out, worker = args
    for i in range(10):
        _finish(out, worker, i, accuracy=i / 10)
        rebuild(out)  # as a plain command does after each run


def test_concurrent_runs_and_rebuilds_lose_no_row(tmp_path):
    """Each worker writes a result, then rebuilds; rebuilds take turns, so the file the last one
    leaves holds every row."""
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_worker, [(tmp_path, w) for w in range(4)])
    table = read_results(tmp_path)  # as the last concurrent rebuild left it
    assert len(table) == 40 and table["run_id"].is_unique
    assert not list(tmp_path.glob(".results.csv.*"))  # no temporary file left behind


def test_the_index_is_rebuilt_identically_and_unions_columns(tmp_path):
    _finish(tmp_path, 89, 0, accuracy=0.5)
    _finish(tmp_path, 89, 1, accuracy=0.6, accuracy_tta=0.7)
    (tmp_path / "elbow-all-val" / "seed89" / "m2").mkdir()  # a run that has not finished: no row
    table = rebuild(tmp_path)
    assert table["method"].tolist() == ["m0", "m1"]
    assert pd.isna(table["accuracy_tta"][0]) and table["accuracy_tta"][1] == 0.7
    first = (tmp_path / RESULTS_FILE).read_bytes()
    (tmp_path / RESULTS_FILE).unlink()
    rebuild(tmp_path)
    assert (tmp_path / RESULTS_FILE).read_bytes() == first
    (tmp_path / "elbow-all-val" / "seed89" / "m1" / "result.json").unlink()  # a run trained anew loses its row
    assert rebuild(tmp_path)["method"].tolist() == ["m0"] == read_results(tmp_path)["method"].tolist()


def test_summary_paired_differences_with_their_interval():
    rows = []
    for seed, base, apga in ((89, 0.70, 0.75), (90, 0.80, 0.78), (91, 0.60, 0.66)):
        for method, accuracy in (("baseline", base), ("apga", apga)):
            rows.append({"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": seed,
                         "method": method, "variant": "", "accuracy": accuracy, "selection_evaluations": 4})
    rows.append({"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": 92, "method": "apga",
                 "variant": "", "accuracy": 0.99})  # a seed without a baseline: in the mean, not in the pairs
    summary = summarize(pd.DataFrame(rows)).set_index("method")
    apga = summary.loc["apga"]
    assert abs(apga["accuracy_mean"] - (0.75 + 0.78 + 0.66 + 0.99) / 4) < 1e-9
    # paired differences 0.05, -0.02, 0.06: mean 0.03, sd 0.04359, t(0.975, 2) = 4.3027
    assert abs(apga["delta"] - 0.03) < 1e-9 and apga["pairs"] == 3 and apga["wins"] == 2
    half = 4.302653 * 0.0435890 / 3 ** 0.5
    assert abs(apga["delta_low"] - (0.03 - half)) < 1e-5 and abs(apga["delta_high"] - (0.03 + half)) < 1e-5
    assert abs(summary.loc["baseline", "accuracy_std"] - 0.1) < 1e-9
    table = to_markdown(summarize(pd.DataFrame(rows)))
    assert "| elbow | all | val | apga | 4 | 0.795 ± 0.140 | +0.030 [-0.078, +0.138]† | 2/3 |" in table
    from apga.reporting.summary import render

    assert "† from 3 seed(s), fewer than 5: so few seeds give wide intervals" in render(pd.DataFrame(rows))
    five = pd.DataFrame([row | {"seed": row["seed"] + 10 * copy} for copy in range(2) for row in rows])
    assert "†" not in render(five)  # 6 pairs: no note


def test_mask_quality_summary_counts_collapsed_seeds():
    rows = [{"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": seed, "method": "apga",
             "variant": "rloo", "accuracy": 0.7, "location_gap_10": gap, "bone_precision_10": precision,
             "collapsed": collapsed} for seed, gap, precision, collapsed in ((1, 5.0, 0.9, 0), (2, 7.0, 0.7, 1))]
    rows.append({"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": 1, "method": "floor",
                 "variant": "random-boxes", "location_gap_10": 1.0, "bone_precision_10": 0.6})
    summary = summarize_masks(pd.DataFrame(rows)).set_index("method")
    assert summary.loc["apga[rloo]", "bone_precision_10"] == pytest.approx(0.8)
    assert summary.loc["apga[rloo]", "collapsed"] == "1/2" and summary.loc["floor[random-boxes]", "collapsed"] == ""
    assert list(summary.index) == ["apga[rloo]", "floor[random-boxes]"]


def test_the_report_deletes_the_plots_of_rows_it_leaves_out(tmp_path):
    """A body part whose rows are all superseded keeps no picture beside the summary."""
    from apga.reporting.summary import write

    rows = [{"body_part": part, "n_shot": "all", "model_selection": "val", "seed": seed, "method": method,
             "variant": "", "accuracy": accuracy, "auroc": accuracy, "location_gap_10": 0.1, "superseded": 0}
            for part in ("elbow", "wrist") for seed in (1, 2)
            for method, accuracy in (("baseline", 0.6 + seed / 100), ("apga", 0.62 + seed / 50))]
    table = pd.DataFrame(rows)
    write(table, tmp_path)
    assert {p.name for p in tmp_path.glob("*wrist*.png")} == {"accuracy_vs_shots-wrist.png",
                                                              "paired_differences-wrist.png",
                                                              "mask_quality-wrist-val.png"}
    table.loc[table["body_part"] == "wrist", "superseded"] = 1
    write(table, tmp_path)
    assert not list(tmp_path.glob("*wrist*.png")) and len(list(tmp_path.glob("*elbow*.png"))) == 3


def test_rows_of_runs_finished_by_an_older_version_are_kept_and_then_migrated(tiny_config, capsys):
    """Runs finished before result.json carried the row keep their row of the old results.csv, and
    the next command that reaches them writes it into their result.json."""
    import json

    from apga.experiment import run

    config = tiny_config(train_cutout=0, train_gradcam=0, train_end2end=0, train_apga=0, train_random=0)
    run(config)
    out = config.out_dir
    first = read_results(out)
    result = next(Path(out).glob("*/seed*/baseline/result.json"))
    row = json.loads(result.read_text())
    json.dump({k: v for k, v in row.items() if k not in ("run_id", "body_part", "method")}, result.open("w"))
    kept = rebuild(out)
    assert "written by an older version; 1 keep their row" in capsys.readouterr().err
    assert kept.query("method == 'baseline'")["accuracy"].tolist() == first.query("method == 'baseline'")["accuracy"].tolist()
    run(config)  # reaches the finished run: reused, and its row written into its result.json
    assert json.loads(result.read_text())["run_id"] == row["run_id"]
    assert "older version" not in capsys.readouterr().err


def test_rows_whose_baseline_is_being_trained_again_are_superseded(tmp_path):
    _finish(tmp_path, 89, 0, method="baseline", checkpoint_digest="a", data_fingerprint="f")
    atomic_write_json(tmp_path / "elbow-all-val/seed89/apga/result.json", {
        "body_part": "elbow", "seed": 89, "n_shot": "all", "method": "apga", "variant": "", "model_selection": "val",
        "run_id": "elbow-all-val/seed89/apga", "baseline_digest": "a", "data_fingerprint": "f", "accuracy": 0.7})
    assert rebuild(tmp_path).set_index("method").loc["apga", "superseded"] == 0
    (tmp_path / "elbow-all-val/seed89/m0/result.json").unlink()  # the baseline starts anew: its row is gone
    assert rebuild(tmp_path).set_index("method").loc["apga", "superseded"] == 1


def _markdown_rows(text: str, section: str) -> dict[str, dict[str, str]]:
    """The table under `## section` of a rendered summary: each row's cells by the header above them."""
    lines = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0].splitlines()
    table = [line for line in lines if line.startswith("|")]
    headers = [cell.strip() for cell in table[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert all(len(cells) == len(headers) for cells in rows)
    return {cells[headers.index("method")]: dict(zip(headers, cells)) for cells in rows}


def test_every_header_sits_over_its_own_column():
    """A results table whose every metric column holds its own value: each value of the summary's tables
    appears under the header declared for its column (the mask table once showed occlusion agreement under
    'mask sd' and mask sd under 'occlusion agr. 10%')."""
    from apga.evaluation.columns import BY_NAME, MASK_QUALITY
    from apga.reporting.summary import ACCURACY_MEANS, render

    values = {column: round(0.101 + 0.013 * i, 3) for i, column in enumerate(BY_NAME)}
    values |= {"collapsed": 0, "selection_evaluations": 7.0}
    identity = {"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": 89, "variant": ""}
    rows = [identity | {"method": "baseline", "accuracy": 0.5}, identity | {"method": "apga"} | values]
    text = render(pd.DataFrame(rows))
    masks, accuracy = _markdown_rows(text, "Mask quality")["apga"], _markdown_rows(text, "Accuracy")["apga"]
    assert masks["occlusion agr. 10%"] == f"{values['occlusion_agreement_10']:.3f}"  # the pair that was swapped
    assert masks["mask sd"] == f"{values['mask_sd']:.3f}"
    for column in MASK_QUALITY:
        assert masks[column.header] == ("0/1" if column.name == "collapsed" else column.shown(values[column.name]))
    for name in ACCURACY_MEANS:
        assert accuracy[BY_NAME[name].header] == BY_NAME[name].shown(values[name]), name
    assert accuracy["accuracy"] == f"{values['accuracy']:.3f}"


def test_the_report_finds_the_out_dirs_below_a_folder_and_a_failed_report_writes_nothing(tmp_path, capsys):
    """`python -m apga.report runs` after the demo (which writes runs/demo): the out-dir below is
    reported; a folder without runs is one line, exit 2, and no file left behind (no header-only
    results.csv, no lock)."""
    from apga.reporting.summary import main

    runs = tmp_path / "runs"
    for i, (method, accuracy) in enumerate((("baseline", 0.7), ("apga", 0.75))):
        _finish(runs / "demo", 89, i, method=method, accuracy=accuracy)
    main(str(runs))
    captured = capsys.readouterr()
    assert "reporting the out-dir(s) below it: " + str(runs / "demo") in captured.err
    assert "| elbow | all | val | apga | 1 | 0.750 | +0.050† | 1/1 |" in captured.out
    assert sorted(p.name for p in runs.iterdir()) == ["demo"]  # nothing written beside it
    assert sorted(read_results(runs / "demo")["method"]) == ["apga", "baseline"]

    empty = tmp_path / "empty"
    (empty / "elbow-all-val" / "seed89" / "baseline").mkdir(parents=True)  # a run that has not finished
    with pytest.raises(SystemExit) as exit_:
        main(str(empty))
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: no finished runs in") and "runs/demo" in last
    assert [p.name for p in empty.iterdir()] == ["elbow-all-val"]


def test_the_summary_names_a_collapsed_agent_and_the_split_it_reports():
    """A collapsed agent gets a line of its own (and one on the console when its run ends); a CSV task's
    report split is not called MURA's."""
    import json

    from apga.experiment import collapse_warning
    from apga.reporting.summary import render

    rows = [{"body_part": "task", "n_shot": "all", "model_selection": "val", "seed": seed, "method": method,
             "variant": "", "accuracy": 0.7, "location_gap_10": 0.1, "collapsed": collapsed, "policy_area": area,
             "config": json.dumps({"data_csv": "task.csv"})}
            for seed, method, collapsed, area in ((1, "baseline", None, None), (1, "apga", 1.0, 0.999),
                                                  (2, "apga", 0.0, 0.3))]
    text = render(pd.DataFrame(rows))
    assert "- **apga collapsed** in 1 of 2 seed(s) (task, n_shot all, val): its policy marks 99.9% of the" in text
    assert "MURA" not in text and "Image-level accuracy on the CSV task's rows of split 'valid'" in text
    assert "MURA's validation split" in render(pd.DataFrame(rows).assign(config=json.dumps({"data_csv": None})))
    assert "collapsed**" not in render(pd.DataFrame(rows).assign(collapsed=0.0))
    assert "apga's policy collapsed: it marks 99.9% of the pixels" in collapse_warning("apga", rows[1])
    assert collapse_warning("apga", rows[2]) is None


def test_a_damaged_result_json_is_named_left_out_and_trained_again(tiny_config, capsys):
    """A result.json that is `null`, a list or cut short (an edit, a full disk under a copy) was a
    TypeError traceback in every command that read the table, or a row dropped without a word. Now
    the report names each such file in one warning and leaves its run out, and the training command
    redoes exactly those runs, after which the table holds the same rows as before."""
    import json

    from apga.experiment import run

    config = tiny_config(train_cutout=0, train_end2end=0, train_apga=0, train_random=0)  # Grad-CAM: floors too
    run(config)
    out = Path(config.out_dir)
    before = read_results(out).set_index("run_id")
    cutout = next(out.glob("*/seed*/gradcam*/result.json"))
    floor = next(out.glob("*/seed*/floors/*/result.json"))
    cutout.write_text("null")
    floor.write_text(floor.read_text()[:40])
    capsys.readouterr()
    table = rebuild(out)
    err = capsys.readouterr().err
    assert "2 run(s)" in err and "damaged result.json" in err and str(cutout) in err and str(floor) in err
    assert len(table) == len(before) - 2 and "Traceback" not in err
    run(config)  # the same command: the two runs are done again, the others reused
    after = read_results(out).set_index("run_id")
    assert sorted(after.index) == sorted(before.index)
    assert json.loads(cutout.read_text())["run_id"] == str(cutout.parent.relative_to(out))
    assert after.loc[str(cutout.parent.relative_to(out)), "accuracy"] == before.loc[
        str(cutout.parent.relative_to(out)), "accuracy"]
    capsys.readouterr()
    rebuild(out)
    assert "damaged" not in capsys.readouterr().err
