"""The pictures a researcher reads: mask galleries and overlays (apga/reporting/gallery.py) and the
report's plots (apga/reporting/plots.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apga.reporting import gallery


def _pictures(maps: np.ndarray) -> gallery.MaskPictures:
    """MaskPictures of len(maps) images (S, S) with the given maps: a grey ramp image, the top half kept."""
    count, size = maps.shape[0], maps.shape[1]
    image = np.tile(np.linspace(0, 1, size), (count, size, 1))
    keep = np.zeros_like(maps, dtype=bool)
    keep[:, : size // 2] = True
    return gallery.MaskPictures(image, maps, np.where(keep, 0, image), np.where(keep, image, 0), keep,
                                np.linspace(0.1, 0.9, count))


def test_a_near_constant_map_is_drawn_flat_on_the_fixed_scale_and_said_to_be():
    """A collapsed agent's map (0.990-0.999) is not stretched into structure: its tile is one colour,
    the scale's colour of its value, and labelled; a map that varies keeps its values' colours."""
    rng = np.random.default_rng(0)
    flat = 0.99 + 0.009 * rng.random((1, 16, 16))
    tile = np.asarray(gallery.tiles(_pictures(flat), 0, 64))[:, 64:128]  # the map column
    body = tile[24:]  # below the label
    allowed = {tuple(colour) for colour in gallery._colours()[252:]}  # the scale's colours of 0.99-1
    assert {tuple(colour) for colour in body.reshape(-1, 3)} <= allowed
    assert (tile[:20] == 255).all(axis=2).any()  # the white text of 'flat map'
    varied = np.zeros((1, 16, 16))
    varied[0, :, 8:] = 0.3
    tile = np.asarray(gallery.tiles(_pictures(varied), 0, 64))[:, 64:128]
    assert (tile[40, 10] == gallery._colours()[0]).all() and (tile[40, 50] == gallery._colours()[round(0.3 * 255)]).all()
    assert not gallery.is_flat(varied[0]) and gallery.is_flat(flat[0])


def test_the_image_tile_outlines_the_truth_and_each_row_says_label_and_probability():
    maps = np.full((2, 16, 16), 0.5)
    bone = np.zeros((2, 16, 16), dtype=bool)
    bone[:, 4:12, 4:12] = True
    image_tile = np.asarray(gallery.tiles(_pictures(maps), 0, 64, {"bone": bone[0]}))[:, :64]
    green = (image_tile == gallery.TRUTH_COLOURS["bone"]).all(axis=2)
    assert green[16:48, 16].all() and green[16, 16:48].all()  # the square's edge, 4 px per model pixel
    assert not green[24:40, 24:40].any() and not green[:14].any()  # neither inside nor outside it
    assert gallery.caption(0.834, 1.0) == "label: abnormal · p(abnormal) 0.83"
    assert gallery.caption(0.1, float("nan")) == "label unknown · p(abnormal) 0.10"
    picture = gallery.gallery_picture(_pictures(maps), np.array([0, 1]), {"bone": bone}, tile=64, title="run")
    assert picture.width == 4 * 64 and picture.height > 2 * 64 + 2 * 18  # a caption band over each row


def test_the_overlay_draws_the_map_and_the_kept_region_on_the_radiograph_under_its_probabilities():
    """apga.predict's overlay: the radiograph blended with the map on its fixed scale, the kept region
    outlined in cyan, and the image's lines (its name, label and probabilities) in the band above it."""
    maps = np.zeros((1, 16, 16))
    maps[0, :, 8:] = 1.0  # the right half marked
    pictures = _pictures(maps)  # a grey ramp, the top half kept
    lines = ["image1.png", "label: abnormal · p(abnormal) 0.83"]
    picture = np.asarray(gallery.overlay_picture(pictures, 0, lines, size=64, tile=32))
    band = gallery._text_band(64, [part for line in lines for part in gallery._wrapped(line, 64, 13)]).height
    over = picture[band:band + 64, :64].astype(int)
    grey = np.linspace(0, 1, 16)[np.arange(64) * 16 // 64] * 255
    colours = gallery._colours()
    for column, value in ((10, 0), (50, 255)):  # unmarked and marked, below the kept region's edge
        expected = (0.55 * grey[column].round() + 0.45 * colours[value]).round()
        assert (over[48, column] == expected).all(), column
    cyan = (over == gallery.KEPT_COLOUR).all(axis=2)
    assert cyan[30, 10:54].all() and not cyan[34:].any()  # the kept top half's lower edge, nothing below it
    assert (picture[:band, :64] == gallery.TEXT).all(axis=2).sum() > 20  # the lines are written
    assert not (picture[band:band + 64, :64] == gallery.TEXT).all(axis=2)[34:, :].any()  # not over the image


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots save, by file name, kept open to read their text."""
    from apga.reporting import plots

    figures = {}

    def keep(figure, path):
        figures[path.name] = figure
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield figures
    plots._pyplot().close("all")


def _texts(figure) -> str:
    parts = [figure._suptitle.get_text() if figure._suptitle else ""]
    for axis in figure.axes:
        parts += [axis.get_title(), axis.get_xlabel(), axis.get_ylabel()]
        parts += [tick.get_text() for tick in axis.get_xticklabels() + axis.get_yticklabels()]
        legend = axis.get_legend()
        parts += [text.get_text() for text in legend.get_texts()] if legend else []
    return "\n".join(parts)


def _rows(seeds, methods=(("baseline", 0.70), ("apga", 0.72))):
    from apga.reporting.summary import _prepared

    rows = [{"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": seed, "method": method,
             "variant": "", "accuracy": accuracy + seed / 1000, "auroc": accuracy + 0.1,
             "run_id": f"elbow-all-val/seed{seed}/{method}"} for seed in seeds for method, accuracy in methods]
    return _prepared(pd.DataFrame(rows))


def test_plots_say_how_many_seeds_they_show_and_which_direction_is_better(drawn, tmp_path):
    from apga.reporting import plots
    from apga.reporting.summary import summarize

    plots.plot_shots(_rows([89]), tmp_path)
    text = _texts(drawn["accuracy_vs_shots-elbow.png"])
    assert "1 seed: no interval" in text and "apga (1 seed)" in text and "accuracy (↑ better)" in text
    plots.plot_shots(_rows([89, 90, 91]), tmp_path)
    figure = drawn["accuracy_vs_shots-elbow.png"]
    assert "3 seeds: mean and 95 % t interval" in _texts(figure) and "AUROC (↑ better)" in _texts(figure)
    caps = [line for axis in figure.axes for line in axis.get_lines() if line.get_marker() == "_"]
    assert caps  # the intervals are drawn
    plots.plot_paired(summarize(_rows([89])), tmp_path)
    text = _texts(drawn["paired_differences-elbow.png"])
    assert "1 seed, no interval" in text and "1 seed: no interval" in text and "better than the baseline" in text


def test_the_mask_quality_plot_keeps_the_floors_apart_from_the_methods(drawn, tmp_path):
    from apga.reporting import plots

    rows = [{"body_part": "elbow", "n_shot": "all", "model_selection": "val", "seed": seed, "method": method,
             "variant": variant, "location_gap_10": gap + seed / 100, "bone_precision_10": 0.6}
            for seed in (89, 90) for method, variant, gap in
            (("floor", "random-boxes", 0.3), ("apga", "", 0.5), ("floor", "brightest", -1.0), ("gradcam", "", 0.1))]
    from apga.reporting.summary import _prepared

    plots.plot_mask_quality(_prepared(pd.DataFrame(rows)), tmp_path)
    axis = drawn["mask_quality-elbow-val.png"].axes[0]
    ticks = [tick.get_text().split("\n")[0] for tick in axis.get_xticklabels()]
    assert ticks == ["gradcam", "apga", "floor[brightest]", "floor[random-boxes]"]  # methods first, then floors
    assert [bar.get_hatch() for bar in axis.patches] == [None, None, "///", "///"]
    assert [tick.get_style() for tick in axis.get_xticklabels()] == ["normal", "normal", "italic", "italic"]
    assert "2 seeds" in _texts(drawn["mask_quality-elbow-val.png"])
    assert any(line.get_linestyle() == "--" and line.get_xdata()[0] == 1.5 for line in axis.get_lines())


def test_the_report_draws_each_methods_roc_from_its_runs_predictions(drawn, tmp_path):
    """A curve per seed, image and study level, with the AUROC of the run's own predictions."""
    from sklearn.metrics import roc_auc_score

    from apga.reporting import plots

    rng = np.random.default_rng(0)
    table = _rows([89, 90])
    aurocs = {}
    for run_id in table["run_id"]:
        labels = np.arange(40) % 2
        frame = pd.DataFrame({"path": [f"p{i}.png" for i in range(40)], "study": [f"s{i % 20}" for i in range(40)],
                              "label": labels, "probability": np.clip(labels * 0.3 + rng.random(40) * 0.7, 0, 1)})
        (tmp_path / run_id).mkdir(parents=True)
        frame.to_csv(tmp_path / run_id / plots.REPORT_PREDICTIONS_FILE, index=False)
        aurocs[run_id] = roc_auc_score(frame["label"], frame["probability"])
    plots.plot_roc(table, tmp_path)
    figure = drawn["roc-elbow-all-val.png"]
    image, study = figure.axes
    apga = [aurocs[r] for r in table["run_id"] if r.endswith("apga")]
    assert f"apga: AUROC {np.mean(apga):.3f}" in _texts(figure) and "(2 seeds)" in _texts(figure)
    assert len(image.get_lines()) == len(study.get_lines()) == 2 * 2 + 1  # a curve per seed and method, and chance
    assert "study level" in study.get_title()


def test_training_curves_count_epochs_in_whole_numbers(drawn, tmp_path):
    from apga.reporting import plots

    history = tmp_path / "metrics.csv"
    pd.DataFrame({"epoch": [1.0, 1.5, 2.0], "train_clean_loss": [0.7, np.nan, 0.6],
                  "val_accuracy": [0.6, 0.62, 0.65]}).to_csv(history, index=False)
    plots.plot_curves(history, tmp_path / "curves.png")
    figure = drawn["curves.png"]
    figure.canvas.draw()
    for axis in figure.axes:
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
