"""The ceiling: the oracle's kept-region step on ground-truth masks, its random floor, the scheme
without clean steps, and the share of the ceiling a masking method recovers."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from apga.data import prepare_run_data
from apga.errors import DataError
from apga.experiment import oracle_area, run, stages
from apga.methods import METHODS, build_method
from apga.reporting.results import read_results
from apga.reporting.summary import ceiling_to_markdown, summarize_ceiling
from apga.training.loop import model_batch

ONLY = dict(train_cutout=0, train_gradcam=0, train_end2end=0, train_apga=0)


def test_the_oracle_keeps_exactly_the_ground_truth_region(tiny_config):
    config = tiny_config(body_part="elbow")
    data = prepare_run_data(config, seed=1)
    batch = model_batch(data.train.dataset.__getitems__(list(range(6))), torch.device("cpu"))
    assert set(batch) == {"image", "label", "bone"} and set(batch["bone"].unique().tolist()) == {0.0, 1.0}
    method = build_method("oracle", config, torch.device("cpu"))
    kept = []
    original = method.kept_region_phase
    method.kept_region_phase = lambda images, labels, keep: kept.append(keep) or original(images, labels, keep)
    logs = {k: v for phase in method.phases(batch) for k, v in phase.logs.items()}
    assert torch.equal(kept[0], batch["bone"]) and "clean_loss" in logs
    assert math.isclose(logs["keep_area"].item(), batch["bone"].mean().item(), rel_tol=1e-6)
    assert method.mask_probabilities(batch["image"]) is None  # new images have no ground truth


def test_without_the_clean_step_only_the_masked_step_trains(tiny_config):
    config = tiny_config(body_part="elbow", clean_step=False, estimator="rloo")
    batch = model_batch(prepare_run_data(config, seed=1).train.dataset.__getitems__(list(range(6))),
                        torch.device("cpu"))
    for name in ("oracle", "random", "cutout", "gradcam", "apga"):
        method = build_method(name, config, torch.device("cpu"), keep_area=0.3) if name == "random" else \
            build_method(name, config, torch.device("cpu"))
        method.generator = torch.Generator().manual_seed(0)
        phases = list(method.phases(batch))
        assert all("clean_loss" not in phase.logs for phase in phases), name
        assert method.variant.endswith("noclean"), (name, method.variant)
    assert METHODS["baseline"](config, None).variant == ""  # the baseline always trains on clean images


def test_the_floors_area_is_a_setting(tiny_config):
    config = tiny_config(body_part="elbow")
    data = prepare_run_data(config, seed=1)
    from_files = np.mean([(np.asarray(Image.open(Path(config.data_root) / "MURA-v1.1-masks" / p.removeprefix("MURA-v1.1/")))
                           > 0).mean() for p in data.train.index["path"]])  # each mask at its own size
    assert oracle_area(data) == pytest.approx(from_files, abs=0.02) and 0.2 < oracle_area(data) < 0.8
    assert METHODS["random"](tiny_config(floor_area="oracle"), None).variant == "oraclearea"
    assert METHODS["random"](tiny_config(floor_area=0.25, fill="blur"), None).variant == "area0.25-blurfill"
    assert METHODS["random"](tiny_config(estimator="rloo"), None).variant == "rloo"  # APGA's, by default
    with pytest.raises(Exception, match="--floor-area must be apga, oracle or a number in"):
        tiny_config(floor_area="large")
    chosen = [(name, settings.floor_area) for name, settings in stages(tiny_config(**ONLY, train_oracle=1))]
    assert chosen == [("baseline", "apga"), ("oracle", "apga"), ("random", "apga"), ("random", "oracle")]
    chosen = [(name, settings.floor_area) for name, settings in stages(tiny_config(**ONLY, train_oracle=1, train_random=0))]
    assert chosen == [("baseline", "apga"), ("oracle", "apga"), ("random", "oracle")]  # the ceiling keeps its floor
    chosen = [(name, settings.floor_area) for name, settings in
              stages(tiny_config(**ONLY, train_oracle=1, floor_area="oracle"))]
    assert chosen == [("baseline", "oracle"), ("oracle", "oracle"), ("random", "oracle")]


def test_the_oracle_trains_beside_the_floor_of_its_area(tiny_config):
    config = tiny_config(**ONLY, train_oracle=1)
    run(config)
    table = read_results(config.out_dir).fillna({"variant": ""})
    rows = table[table["method"] != "floor"].set_index(["method", "variant"], drop=False)
    assert {("baseline", ""), ("oracle", ""), ("random", ""), ("random", "oraclearea")} <= set(rows.index)
    oracle = rows.loc[("oracle", "")]
    assert oracle["bone_precision_10"] == 1.0 and 0 <= oracle["kept_accuracy"] <= 1  # its map is the truth
    assert math.isnan(oracle["collapsed"]) and math.isnan(rows.loc[("random", "oraclearea"), "collapsed"])  # given masks
    floor = rows.loc[("random", "oraclearea")]
    assert floor["keep_area"] == pytest.approx(oracle_area(prepare_run_data(config, seed=89)))
    assert rows.loc[("random", ""), "keep_area"] == 0.5  # no APGA in this command: the default area


def test_the_oracle_needs_ground_truth(tiny_data, tmp_path, tiny_config):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root, ignore=shutil.ignore_patterns("MURA-v1.1-masks", "MURA-v1.1-findings"))
    with pytest.raises(DataError, match="--train-oracle 1 needs the ground-truth relevance mask of every image"):
        run(tiny_config(**ONLY, train_oracle=1, data_root=str(root)))
    config = tiny_config(**ONLY, floor_area="oracle", data_root=str(root))
    with pytest.raises(DataError, match="--floor-area oracle needs the ground-truth relevance mask"):
        run(config)
    assert not list(Path(config.out_dir).rglob("*.pt"))  # refused before anything trained


def test_a_csv_task_gives_the_oracle_its_masks(tiny_data, tmp_path, tiny_config):
    from apga.data import mura

    rows = pd.concat([mura.select_body_part(mura.load_split(tiny_data, split), "elbow") for split in ("train", "valid")])
    rows["mask"] = ["MURA-v1.1-masks/" + p.removeprefix("MURA-v1.1/") for p in rows["path"]]
    csv = tiny_data / "with-masks.csv"
    rows[["path", "label", "split", "study", "patient", "mask"]].to_csv(csv, index=False)
    config = tiny_config(data_csv=str(csv), body_part=None, out_dir=str(tmp_path / "runs"))
    data = prepare_run_data(config, seed=89)
    mura_data = prepare_run_data(tiny_config(body_part="elbow"), seed=89)
    assert np.array_equal(data.train.dataset.truths["bone"][data.train.dataset.rows],
                          mura_data.train.dataset.truths["bone"][mura_data.train.dataset.rows])
    blank = rows.copy()
    blank.iloc[2, blank.columns.get_loc("mask")] = ""
    blank[["path", "label", "split", "study", "patient", "mask"]].to_csv(csv, index=False)
    with pytest.raises(DataError, match="line 4: the mask cell is empty"):
        prepare_run_data(config, seed=89)
    # the masks are part of the data's identity: another mask, another fingerprint
    rows[["path", "label", "split", "study", "patient", "mask"]].to_csv(csv, index=False)
    assert prepare_run_data(config, seed=89).fingerprint == data.fingerprint
    first = tiny_data / rows["mask"].iloc[0]
    region = np.asarray(Image.open(first))
    changed = tmp_path / "changed-mask.png"
    Image.fromarray(np.ascontiguousarray(region[::-1])).save(changed)
    moved = rows.copy()
    moved.iloc[0, moved.columns.get_loc("mask")] = os.path.relpath(changed, tiny_data)
    moved[["path", "label", "split", "study", "patient", "mask"]].to_csv(csv, index=False)
    assert prepare_run_data(config, seed=89).fingerprint != data.fingerprint
    # masks that mark nothing (a wrong column, all zeros) are refused, not trained on as empty
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros_like(region)).save(empty)
    nothing = rows.copy()
    nothing["mask"] = os.path.relpath(empty, tiny_data)
    nothing[["path", "label", "split", "study", "patient", "mask"]].to_csv(csv, index=False)
    with pytest.raises(DataError, match="every mask of the .* rows is empty"):
        prepare_run_data(config, seed=89)


def test_the_finding_task_gives_the_oracle_the_findings_alone(tiny_data, tmp_path, tiny_config):
    """benchmarks/finding_task.py: the same images, with each image's finding as its relevance mask."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("finding_task", Path(__file__).parent.parent / "benchmarks" /
                                                  "finding_task.py")
    finding_task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finding_task)
    csv = finding_task.write_task(tiny_data, "elbow", "finding")
    assert csv == tiny_data / "elbow-finding.csv"
    data = prepare_run_data(tiny_config(data_csv=str(csv), body_part=None), seed=89)
    mura_data = prepare_run_data(tiny_config(body_part="elbow"), seed=89)
    same = ["path", "label", "study", "patient"]  # the MURA layout's images, labels and pairing, split by split
    for split in ("train", "select", "report"):
        got, want = (getattr(d, split).index[same].reset_index(drop=True) for d in (data, mura_data))
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    got, truth = (d.report.dataset for d in (data, mura_data))
    assert np.array_equal(got.truths["bone"][got.rows], truth.truths["finding"][truth.rows])
    train = data.train.dataset
    marked = train.truths["bone"][train.rows].reshape(len(train.rows), -1).any(1)
    labels = data.train.index["label"].to_numpy()
    assert marked.any() and not marked[labels == 0].any()  # a normal image has no finding: nothing to keep
    batch = model_batch(train.__getitems__(list(range(len(train.rows)))), torch.device("cpu"))
    keep = build_method("oracle", tiny_config(), torch.device("cpu")).mask_probabilities(batch["image"], batch)
    assert keep[batch["label"] == 0].sum() == 0 and keep.mean() < 0.1
    with pytest.raises(DataError, match="no MURA-v1.1-findings/ folder"):
        finding_task.write_task(tmp_path, "elbow")


