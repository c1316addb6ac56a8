"""Write docs/flags.md from the config: `python docs/generate_flags.py` (a test keeps it in step)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apga.cli import config_flags  # noqa: E402
from apga.config import PRESETS  # noqa: E402

FLAGS_FILE = Path(__file__).resolve().parent / "flags.md"


def _shown(value) -> str:
    if value is None:
        return ""
    return f"`{int(value) if isinstance(value, bool) else value}`"


def flags_markdown() -> str:
    """The flags of `python apga_mura.py`, grouped, with their defaults and the cpu and demo presets'."""
    lines = ["# Flags of `python apga_mura.py`", "",
             "Generated from `apga/config.py` by `python docs/generate_flags.py`; `python apga_mura.py --help` "
             "shows the same. Every flag takes one value (`--name value`, `--name=value`; `--name` / `--noname` "
             "for 0/1 flags). A preset (`--preset cpu`, `--preset demo`, which `--demo` implies) sets the values "
             "in its column; a flag given on the command line wins over the preset. `python -m apga.sweep` takes "
             "every flag below except those it sets per cell (body part, n_shot, seed, runs, model selection, "
             "out-dir) and `--gpu-id` and `--resume`."]
    section = None
    for flag in config_flags():
        if flag.section != section:
            section = flag.section
            lines += ["", f"## {section}", "", "| flag | default | cpu | demo | what it does |", "|---|---|---|---|---|"]
        cpu, demo = PRESETS["cpu"].get(flag.name), PRESETS["demo"].get(flag.name)
        lines.append(f"| `--{flag.name.replace('_', '-')}` | {_shown(flag.default)} | {_shown(cpu)} | "
                     f"{_shown(demo)} | {flag.help.replace('|', '/')} |")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    FLAGS_FILE.write_text(flags_markdown())
    print(f"wrote {FLAGS_FILE}")
