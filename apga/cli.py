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
        from apga.runner import run  # heavy imports only once the flags are valid

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


def entry_point() -> None:
    """`apga-mura` console script (same flags as `python apga_mura.py`)."""
    import fire

    fire.Fire(main)