def _row(seed, method, variant, accuracy) -> dict:
    """A results row of the elbow, all images, `val`."""
    return {"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": seed,
            "method": method, "variant": variant, "accuracy": accuracy}


def _rows(oracle, floor, method, seeds=(1, 2, 3, 4, 5), metric="accuracy"):
    table = []
    for i, seed in enumerate(seeds):
        for name, variant, values in (("baseline", "", [0.6] * 5), ("oracle", "", oracle),
                                      ("random", "oraclearea", floor), ("apga", "rloo", method)):
            table.append(_row(seed, name, variant, values[i]) | {metric: values[i]})
    return pd.DataFrame(table)


def test_gain_recovered_is_the_share_of_the_ceiling_a_method_reaches():
    oracle = [0.70, 0.72, 0.69, 0.71, 0.73]
    floor = [0.60, 0.61, 0.60, 0.62, 0.60]
    method = [0.65, 0.67, 0.64, 0.66, 0.67]  # half of each seed's ceiling, up to noise
    summary = summarize_ceiling(_rows(oracle, floor, method))
    apga = summary[(summary["method"] == "apga[rloo]") & (summary["metric"] == "accuracy")].iloc[0]
    ceiling = np.subtract(oracle, floor)
    assert apga["ceiling"] == pytest.approx(ceiling.mean()) and apga["ceiling_low"] > 0
    assert apga["recovered"] == pytest.approx(np.subtract(method, floor).mean() / ceiling.mean())
    assert apga["recovered_low"] < apga["recovered"] < apga["recovered_high"]
    assert "| elbow | all | val | accuracy | apga[rloo] | 5 |" in ceiling_to_markdown(summary)


