"""A `_target_`'s real signature: the keyword arguments it takes, which are required, and the
type hints that can be checked (mnistlab.lab.schema walks a config against them)."""

import importlib
import inspect
import types
from collections import namedtuple
from typing import Any, Literal, Union, get_args, get_origin

Param = namedtuple("Param", "required hint")  # hint: a checkable type annotation, else Any
SIMPLE = (int, float, bool, type(None))


def _checkable(annotation: Any) -> Any:
    """`annotation` when it is made of int, float, bool, None and Literal alone (`int`,
    `float | None`, `Literal["min", "max"]`), else Any: nothing else is checked by its hint."""
    origin = get_origin(annotation)
    if annotation in SIMPLE or origin is Literal:
        return annotation
    if origin in (Union, types.UnionType) and all(
        _checkable(a) is not Any for a in get_args(annotation)
    ):
        return annotation
    return Any


def arguments(target: str, path: str, errors: list[str]) -> dict[str, Param] | None:
    """The keyword arguments of `target`'s real signature, {name: Param}; None when it takes
    any (`**kwargs` that go nowhere we can follow). Imports the target's module. The type hints
    of a target defined outside the installed libraries (this project's, yours) are checked too:
    `hidden: int` given `abc` is named before the constructor fails somewhere inside."""
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        where = ("; a module of your own goes in src/ or in a folder on PYTHONPATH"
                 if isinstance(e, ModuleNotFoundError) and e.name == module.split(".")[0] else "")  # fmt: skip
        return errors.append(f"{path}._target_={target}: cannot be imported ({e}){where}")
    except Exception as e:  # the module itself fails to import: say so in one line
        return errors.append(f"{path}._target_={target}: importing {module} fails: {type(e).__name__}: {e}")  # fmt: skip
    found: dict[str, Param] = {}
    inits = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]  # fmt: skip
    for fn in inits:  # a class's `**kwargs` usually go to its parent's __init__: read that too
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        source = getattr(inspect.getmodule(fn), "__file__", None) or "/lib/python"
        own = "site-packages" not in source and "/lib/python" not in source
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                hint = _checkable(p.annotation) if own else Any
                found.setdefault(p.name, Param(p.default is p.empty, hint))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return found
    return None
