"""APGA on MURA: `python apga_mura.py --body-part elbow` (see --help for every flag)."""
import fire

from apga.cli import main

if __name__ == "__main__":
    fire.Fire(main)
