"""Every metric column of results.csv, declared once.

A `Column` holds a metric's name (in result.json and results.csv), the header that tables and plot
axes show, its decimals, which direction is better, and what it measures. results.csv's column
order, the summary's tables (apga/reporting/summary.py), the plots' axes (apga/reporting/plots.py)
and the tables of docs/method.md and docs/outputs.md (docs/generate_tables.py) all read these
declarations, so a header cannot sit over another column's values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Column:
    name: str                 # in result.json and results.csv
    header: str               # over a table's column and on a plot's axis
    meaning: str              # what it measures (docs)
    digits: int = 3           # decimals in tables
    better: str = ""          # HIGHER, LOWER, or "" where neither is (a spread, a count, an area)
    needs_truth: bool = False  # needs ground-truth masks (the generated data has them, MURA does not)

    def shown(self, value) -> str:
        """`value` as a table cell: `digits` decimals, '' for NaN; text as it is."""
        if isinstance(value, (float, np.floating)):
            return "" if math.isnan(value) else f"{value:.{self.digits}f}"
        return str(value)

    @property
    def direction(self) -> str:
        """'higher is better', 'lower is better' or ''."""
        return f"{self.better} is better" if self.better else ""

    @property
    def axis_label(self) -> str:
        """The header with its better direction, for a plot's axis."""
        arrow = {HIGHER: " (↑ better)", LOWER: " (↓ better)"}.get(self.better, "")
        return self.header + arrow


CLASSIFICATION = (
    Column("accuracy", "accuracy", "image-level accuracy (abnormal above 0.5)", better=HIGHER),
    Column("accuracy_tta", "accuracy (TTA)", "image-level accuracy of the mean of the image's and the kept "
           "region's probability (masking methods; the paper's test-time augmentation)", better=HIGHER),
    Column("auroc", "AUROC", "image-level area under the ROC curve", better=HIGHER),
    Column("kappa", "κ", "image-level Cohen's kappa", better=HIGHER),
    Column("study_accuracy", "study accuracy", "MURA's protocol: a study's probability is the mean of its "
           "images'", better=HIGHER),
    Column("study_accuracy_tta", "study accuracy (TTA)", "study-level accuracy of the TTA probabilities",
           better=HIGHER),
    Column("study_auroc", "study AUROC", "study-level area under the ROC curve", better=HIGHER),
    Column("study_kappa", "study κ", "study-level Cohen's kappa", better=HIGHER),
)

MASK_QUALITY = (
    Column("bone_precision_10", "bone prec. 10%", "share of the map's top 10 % pixels inside the relevance "
           "region (chance: its share of the image)", better=HIGHER, needs_truth=True),
    Column("bone_precision_30", "bone prec. 30%", "the same for the top 30 %", better=HIGHER, needs_truth=True),
    Column("finding_cover_10", "finding cover 10%", "on images with a visible finding, the share of it the top "
           "10 % covers", better=HIGHER, needs_truth=True),
    Column("pointing_hit", "pointing hit", "on images with a finding, whether the map's maximum lies in it "
           "(ties share: a flat map scores the finding's area)", better=HIGHER, needs_truth=True),
    Column("bone_auroc", "bone AUROC", "pixel AUROC of the map against the relevance region, per image",
           better=HIGHER, needs_truth=True),
    Column("finding_auroc", "finding AUROC", "pixel AUROC of the map against the finding, per image",
           better=HIGHER, needs_truth=True),
    Column("location_gap_10", "location gap 10%", "CE increase from blanking the top 10 % minus the increase "
           "from blanking the same mask rolled by half the image", better=HIGHER),
    Column("swap_gap_10", "swap gap 10%", "the same against the mask of another patient's image of the batch "
           "(the nearest earlier one): ≈ 0 for any mask that ignores the image", better=HIGHER),
    Column("occlusion_agreement_10", "occlusion agr. 10%", "share of the top 10 % inside the top 10 % of the "
           "classifier's own occlusion map (per-cell CE increase, 8 x 8 cells; Zeiler & Fergus 2014; checked "
           "against Captum's `Occlusion`)", better=HIGHER),
    Column("mask_sd", "mask sd", "across-image standard deviation of the map, mean over pixels: ≈ 0 for a map "
           "that ignores the image (on the map's own scale)"),
    Column("collapsed", "collapsed", "1 when the policy's area (the mean of `p > 0.5`, or of `p` for sampling "
           "estimators) is outside [0.02, 0.98]; the summary counts the seeds", digits=0, better=LOWER),
)

OTHER = (
    Column("policy_area", "policy area", "the share of pixels the policy marks (what `collapsed` is read from)"),
    Column("mask_area", "mask area", "the share of each image the method keeps"),
    Column("keep_area", "keep area", "the random floor's kept area (its APGA's selected area)"),
    Column("mask_iou", "mask IoU", "IoU of the kept region with the relevance region (rewards collapse; kept "
           "for comparison with earlier results)", needs_truth=True),
    Column("mask_recall", "mask recall", "recall of the relevance region by the kept region (rewards collapse)",
           needs_truth=True),
    Column("kept_accuracy", "kept accuracy", "accuracy with the classifier shown only the kept region",
           better=HIGHER),
    Column("removed_accuracy", "removed accuracy", "accuracy with the kept region blanked (lower: the region "
           "mattered)", better=LOWER),
    Column("selection_accuracy", "selection accuracy", "accuracy of the selected checkpoint on the selection "
           "split", better=HIGHER),
    Column("selection_evaluations", "selection evals", "how many evaluations of the selection split the "
           "checkpoint was chosen among (under `val`, more means more optimism)", digits=1),
    Column("best_epoch", "best epoch", "the selected checkpoint's epoch", digits=2),
    Column("epochs_trained", "epochs", "epochs trained", digits=0),
)

METRICS = CLASSIFICATION + MASK_QUALITY + OTHER
BY_NAME = {column.name: column for column in METRICS}
