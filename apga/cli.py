"""The command line: flags generated from `Config`, errors printed as one line."""
from __future__ import annotations

import dataclasses
import inspect
import sys

from apga.config import Config, field_help, make_config
from apga.errors import APGAError


def main(**flags) -> None:
    try:
        config = make_config(**flags)
        from apga.experiment import run  # heavy imports only once the flags are valid

        run(config)
    except APGAError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)


# Fire reads the signature and the docstring's Args section: one flag per Config field.
main.__signature__ = inspect.Signature([
    inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in dataclasses.fields(Config)
])
main.__doc__ = (
    "Train the DenseNet baseline on one MURA body part, then Cutout, Grad-CAM masking, end-to-end masking,\n"
    "APGA and the random-mask floor fine-tuned from it; results go to <out-dir>/results.csv.\n\n"
    "Args:\n" + "".join(f"    {name}: {text}\n" for name, text in field_help().items())
)


def unknown_flags(argv: list[str]) -> list[str]:
    """The `--flags` of `argv` that are no setting (Fire would run the whole experiment before
    complaining about them). `--name=value`, `--name value`, `--noname` and `-` or `_` all count."""
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = []
    for arg in argv:
        if not arg.startswith("--") or arg in ("--", "--help"):
            continue
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name not in known and not (name.startswith("no") and name[2:] in known):
            unknown.append(arg.split("=", 1)[0])
    return unknown


def entry_point(argv: list[str] | None = None) -> None:
    """`python apga_mura.py` and the `apga-mura` console script: unknown flags are refused first."""
    import fire

    argv = sys.argv[1:] if argv is None else list(argv)
    unknown = unknown_flags(argv)
    if unknown:
        print(f"error: unknown flag(s) {', '.join(unknown)}; see --help for the list", file=sys.stderr)
        sys.exit(2)
    fire.Fire(main, command=argv)
