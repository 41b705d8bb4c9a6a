"""What a config read back from disk may build, and which runs are this checkout's own.

Eval, predict, export and `resume=<folder>` rebuild objects from files they did not write: a
checkpoint's stored config, a run's `.hydra/config.yaml` and `overrides.yaml`, an export's
`model.json`. Such a file may come from someone else, and Hydra imports and calls whatever a
`_target_` names. So before anything is built, every `_target_` of the resolved config (those
inside `_args_`, lists and dict values, and those an interpolation brings in, too) is *resolved*
without calling anything, importing only modules of the packages a config may use, and the
object found must be of the kind its place takes: `model.net` an `nn.Module`, `model.optimizer`
an `Optimizer`, `data` a `LightningDataModule`, ... (`PLACES`), defined in a package that may
provide that kind (its own `__module__`, not the path used to reach it). A function counts as
the kind its return annotation names, and only when it is this project's (`mnistlab.nets.resnet
-> nn.Module`). Anything else is refused in one line naming the key.

`trust=mypkg[,other]` (or `$MNISTLAB_TRUST`) adds packages whose every object is trusted;
`trust=all` turns the check off. A run made by this checkout needs neither: its run folder and
checkpoints carry an HMAC of their config under a key kept in the checkout (`.mnistlab/run-key`,
made on first use, readable by its owner only), and a config whose signature holds is trusted
as the command line that made it. Light to import: torch and Lightning only when a kind is checked.
"""

import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import typing

from mnistlab.lab import UserError

log = logging.getLogger(__name__)

ENV = "MNISTLAB_TRUST"

# A kind: the base classes an object must derive from, and the packages it may be defined in.
# Not torchmetrics: some of its metrics (modules) load models from a path they are given, one
# with `trust_remote_code=True` (CLIPScore); the system builds its metrics in code, not config.
PROJECT = __name__.split(".")[0]  # the package that holds lab/: the example and your code
MODULES = (PROJECT, "torch.nn", "torchvision.models", "torchvision.ops")
LIGHTNING = (PROJECT, "lightning.pytorch", "lightning.fabric")
KINDS = {
    "an nn.Module": (("torch.nn.Module",), MODULES),
    "a transform": (("torch.nn.Module",), (*MODULES, "torchvision.transforms")),
    "a LightningDataModule": (("lightning.pytorch.LightningDataModule",), (PROJECT,)),
    "a LightningModule": (("lightning.pytorch.LightningModule",), (PROJECT,)),
    "an Optimizer": (("torch.optim.Optimizer",), ("torch.optim",)),
    "an LRScheduler": (("torch.optim.lr_scheduler.LRScheduler",
                        "torch.optim.lr_scheduler.ReduceLROnPlateau"), ("torch.optim",)),
    "a Trainer": (("lightning.pytorch.Trainer",), ("lightning.pytorch",)),
    "a Strategy": (("lightning.pytorch.strategies.Strategy",), LIGHTNING),
    "an Accelerator": (("lightning.pytorch.accelerators.Accelerator",), LIGHTNING),
    "a Profiler": (("lightning.pytorch.profilers.Profiler",), LIGHTNING),
    "a Callback": (("lightning.pytorch.Callback",), LIGHTNING),
    "a Logger": (("lightning.pytorch.loggers.Logger",), LIGHTNING),
    "a Lightning plugin": (("lightning.pytorch.plugins.Precision",
                            "lightning.fabric.plugins.ClusterEnvironment",
                            "lightning.fabric.plugins.CheckpointIO",
                            "lightning.pytorch.plugins.LayerSync"), LIGHTNING),
}  # fmt: skip
# The kind each place in a task config takes (`*` a key, `[]` a list's item); any other place
# takes the kind of the place it is nested in when that is a transform, else an nn.Module.
PLACES = {
    "data": "a LightningDataModule", "data.augment": "a transform",
    "data.batch_augment": "a transform", "model": "a LightningModule", "model.net": "an nn.Module",
    "model.loss": "an nn.Module", "model.optimizer": "an Optimizer", "model.scheduler": "an LRScheduler",
    "trainer": "a Trainer", "trainer.strategy": "a Strategy", "trainer.accelerator": "an Accelerator",
    "trainer.profiler": "a Profiler", "trainer.plugins": "a Lightning plugin",
    "trainer.plugins[]": "a Lightning plugin", "trainer.callbacks": "a Callback",
    "trainer.callbacks[]": "a Callback", "trainer.logger": "a Logger",
    "trainer.logger[]": "a Logger", "callbacks.*": "a Callback", "logger.*": "a Logger",
}  # fmt: skip
IMPORTABLE = tuple(dict.fromkeys(p for _, homes in KINDS.values() for p in homes))
FACTORIES = (PROJECT,)  # where a function may stand for the kind it returns
_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def trusted(given: str | None = None) -> tuple[str, ...] | None:
    """The user's trusted packages (`trust=`, else `$MNISTLAB_TRUST`); None: trust everything."""
    given = os.environ.get(ENV, "") if given is None else given
    names = tuple(n.strip(" '\"") for n in given.strip("[]").split(",") if n.strip(" '\""))
    return None if "all" in names else names


