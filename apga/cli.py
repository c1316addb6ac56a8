"""The command lines: settings checked before anything runs, help that fits on a screen.

Fire turns the command line into a call. Before it does, `Command.run` answers `--help` or `-h`
wherever it stands (Fire would train first in some positions), and refuses, in one line with exit
code 2, what Fire would only notice after the call: unknown flags (with the nearest known one),
single-dash abbreviations, and words that are no flag's value (`elbow --demo`, `--n-shot 25 50`).

A path is a path, whatever its characters: Fire reads every value as a Python literal (`20241130`
becomes an int, `1_000` the int 1000, `runs#2` the text `runs`, `a,b` a tuple), so the values of
path flags (metavar DIR, FILE or PATH) and path positionals reach the function as the text that
was typed, with `~` and `~user` expanded (`apga.utils.expand_path`).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass

from apga.config import PATH_FIELDS, SECTIONS, Config, field_help, make_config
from apga.errors import APGAError
from apga.utils import configure_logging, error, expand_path

NAME_COLUMN = 30
PATH_METAVARS = ("DIR", "FILE", "PATH")  # a flag shown with one of these takes a path


@dataclass
class Flag:
    name: str           # the Python name (flags are spelled with '-')
    default: object
    help: str
    metavar: str = "VALUE"
    section: str = ""

    @property
    def path(self) -> bool:
        return self.metavar in PATH_METAVARS


def is_flag(argument: str) -> bool:
    """Fire's rule: a leading dash that does not start a negative number."""
    return argument.startswith("--") or re.match(r"^-[a-zA-Z]", argument) is not None


def wants_help(argv: list[str]) -> bool:
    return any(argument in ("--help", "-h") for argument in argv)


@dataclass
class Command:
    """One command line: its usage, flags and positional arguments, checked and then run by Fire."""
    usage: str
    summary: str
    flags: list[Flag]
    positionals: tuple[str, ...] = ()
    epilog: str = ""
    unlisted: tuple[str, ...] = ()  # names the function refuses itself, with its own reason (not in --help)
    path_positionals: tuple[str, ...] = ()  # positionals that are paths (flags are paths by their metavar)
    required: int | None = None  # how many positionals must be given (None: all of them)

    def run(self, function, argv: list[str]) -> None:
        if wants_help(argv):
            print(self.help())
            sys.exit(0)
        configure_logging()
        if hasattr(sys.stdout, "reconfigure"):  # a file name that is not UTF-8 is printed escaped, never a crash
            sys.stdout.reconfigure(errors="backslashreplace")
        try:
            problem = self.problem(argv)
            argv = self.with_paths(argv) if not problem else argv
        except APGAError as refused:  # a `~user` that names no user
            problem = str(refused)
        if problem:
            error(problem)
            sys.exit(2)
        import fire

        fire.Fire(function, command=argv)

    def problem(self, argv: list[str]) -> str | None:
        """What is wrong with `argv` (None when nothing is), by Fire's rules for flags and values."""
        walked = self._walk(argv)
        if isinstance(walked, str):
            return walked
        given = sum(1 for name, _, _ in walked if name in self.positionals)
        required = len(self.positionals) if self.required is None else self.required
        if given < required:
            missing = " and ".join(name.upper() for name in self.positionals[given:required])
            return f"missing {missing}: usage: {self.usage}"
        return None

    def with_paths(self, argv: list[str]) -> list[str]:
        """`argv` with every path value written as a Python string literal of its expanded text, so
        that Fire hands the function that text (module docstring). `argv` must have no `problem`."""
        paths = {flag.name for flag in self.flags if flag.path} | set(self.path_positionals)
        argv = list(argv)
        for name, position, inline in self._walk(argv):
            if name in paths:
                shown = name.upper() if name in self.positionals else f"--{name.replace('_', '-')}"
                value = argv[position].split("=", 1)[1] if inline else argv[position]
                quoted = repr(expand_path(value, shown))
                argv[position] = f"{argv[position].split('=', 1)[0]}={quoted}" if inline else quoted
        return argv

    def _walk(self, argv: list[str]) -> str | list[tuple[str, int, bool]]:
        """The name of each value of `argv` (a flag's or a positional's), the position of its token,
        and whether it stands inline (`--name=value`); or what is wrong, as text."""
        tokens = argv[:argv.index("--")] if "--" in argv else argv
        names = {flag.name for flag in self.flags} | set(self.positionals) | set(self.unlisted)
        values, positionals, previous, i = [], 0, None, 0
        while i < len(tokens):
            argument = tokens[i]
            if not is_flag(argument):
                if positionals < len(self.positionals):
                    values.append((self.positionals[positionals], i, False))
                    positionals, i = positionals + 1, i + 1
                    continue
                if previous:
                    return (f"unexpected argument {argument!r} after {previous}: a flag takes one value; for several, "
                            f"run the command once per value (python -m apga.sweep runs lists of them)")
                return f"unexpected argument {argument!r}: settings are flags (--name value); see --help"
            if not argument.startswith("--"):
                return f"unknown flag {argument}: flags are spelled out with two dashes; see --help"
            with_value = "=" in argument
            key = argument[2:].split("=", 1)[0].replace("-", "_")
            boolean = not with_value and (i + 1 == len(tokens) or is_flag(tokens[i + 1]))
            if key not in names and not (boolean and key.startswith("no") and key[2:] in names):
                return f"unknown flag(s) {argument.split('=', 1)[0]}{self._suggestion(key, names)}; see --help for the list"
            metavar = next((flag.metavar for flag in self.flags if flag.name == key), "0|1")
            if boolean and not metavar.startswith("0|1"):  # Fire would pass True
                following = tokens[i + 1] if i + 1 < len(tokens) else ""
                dashed = (f"; a value that starts with '-' goes after '=': --{key.replace('_', '-')}={following}"
                          if following.startswith("-") and not following.startswith("--") else "")
                return f"{argument} needs a value: --{key.replace('_', '-')} {metavar}{dashed}"
            consumed = 1 if with_value or boolean else 2
            if not boolean:
                values.append((key, i + consumed - 1, with_value))
            previous = " ".join(tokens[i:i + consumed]) if consumed == 2 else None
            i += consumed
        return values

    @staticmethod
    def _suggestion(key: str, names: set[str]) -> str:
        close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
        return f" (did you mean --{close[0].replace('_', '-')}?)" if close else ""

    def help(self) -> str:
        """One line per flag (wrapped to the terminal), grouped, with its default; no pager."""
        width = min(max(shutil.get_terminal_size((120, 24)).columns, 80), 140)
        lines = [f"usage: {self.usage}", "", *textwrap.wrap(self.summary, width)]
        section = None
        for flag in self.flags:
            if flag.section != section:
                section = flag.section
                lines += ["", f"{section}:" if section else "flags:"]
            shown = f"  --{flag.name.replace('_', '-')} {flag.metavar}"
            default = "" if flag.default is None else f" [{_shown(flag.default)}]"
            text = textwrap.wrap(flag.help + default, width - NAME_COLUMN - 1) or [""]
            if len(shown) < NAME_COLUMN:
                lines.append(f"{shown:<{NAME_COLUMN}} {text[0]}")
                text = text[1:]
            else:
                lines.append(shown)
            lines += [f"{'':<{NAME_COLUMN}} {more}" for more in text]
        if self.epilog:
            lines += ["", *textwrap.wrap(self.epilog, width)]
        return "\n".join(lines)


