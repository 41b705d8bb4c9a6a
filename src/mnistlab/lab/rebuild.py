"""A trained run, brought back as it was trained: its config, its checkpoints, its model.

Eval, predict and export start here. The config is the one the run was composed with (its
`.hydra/config.yaml`, or the config stored in the checkpoint when only a checkpoint is given), so
a run trained with any experiment or overrides comes back with no flags repeated; overrides on
the command line still apply on top, group options (`trainer=cpu`) included.
"""

import json
import logging
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnistlab.lab import UserError
from mnistlab.lab.config import CONF_DIR, ROOT, build, project_path, to_plain
from mnistlab.lab.run_folder import RESULTS, not_a_run
from mnistlab.lab.schema import validate
from mnistlab.lab.signing import made_here, signed
from mnistlab.lab.spec import check_spec, take_spec
from mnistlab.lab.trust import check_config, trusted

log = logging.getLogger(__name__)
WHICH = ("best", "last")
BUILT = ("data", "model", "trainer")  # what a run's config must hold


def restore(args: dict, overrides: list[str], task: str) -> tuple:
    """The run that a command's `command.RUN` options name: its folder (None for a lone
    checkpoint), its checkpoint file, the checkpoint (verified), and its config for `task`."""
    from mnistlab.lab.checkpoint import CheckpointError, load, say_unverified

    run_dir, path = locate(args["run"], args["ckpt"], args["which"])
    try:
        checkpoint = load(path, require_checksum=False, quiet=True)
    except CheckpointError as e:
        others = sorted({p.name for p in path.parent.glob("*.ckpt")} - {path.name})
        if others:  # what to do: another checkpoint of the run
            e.args = (f"{e}; another of its folder may be intact ({', '.join(others[:3])}):"
                      f" {'which=last' if 'last.ckpt' in others else 'CKPT=<file>'}",)  # fmt: skip
        raise
    cfg = run_config(run_dir, checkpoint, path, overrides, task, args["trust"])
    say_unverified(path)  # once its config is accepted: a refusal stays one line
    return run_dir, path, checkpoint, cfg


def locate(run: str | None, ckpt: str | None, which: str = "best") -> tuple[Path | None, Path]:
    """The run folder (None when only a checkpoint is given) and the checkpoint to use; with
    neither, the newest finished run under logs/train/runs."""
    if which not in WHICH:
        raise UserError(f"which={which}: choose best or last")
    if ckpt:
        path = _existing(ckpt, "ckpt")
        if path.is_dir():
            names = sorted(p.name for p in path.glob("*.ckpt"))[:3]
            raise UserError(f"ckpt={path}: a folder; name a checkpoint file in it"
                            f" ({', '.join(names) or 'it has none'}), or its run with run=")  # fmt: skip
        run_dir = path.parent.parent if (path.parent.parent / ".hydra").is_dir() else None
        return run_dir, path
    run_dir = _existing(run, "run") if run else _newest_finished_run()
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise UserError(not_a_run(run_dir, "run", "a checkpoint is named with ckpt= (CKPT=)"))
    return run_dir, _checkpoint_of(run_dir, which)


def _existing(given: str, key: str) -> Path:
    path = Path(given) if Path(given).exists() else project_path(given)
    if not path.exists():
        raise UserError(f"{key}={given}: no such file or folder")
    return path.resolve()


def _newest_finished_run() -> Path:
    runs = sorted((ROOT / "logs" / "train" / "runs").glob(f"*/{RESULTS}"))
    if not runs:
        raise UserError("no finished run under logs/train/runs: name one with RUN=... or CKPT=...")
    log.info("No run named: using the newest finished one, %s", runs[-1].parent)
    return runs[-1].parent


def _checkpoint_of(run_dir: Path, which: str) -> Path:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        raise UserError(
            f"run={run_dir} has no checkpoints: it stopped before saving one (its train.log says why)"
        )
    if which == "last":
        path = folder / "last.ckpt"
    else:  # the best, as the run recorded it; else the newest epoch checkpoint
        best = _recorded_best(run_dir)
        candidates = [folder / best] if best else []
        candidates += sorted(folder.glob("epoch*.ckpt"), key=lambda p: p.stat().st_mtime)[::-1]
        path = next((p for p in candidates if p.is_file()), folder / "last.ckpt")
    if not path.is_file():
        raise UserError(f"no {which} checkpoint in {folder}")
    return path


