"""The one entry path of every command but train (eval, predict, export, eval-wild, report,
compare): `key=value` words, parsed one way, and one way to end.

A command declares its own options by their defaults, whose type is the option's: a `list`
takes Hydra's list syntax (`runs=[a,b]`), a bool `true` or `false`, an int or float a number, a
string (or `str`, for none by default) the text as written: paths keep any character, `=`
included. Every other `key=value` is an override of the run's training config, applied later
with Hydra's grammar (`mnistlab.lab.rebuild`), or refused when the command takes none. Train has
the same words and Hydra's flags besides (`mnistlab.lab.cli`). A `UserError` ends the command in
one line naming it (`refuse`): exit 2 for the command line, or the error's own `code` (1: what the
command read was at fault).
"""

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from mnistlab.lab import UserError, failure, refuse

Body = Callable[[dict, list[str]], int | None]
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")
RUN = {"run": str, "ckpt": str, "which": "best", "trust": str}  # the options naming a run


def command(name: str, usage: str, overrides: bool = True, **options) -> Callable[[Body], Callable]:
    """`main(argv=None) -> exit status` around `body(args, overrides)`; `options`: the
    command's own keys and their defaults (a type for none)."""

    def wrap(body: Body) -> Callable[[list[str] | None], int]:
        @wraps(body)
        def main(argv: list[str] | None = None) -> int:
            logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr,
                                force=True)  # fmt: skip
            logging.raiseExceptions = False  # a log file on a full disk: no traceback per line
            argv = sys.argv[1:] if argv is None else argv
            if any(a in ("-h", "--help") for a in argv):
                print(usage)
                return 0
            try:
                args, rest = parse(argv, options)
                if rest and not overrides:
                    raise UserError(_unknown(rest[0], options))
                return body(args, rest) or 0
            except UserError as e:
                return refuse(name, e, getattr(e, "code", 2))
            except OSError as e:  # a full disk, a read-only or missing folder: what was, stays
                return refuse(name, UserError(file_error(e)), 1)
            except Exception as e:  # in a module's own code, say: where, not a traceback wall
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"{name}: failed: {failure(e)}; HYDRA_FULL_ERROR=1 shows the traceback",
                      file=sys.stderr)  # fmt: skip
                return 1

        return main

    return wrap


def parse(argv: list[str], options: dict) -> tuple[dict, list[str]]:
    """This command's options (defaults filled in, values of their types) and the rest."""
    args = {k: None if isinstance(v, type) else list(v) if isinstance(v, list) else v
            for k, v in options.items()}  # fmt: skip
    rest = []
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise UserError(f"{arg}: expected key=value (see --help)")
        if key not in options:
            rest.append(arg)
            continue
        kind = options[key] if isinstance(options[key], type) else type(options[key])
        args[key] = _value(key, text, kind)
    return args, rest


def file_error(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}; files written before are left as they were"


def writable(path: Path, key: str, suffixes: tuple[str, ...] = ()) -> Path:
    """`path` as an output the command can write, checked before any work: of one of `suffixes`
    (when given), not a folder, in a folder that takes files or can be made (by the writer)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{key}={path}: a folder; name a file in it")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{key}={path}: name a {' or '.join(suffixes)} file")
    folder = next(p for p in path.parents if p.exists())  # the folder, or where it will be made
    if not folder.is_dir():
        raise UserError(f"{key}={path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        error = UserError(f"{key}={path}: cannot be written (a read-only file system, or no"
                          " permission)")  # fmt: skip
        error.code = 1  # the machine, not the command line
        raise error
    return path


def _unknown(arg: str, options: dict) -> str:
    import difflib

    key = arg.partition("=")[0]
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}=? " if close else ""
    return f"{arg}: not an option ({hint}options: {', '.join(options)}; see --help)"


def _value(key: str, text: str, kind: type):
    if kind is str:
        return text
    if kind is bool:
        if text.lower() not in TRUE + FALSE:
            raise UserError(f"{key}={text}: true or false")
        return text.lower() in TRUE
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise UserError(f"{key}={text}: {what}") from None
    return _list(key, text)


def _list(key: str, text: str) -> list[str]:
    """`[a,b]` (or one value alone) in Hydra's grammar, as train reads a list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        value = OverridesParser.create().parse_override(f"{key}={text}").value()
    except HydraException as e:
        raise UserError(f"{key}={text}: not a list ({str(e).splitlines()[0]}); write"
                        f" {key}=[a,b], quoting a value with odd characters: {key}=['a b']") from None  # fmt: skip
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        raise UserError(f"{key}={text}: a list of names, [a,b]")
    return [str(v) for v in values]
