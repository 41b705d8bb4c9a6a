"""What a config read back from disk may build.

Eval, predict and export rebuild objects from a config they did not compose: the one stored in
a checkpoint or a run's `.hydra/config.yaml`, or the network class named in an export's
`model.json`. Those files may come from someone else, and Hydra imports and calls whatever a
`_target_` names. So a restored target must be on an allow list: classes from this project,
torch.nn, torch.optim, torchvision, torchmetrics and Lightning's trainer parts, and functions
only from the modules that build networks. Anything else is refused in one line before it is
imported. `trust=<module or class>[,...]` (or `$MNISTLAB_TRUST`) adds to the list;
`trust=all` turns the check off for a source you trust.
"""

import importlib
import inspect
import os

from mnistlab import UserError

ENV = "MNISTLAB_TRUST"
ALLOWED = (
    "mnistlab", "torch.nn", "torch.optim", "torchvision.models", "torchvision.transforms",
    "torchmetrics", "lightning.pytorch.Trainer", "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers", "lightning.pytorch.profilers", "lightning.pytorch.strategies",
    "lightning.pytorch.accelerators", "lightning.pytorch.plugins",
)  # fmt: skip
# Modules whose functions only build objects (a network): any other allowed target is a class.
BUILDERS = ("mnistlab.nets", "torchvision.models")


def trusted(given: str | None = None) -> tuple[str, ...] | None:
    """The user's additions to the allow list (`trust=`, else `$MNISTLAB_TRUST`); None: all."""
    given = os.environ.get(ENV, "") if given is None else given
    names = tuple(n.strip() for n in given.split(",") if n.strip())
    return None if "all" in names else names


def check_targets(node, where: str, trust: tuple[str, ...] | None = ()) -> None:
    """Refuse, in one line naming the key, any `_target_` in `node` (a config mapping, keys
    prefixed by `where`) that is not allowed; `trust` as returned by `trusted`."""
    if trust is None:
        return
    for key, target in _targets(node, where):
        check_target(target, key, trust)


def check_target(target, key: str, trust: tuple[str, ...] = ()) -> None:
    target = str(target)
    if _under(target, trust) or (_under(target, ALLOWED) and _builds_only(target)):
        return
    raise UserError(
        f"{key}={target}: not on the allow list of what a restored config may build"
        f" ({', '.join(ALLOWED[:5])}, ...); if you trust where it came from, add"
        f" trust={target.rpartition('.')[0] or target} (or trust=all)"
    )


def _targets(node, where: str):
    if isinstance(node, dict) or hasattr(node, "items"):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from _targets(value, path)
    elif isinstance(node, list | tuple) or type(node).__name__ == "ListConfig":
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def _under(target: str, prefixes) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def _builds_only(target: str) -> bool:
    """A class, or a function of a network-building module (imported only once allowed)."""
    obj = _find(target)
    if inspect.isclass(obj):
        return True
    return callable(obj) and _under(getattr(obj, "__module__", "") or "", BUILDERS)


def _find(target: str):
    parts = target.split(".")
    for n in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for name in parts[n:]:
            obj = getattr(obj, name, None)
        return obj
    return None