def _recorded_best(run_dir: Path) -> str | None:
    try:
        return Path(json.loads((run_dir / RESULTS).read_text())["best_checkpoint"]).name or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_config(
    run_dir: Path | None,
    checkpoint: dict,
    path: Path,
    overrides: list[str],
    task: str,
    trust: str | None = None,
):
    """The training config of the run (its folder's, else the one stored in checkpoint `path`)
    with `overrides` applied, resolved; its `paths.output_dir` names a new folder for this task,
    `<paths.log_dir>/<task>/runs/<timestamp>` (not created here). Unless this checkout made it,
    what it will build is checked first (`mnistlab.lab.trust`)."""
    source = run_dir / ".hydra" / "config.yaml" if run_dir is not None else path
    stored = _stored(source) if run_dir is not None else checkpoint.get("hyper_parameters")
    if not (isinstance(stored, dict) and all(isinstance(stored.get(k), dict) for k in BUILT)):
        hint = "not a run of this template" if run_dir else "name its run folder with RUN="
        raise UserError(f"{source}: holds no run config (data, model, trainer): {hint}")
    if run_dir is not None:
        own, cfg = made_here(run_dir), OmegaConf.create(stored)
    else:  # resolved where it was trained: paths moved here
        own = signed(stored, checkpoint.get("origin"))
        cfg = OmegaConf.create(_reanchored(stored))
        cfg.paths = OmegaConf.load(CONF_DIR / "paths" / "default.yaml")
    _one_process(cfg)
    for unused in ("callbacks", "logger"):  # eval, predict and export build their own, or none
        cfg[unused] = None
    spec = checkpoint.get("input_spec")
    if spec and OmegaConf.select(cfg, "data.classes") is not None:
        take_spec(cfg.data, spec)
    _apply(cfg, overrides)
    if spec:
        check_spec(cfg, spec)
    # It was ${hydra:runtime.output_dir}, and Hydra is not running. Its name: a command that
    # writes there makes it with `files.new_folder` (a suffix if another took it this second).
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / task / "runs" / stamp)
    try:
        plain = to_plain(cfg)  # every interpolation and resolver, once: what is checked is built
        check_config(plain, None if own else trusted(trust))  # before validating, which imports
    except OmegaConfBaseException as e:
        raise UserError(f"{source}: {str(e).splitlines()[0]}") from None
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    validate(plain, deep=True)
    return OmegaConf.create(_literal(plain))


def _literal(value):
    """Resolved values as they are: a string that still reads `${...}` (it was escaped) must not
    become an interpolation, resolved again, and unchecked, when the config is built."""
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value.replace("${", "\\${") if isinstance(value, str) else value


def _stored(path: Path):
    """A run folder's config as plain data, its interpolations unresolved (OmegaConf's YAML
    loader: the safe subset, no tag builds a Python object)."""
    import yaml

    try:
        return OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as e:
        raise UserError(f"{path}: cannot be read ({str(e).strip().splitlines()[0]})") from None


def _reanchored(stored: dict) -> dict:
    """A checkpoint's config, resolved on the machine that trained it: its paths inside that
    project (`paths.root_dir`) are moved into this one; paths outside it stay as they are."""
    old = str(((stored.get("paths") or {}).get("root_dir")) or "").rstrip("/")
    if not old or old == str(ROOT):
        return stored

    def move(value):
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, str) and (value == old or value.startswith(old + "/")):
            return str(ROOT) + value[len(old) :]
        return value

    return move(stored)


def _one_process(cfg: DictConfig) -> None:
    """A run trained with DDP is used in one process: testing 10,000 images takes seconds, and
    Lightning would start the other processes by re-running this command, each in its own folder."""
    trainer = cfg.get("trainer")
    if trainer is None:
        return
    trainer.devices, trainer.num_nodes = 1, 1
    trainer.profiler = None  # a training run's; eval, predict and export have nothing to profile
    if "ddp" in str(trainer.get("strategy", "")):
        trainer.strategy = "auto"


def _apply(cfg: DictConfig, overrides: list[str]) -> None:
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(str(e).splitlines()[0]) from None
    for o in parsed:
        key = o.key_or_group
        if (CONF_DIR / key).is_dir() and isinstance(o.value(), str):  # a group option
            OmegaConf.update(cfg, key.replace("/", "."), _group_node(o.input_line), merge=False)
        elif o.is_delete():
            OmegaConf.update(cfg, key, None, merge=False)
        else:
            OmegaConf.update(cfg, key, o.value(), merge=True, force_add=True)


def _group_node(override: str) -> DictConfig:
    group = override.split("=", 1)[0].lstrip("+")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            composed = compose("train", [override])
    except HydraException as e:
        raise UserError(str(e).splitlines()[0]) from None
    return OmegaConf.select(composed, group.replace("/", "."))


def build_model(cfg: DictConfig, checkpoint: dict, path: Path):
    """The configured LightningModule with the weights of `checkpoint` (read from `path`)."""
    from mnistlab.lab.checkpoint import check_fits

    model = build(cfg, "model")
    state = checkpoint["state_dict"]
    check_fits(state, model, path)
    model.load_state_dict(state)
    return model.eval()