def test_no_ceiling_no_share():
    """An oracle level with its floor: nothing to recover, and the table says so."""
    floor = [0.60, 0.61, 0.60, 0.62, 0.60]
    oracle = [0.61, 0.60, 0.61, 0.61, 0.60]
    summary = summarize_ceiling(_rows(oracle, floor, [0.62] * 5))
    apga = summary[(summary["method"] == "apga[rloo]") & (summary["metric"] == "accuracy")].iloc[0]
    assert apga["ceiling_low"] <= 0 and math.isnan(apga["recovered"])
    assert "no ceiling" in ceiling_to_markdown(summary)


def test_a_method_is_measured_against_the_ceiling_and_floor_of_its_own_scheme():
    """apga[rloo-frozenbn] sits between oracle[frozenbn] and random[oraclearea-frozenbn], never the
    paper-scheme oracle's; seeds missing from the ceiling are left out of every column alike."""
    rows = []
    for seed in (1, 2, 3, 4, 5):
        for name, variant, value in (("oracle", "", 0.60), ("random", "oraclearea", 0.60),
                                     ("oracle", "frozenbn", 0.70 + seed / 1000), ("random", "oraclearea-frozenbn", 0.60),
                                     ("apga", "rloo-frozenbn", 0.65), ("apga", "rloo", 0.66)):
            if name == "oracle" and variant == "frozenbn" and seed == 5:
                continue  # seed 5's frozen-norm oracle did not run
            rows.append(_row(seed, name, variant, value + (0.3 if seed == 5 and name == "apga" else 0)))
    summary = summarize_ceiling(pd.DataFrame(rows))
    summary = summary[summary["metric"] == "accuracy"].set_index("method")
    frozen = summary.loc["apga[rloo-frozenbn]"]
    assert frozen["seeds"] == 4 and frozen["gain"] == pytest.approx(0.05)  # seed 5 (+0.3) left out
    assert frozen["ceiling"] == pytest.approx(0.1025) and frozen["recovered"] == pytest.approx(0.05 / 0.1025)
    assert "apga[rloo]" in summary.index and math.isnan(summary.loc["apga[rloo]", "recovered"])  # no ceiling there
    assert summary.loc["apga[rloo]", "ceiling"] == pytest.approx(0.0)


