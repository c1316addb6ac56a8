"""The generated data as a `--data-csv` task whose relevance region is the finding, not the bones.

    python benchmarks/finding_task.py datasets/cond-spurious --body-part elbow

writes `datasets/cond-spurious/elbow-finding.csv`: the body part's images of a generated data set
(`python -m apga.data.synthetic`), read in place, with the `mask` column naming each image's
finding mask (`MURA-v1.1-findings/`: the abnormality where the image shows one, empty for a normal
image). The oracle (`--train-oracle 1`) then keeps the finding alone: a perfect agent that marks
only what the label depends on, about 0.7 % of an image on average, 2 % of an abnormal one. The
images, labels, studies and patients are the MURA layout's, so seeds pair with runs on
`--data-root` (the same baselines); runs on the CSV are named after it (`elbow-finding`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apga.cli import script_command  # noqa: E402
from apga.data import mura  # noqa: E402
from apga.errors import APGAError, DataError  # noqa: E402
from apga.utils import configure_logging, error, storage_error  # noqa: E402

REGIONS = {"finding": mura.FINDING_DIR, "bone": mura.MASK_DIR}


def write_task(root: str | Path, body_part: str = "elbow", region: str = "finding") -> Path:
    """Write `<root>/<body_part>-<region>.csv` (path, label, split, study, patient, mask; paths
    relative to `root`) and return its path. Raises DataError when `root` holds no generated data
    with that region's masks."""
    root = Path(root)
    if region not in REGIONS:
        raise DataError(f"unknown --region {region!r}; choose one of {', '.join(REGIONS)}")
    if not (root / REGIONS[region]).is_dir():
        raise DataError(f"{root} has no {REGIONS[region]}/ folder; point to a data set written by "
                        f"python -m apga.data.synthetic")
    index = pd.concat([mura.select_body_part(mura.load_split(root, split), body_part) for split in mura.SPLITS])
    index["mask"] = [str(Path(REGIONS[region]) / Path(p).relative_to(mura.MURA_DIR)) for p in index["path"]]
    out = root / f"{body_part}-{region}.csv"
    partial = out.with_name(out.name + ".partial")
    try:
        index[["path", "label", "split", "study", "patient", "mask"]].to_csv(partial, index=False)
        partial.replace(out)  # a reader never sees half a table
    except OSError as problem:
        raise storage_error(Path(problem.filename or out), problem) from None
    return out


def main(root: str, body_part: str = "elbow", region: str = "finding") -> None:
    """Write ROOT/BODY_PART-REGION.csv: the generated images as a --data-csv task whose masks are REGION's."""
    configure_logging()
    try:
        csv = write_task(root, body_part, region)
    except APGAError as problem:
        error(str(problem))
        sys.exit(2)
    print(f"{len(pd.read_csv(csv))} images: {csv}")


COMMAND = script_command(main, "python benchmarks/finding_task.py [--flag VALUE ...]", paths=('root',))

if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