def check_config(cfg: dict, trust: tuple[str, ...] | None = (), opt_in: str = "trust=") -> None:
    """Refuse, in one line naming the key, any `_target_` in the plain, resolved `cfg` that is
    not of the kind its place takes (`PLACES`), from a package that provides that kind.
    `opt_in`: how this command trusts a package, for the hint (`trust=`, `MNISTLAB_TRUST=`)."""
    if trust is None:
        return
    for place, node, kind in _nodes(cfg, "", "an nn.Module"):
        check_target(node["_target_"], f"{place}._target_", kind, trust, opt_in)
    for place, value in _strings(cfg, ""):
        if "${" in value:  # escaped in the file: built, it would be resolved a second time
            raise UserError(f"{place}={value[:60]}: refused, an interpolation in a resolved value")


def check_target(
    target, key: str, kind: str, trust: tuple[str, ...] = (), opt_in: str = "trust="
) -> object:
    """The object `target` names, if it is `kind` (a key of KINDS) or in a trusted package;
    else UserError naming `key`. Imports only modules of allowed or trusted packages."""
    if not isinstance(target, str) or not _NAME.fullmatch(target):
        raise UserError(f"{key}={target!r}: not a dotted name of a class")
    obj = _resolve(target, (*IMPORTABLE, *trust))
    home = (
        getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isroutine(obj) else None
    )
    if obj is not None and isinstance(home, str) and _under(home, trust):
        return obj
    homes = KINDS[kind][1]
    if obj is None:
        why, package = "not found in the packages a restored config may import from", target
    elif not _is_kind(obj, kind):  # no package to trust would make it one: the config is wrong
        raise UserError(f"{key}={target}: refused, it is {_named(obj)}, not {kind}")
    elif not (isinstance(home, str) and _under(home, homes)):
        why, package = f"it is {_named(obj)}, and {kind} here comes from {', '.join(homes)}", home
    else:
        return obj
    package = package.partition(".")[0]
    hint = f"{opt_in}{package}" if not _under(package, IMPORTABLE) else f"{opt_in}all"
    raise UserError(f"{key}={target}: refused, {why}; if you trust its source: {hint}")


def _nodes(node, place: str, inherited: str):
    """(place, node, kind) for every mapping with a `_target_`, outermost first. A place not in
    PLACES takes the kind of the node it is in when that is a transform, else an nn.Module."""
    if isinstance(node, dict):
        if "_target_" in node:
            kind = PLACES.get(re.sub(r"\[\d+\]", "[]", place)) or PLACES.get(
                re.sub(r"^(callbacks|logger)\.[^.\[]+$", r"\1.*", place)) or inherited  # fmt: skip
            yield place, node, kind
            inherited = kind if kind == "a transform" else "an nn.Module"
        for key, value in node.items():
            if key != "_target_":
                yield from _nodes(value, f"{place}.{key}" if place else str(key), inherited)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _nodes(value, f"{place}[{i}]", inherited)


def _strings(node, place: str):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{place}.{key}" if place else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _strings(value, f"{place}[{i}]")
    elif isinstance(node, str):
        yield place, node