def test_a_method_with_fewer_seeds_than_the_oracle_shows_the_ceiling_of_its_own_seeds():
    """Oracle and floor over 10 seeds, the agent over the first 5: the agent's row gives the ceiling
    of those 5 seeds, the one its gain recovered divides by; the oracle's row all 10."""
    rows = []
    for seed in range(1, 11):
        for name, variant, value in (("oracle", "", 0.70 + (0.05 if seed > 5 else 0) + seed / 1000),
                                     ("random", "oraclearea", 0.60), ("apga", "rloo", 0.65), ("end2end", "", 0.62)):
            if (name == "apga" and seed > 5) or (name == "end2end" and seed > 1):
                continue
            rows.append(_row(seed, name, variant, value))
    summary = summarize_ceiling(pd.DataFrame(rows))
    summary = summary[summary["metric"] == "accuracy"].set_index("method")
    agent, oracle = summary.loc["apga[rloo]"], summary.loc["oracle"]
    assert agent["seeds"] == 5 and agent["ceiling"] == pytest.approx(0.103)
    assert agent["recovered"] == pytest.approx(0.05 / agent["ceiling"])
    assert oracle["seeds"] == 10 and oracle["ceiling"] == pytest.approx(0.1305)
    assert summary.loc["end2end", "seeds"] == 1  # one seed shared: no interval, said as such
    assert "| end2end | 1 | +0.101 | +0.020 | too few seeds |" in ceiling_to_markdown(summary.reset_index())


def test_a_swapped_background_is_a_scheme_of_its_own():
    """apga[rloo-frozenbn-swapbg] is measured between the swapped-background oracle and floor."""
    rows = []
    for seed in (1, 2, 3, 4, 5):
        for name, variant, value in (("oracle", "frozenbn", 0.61), ("random", "oraclearea-frozenbn", 0.60),
                                     ("oracle", "frozenbn-swapbg", 0.70 + seed / 1000),
                                     ("random", "oraclearea-frozenbn-swapbg", 0.60),
                                     ("apga", "rloo-frozenbn-swapbg", 0.65), ("apga", "rloo-frozenbn", 0.65)):
            rows.append(_row(seed, name, variant, value))
    summary = summarize_ceiling(pd.DataFrame(rows))
    summary = summary[summary["metric"] == "accuracy"].set_index("method")
    swapped = summary.loc["apga[rloo-frozenbn-swapbg]"]
    assert swapped["ceiling"] == pytest.approx(0.103) and swapped["recovered"] == pytest.approx(0.05 / 0.103)
    assert summary.loc["apga[rloo-frozenbn]", "ceiling"] == pytest.approx(0.01)  # the fill scheme's own ceiling