def _shown(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def _metavar(annotation: str, name: str = "") -> str:
    if name in PATH_FIELDS:
        return "PATH"
    if name.startswith("train_"):
        return "0|1"
    if name == "amp":
        return "0|1|bf16|fp16"
    for kind, metavar in (("bool", "0|1"), ("int", "N"), ("float", "X")):
        if kind in annotation:
            return metavar
    return "TEXT"


def config_flags() -> list[Flag]:
    """Every setting of `Config`, in groups, as flags."""
    flags, section = [], ""
    helps = field_help()
    for field in dataclasses.fields(Config):
        section = SECTIONS.get(field.name, section)
        flags.append(Flag(field.name, field.default, helps[field.name], _metavar(str(field.type), field.name), section))
    return flags


def function_flags(function, helps: dict[str, str], paths: tuple[str, ...] = ()) -> tuple[list[Flag], tuple[str, ...]]:
    """The flags and positional arguments of a function's signature, with `helps` for their texts;
    the flags named in `paths` take a path."""
    flags, positionals = [], []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.default is inspect.Parameter.empty:
            positionals.append(name)
        else:
            metavar = "PATH" if name in paths else _metavar(str(parameter.annotation))
            flags.append(Flag(name, parameter.default, helps.get(name, ""), metavar))
    return flags, tuple(positionals)


def script_command(function, usage: str, paths: tuple[str, ...] = (), helps: dict[str, str] | None = None,
                   summary: str | None = None) -> Command:
    """The command line of a plain script (the data tools, the benchmarks): `function`'s signature as
    its flags and positionals with `helps` for their texts, `summary` (default: the docstring's first
    paragraph); `paths` names the arguments that are paths (flags or positionals)."""
    flags, positionals = function_flags(function, helps or {}, paths)
    return Command(usage=usage, summary=summary or (inspect.getdoc(function) or "").split("\n\n")[0], flags=flags,
                   positionals=positionals, path_positionals=tuple(p for p in positionals if p in paths))


def data_tool_command(name: str) -> Command:
    """The command line of `python -m apga.data.<name>` (synthetic, export): its main, flag texts and summary."""
    import importlib

    module = importlib.import_module(f"apga.data.{name}")
    paths = {"synthetic": ("out",), "export": ("source", "out")}[name]
    return script_command(module.main, module.USAGE, paths=paths, helps=module.FLAG_HELP, summary=module.SUMMARY)


def main(**flags) -> None:
    try:
        config = make_config(**flags)
        from apga.experiment import run  # heavy imports only once the flags are valid

        failures = run(config)
    except APGAError as problem:
        error(str(problem))
        sys.exit(2)
    except KeyboardInterrupt:
        error("interrupted; rerun the same command to resume from the last checkpoint")
        sys.exit(130)
    if failures:
        error(f"{len(failures)} run(s) stopped ({'; '.join(failures)}); the others finished, see above")
        sys.exit(2)


# Fire reads the signature: one keyword-only flag per Config field.
main.__signature__ = inspect.Signature([
    inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in dataclasses.fields(Config)
])

TRAIN = Command(
    usage="python apga_mura.py [--flag VALUE ...]   (or: apga-mura ...)",
    summary="Train the DenseNet baseline on one MURA body part (or a --data-csv task), then Cutout, Grad-CAM "
            "masking, end-to-end masking, APGA and the random-mask floor fine-tuned from it. Results go to "
            "<out-dir>/results.csv and summary.md, with plots beside them. Flags take one value: --name value, "
            "--name=value, or --name / --noname for 0|1 flags.",
    flags=config_flags(),
    epilog="Example: python apga_mura.py --body-part elbow --demo   (generated data, every method, in minutes on a "
           "CPU). Documentation: docs/ in the repository.",
)


def entry_point(argv: list[str] | None = None) -> None:
    """`python apga_mura.py` and the `apga-mura` console script."""
    TRAIN.run(main, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    entry_point()