def _resolve(target: str, packages) -> object:
    """The object `target` names, found as Hydra finds it, but importing only modules under
    `packages` and reading attributes without running any code (no `__getattr__`, property or
    descriptor); None when it cannot be found that way."""
    parts = target.split(".")
    obj, n = None, len(parts)
    while n > 0 and obj is None:
        name = ".".join(parts[:n])
        obj = _module(name) if _under(name, packages) else None
        n -= 1 if obj is None else 0
    if obj is None:
        return None
    for part in parts[n:]:
        if inspect.ismodule(obj):
            found = vars(obj).get(part)
            sub = f"{obj.__name__}.{part}"
            if found is None and _under(sub, packages):
                found = _module(sub)
        elif inspect.isclass(obj):
            found = next((vars(c)[part] for c in obj.__mro__ if part in vars(c)), None)
        else:
            return None
        if found is None:
            return None
        obj = found
    return obj


def _module(name: str):
    if name in sys.modules:
        return sys.modules[name]
    try:
        if importlib.util.find_spec(name) is None:
            return None
        return importlib.import_module(name)
    except ImportError:
        return None


def _is_kind(obj, kind: str) -> bool:
    bases = tuple(_base(b) for b in KINDS[kind][0])
    if inspect.isclass(obj):
        # A transform may also be a plain class whose instances are called (torchvision's v1).
        called = any("__call__" in vars(c) for c in obj.__mro__[:-1])
        return issubclass(obj, bases) or (kind == "a transform" and called)
    if inspect.isfunction(obj) and _under(obj.__module__, FACTORIES):
        try:
            returns = typing.get_type_hints(obj).get("return")
        except Exception:  # an annotation that cannot be read says nothing
            return False
        return inspect.isclass(returns) and issubclass(returns, bases)
    return False


def _base(name: str) -> type:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _named(obj) -> str:
    what = "a class" if inspect.isclass(obj) else "a function" if inspect.isfunction(obj) else ""
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{what or 'an object'} {getattr(obj, '__module__', '?')}.{name}"


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# ------------------------------------------------------------------ a recorded command line


def recorded_command(recorded, source: str, replayed: bool = True) -> list[str]:
    """A command line read back from a file (a run's `overrides.yaml`, a job's `job.json`),
    checked as data: a list of `key=value` overrides of the task config, nothing of Hydra's own
    (`hydra.*`, `hydra/...`, `@package`), no sweep; to be `replayed` (resume=), also each config
    group set to one of this checkout's options by name, and no other run folder. Anything else
    is refused in one line naming `source`. What the values build is checked once the config is
    composed (`check_config`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mnistlab.lab.config import CONF_DIR

    if not isinstance(recorded, list) or not all(isinstance(o, str) for o in recorded):
        raise UserError(f"{source}: not a list of overrides (key=value strings)")
    try:
        parsed = OverridesParser.create().parse_overrides(recorded)
    except Exception as e:  # Hydra's grammar errors, whatever their class
        raise UserError(f"{source}: {str(e).strip().splitlines()[0]}") from None
    for o in parsed:
        key, line = o.key_or_group, o.input_line
        if not re.fullmatch(r"\w[\w./-]*", key):
            why = "not a key of the config"
        elif re.split(r"[./]", key)[0] == "hydra" or o.package:
            why = "it sets Hydra itself, which a recorded run may not"
        elif o.is_sweep_override():
            why = "a run's override sweeps nothing"
        elif replayed and key.lstrip("+~") == "paths.output_dir":
            why = "the run's folder is the one resume= names"
        elif replayed and (CONF_DIR / key).is_dir() and not o.is_delete():
            option = o.value()
            ok = isinstance(option, str) and re.fullmatch(r"[\w.-]+", option) and ".." not in option
            if ok and (CONF_DIR / key / f"{option}.yaml").is_file():
                continue
            why = f"not an option of {key} (conf/{key}/)"
        else:  # a value's `_target_`s are checked once composed (check_config)
            continue
        raise UserError(f"{source}: {line}: refused, {why}; start a new run instead")
    return list(recorded)
