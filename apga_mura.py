"""APGA on MURA: `python apga_mura.py --body-part elbow` (see --help for every flag)."""
from apga.cli import entry_point

if __name__ == "__main__":
    entry_point()
