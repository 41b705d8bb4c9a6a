"""The command line, checked before Hydra acts on it.

Hydra creates the run folder and its log before the task function runs, reports a bad override
in several lines, and its hint for an unknown key (`+key=...`) leads to a key nobody reads. So a
command is composed here first, exactly as Hydra would compose it, and checked against the schema
(mnistlab.lab.schema): any mistake ends in one line within a second or two, with nothing loaded or
written. The run folder that `resume=` continues (mnistlab.lab.resume) is settled here too, as Hydra
needs it before it starts; a run then starts on the config composed here (`settle`).
"""

import os
import re
import tempfile
from contextlib import suppress
from importlib.util import find_spec
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from mnistlab.lab import UserError
from mnistlab.lab.compat import hydra_args_parser
from mnistlab.lab.config import CONF_DIR
from mnistlab.lab.errors import absent_config_folders, first_line, missing_option, not_yaml
from mnistlab.lab.files import new_folder
from mnistlab.lab.resume import (
    merged,
    named_run,
    recorded_overrides,
    run_to_resume,
    sweep_to_continue,
)
from mnistlab.lab.schema import check_node, validate
from mnistlab.lab.trust import ENV, check_config, trusted

MAX_VARIANTS = 64  # sweep values checked one at a time, up to this many configs


def _refuse(message: str):
    raise UserError(f"{message} (see --help)")


def prepare(
    argv: list[str], config_name: str, processes: int = 1, claim: bool = False
) -> list[str]:
    """Check a command line (Hydra's flags and overrides) and return the one to give Hydra,
    with `hydra.run.dir` (`hydra.sweep.dir` for -m) set to the run (sweep) that `resume=`
    continues. `claim` (the command is about to run): else to a new folder, made here, unless
    the command names its own. `processes`: how many processes a launcher (torchrun, srun)
    started with this command; they all run in the folder settled here once
    (mnistlab.lab.distributed)."""
    return settle(argv, config_name, processes, claim)[0]


def settle(
    argv: list[str], config_name: str, processes: int = 1, claim: bool = False
) -> tuple[list[str], DictConfig | None]:
    """`prepare`'s command line, and for one run (not -m, --cfg, ...) the config Hydra would
    compose from it, its folder set: the run starts on it (mnistlab.lab.launch.run_composed)."""
    parser = hydra_args_parser()
    parser.error = _refuse  # one line, not argparse's usage block
    args = parser.parse_args(argv)
    if args.multirun and processes > 1:
        raise UserError(
            f"-m with {processes} processes: each would run the whole sweep. Start the sweep once"
            " (python -m mnistlab.train -m ...) with hydra/launcher=slurm, which launches each"
            " job's processes"
        )
    if args.multirun and (args.cfg or args.info):
        raise UserError("--cfg and --info print one config: drop -m/--multirun")
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir:
        return argv, None  # nothing to run, or configs from elsewhere: Hydra alone handles those
    name = args.config_name or config_name
    overrides, foreign = list(args.overrides), False
    if not args.multirun and (folder := named_run(overrides)) is not None:
        flags = [a for a in argv if a not in overrides]
        recorded, own = recorded_overrides(folder)
        overrides, foreign = merged(recorded, overrides), not own
        argv = [*flags, *overrides]
    if absent := absent_config_folders(overrides):
        raise UserError(f"hydra.searchpath names {', '.join(absent)}: no such folder")
    variants = _variants(overrides) if args.multirun else [overrides]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name=name):
        try:
            configs = [_compose_checked(name, v, foreign) for v in variants]
            for cfg in configs if claim and not args.cfg else ():  # to run: every key against
                validate(_resolved(cfg), deep=True)  # its signature, importing what the run will
        except UserError as e:  # what fails may be the run's: say which run
            raise (UserError(f"resume={folder}: {e}") if foreign else e) from None
    if "Optuna" in str(configs[0].hydra.sweeper.get("_target_")):
        if not find_spec("optuna"):
            raise UserError(
                "this search needs Optuna: make install-sweep (pip install -e '.[sweep]')"
            )
        pruner = configs[0].hydra.sweeper.get("pruner")
        if OmegaConf.is_dict(pruner) and "_target_" in pruner:  # built by Hydra: checked first
            check_node(OmegaConf.to_container(pruner, resolve=True), "hydra.sweeper.pruner")
    if args.cfg:
        return argv, None
    hydra_cfg = configs[0].hydra
    key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
    folder = Path(hydra_cfg.sweep.dir if args.multirun else hydra_cfg.run.dir)
    _creatable(folder)
    found = (sweep_to_continue if args.multirun else run_to_resume)(configs[0], overrides)
    one = None if args.multirun or args.config_path or args.experimental_rerun else configs[0]
    if found is not None:
        return _with(argv, key, _writable(found) if claim else found, one)
    if not claim or any(o.startswith(f"{key}=") for o in overrides):
        return argv, one  # a check only, or a folder of one's choosing: used as it is
    # A new folder, made now: two commands in the same second get two (a suffix), and the
    # processes of a DDP run (torchrun, srun) all get the one rank 0 made.
    made = new_folder(folder)
    try:
        return _with(argv, key, _writable(made), one)
    except UserError:
        made.rmdir()  # still empty: nothing of the command is left behind
        raise


PROBE = 1 << 16  # bytes: what a run writes before its first checkpoint (config, log) fits in it


def _writable(folder: Path) -> Path:
    """`folder`, once a file of `PROBE` bytes could be written in it: a full disk or a read-only
    one is one line now, not Hydra's traceback when it writes the run's config."""
    probe = folder / f".probe.{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(PROBE))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        error = UserError(f"{folder}: {e.strerror or e}; free some space, or point paths.log_dir"
                          " at another file system")  # fmt: skip
        error.code = 1
        raise error from None
    finally:
        with suppress(OSError):
            probe.unlink()
    return folder


def _creatable(folder: Path) -> None:
    """Refuse in one line a run folder that cannot be made (a read-only or special file
    system), before Hydra tries and fails with a traceback; nothing is left behind."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as e:
        error = UserError(
            f"{folder}: cannot create a folder in {existing} ({e.strerror}); point"
            " paths.log_dir (or hydra.run.dir) at a writable folder"
        )
        error.code = 1  # the machine, not the command line
        raise error from None


def _with(
    argv: list[str], key: str, value: Path, cfg: DictConfig | None
) -> tuple[list[str], DictConfig | None]:
    """`argv` with `key` (a run's or a sweep's folder) set to `value`, and `cfg` (a run's)."""
    override = f"{key}={quoted(value)}"
    if cfg is not None:
        with read_write(cfg.hydra):
            cfg.hydra.run.dir = str(value)
            cfg.hydra.overrides.hydra = [
                *(o for o in cfg.hydra.overrides.hydra if not o.startswith(f"{key}=")),
                override,
            ]
    return [a for a in argv if not a.startswith(f"{key}=")] + [override], cfg


def quoted(value: Path) -> str:
    """A folder as Hydra's override grammar reads it back unchanged: as it is when plain, else
    single-quoted (a comma, a space, brackets, non-ASCII letters), with the quote and the
    backslashes before a quote or at the end escaped."""
    text = str(value)
    if re.fullmatch(r"[\w./-]+", text, flags=re.ASCII):
        return text
    text = re.sub(r"(\\+)(?='|$)", lambda m: m[1] * 2, text)
    return "'" + text.replace("'", "\\'") + "'"


def _compose_checked(name: str, overrides: list[str], restored: bool = False) -> DictConfig:
    """The composed config, checked; `restored`: some overrides were read back from a run folder
    from elsewhere, so what the config builds is checked first (`mnistlab.lab.trust`)."""
    try:
        cfg = compose(name, overrides, return_hydra_config=True)
    except MissingConfigException as e:
        raise UserError(missing_option(e, overrides)) from None
    except HydraException as e:
        raise UserError(_composition_error(e, name, overrides, restored)) from None
    except OmegaConfBaseException as e:
        raise UserError(first_line(e)) from None
    except yaml.MarkedYAMLError as e:  # a config file of one's own that is not YAML
        raise UserError(not_yaml(e)) from None
    except ValueError as e:  # Hydra's check of a group override's value (`data=null`, `~data=1`)
        raise UserError(f"{' '.join(overrides)}: {first_line(e)}; see --help") from None
    resolved = _resolved(cfg)
    if restored:
        check_config(resolved, trusted(), opt_in=f"export {ENV}=")
    validate(resolved, added=_added(overrides))
    return cfg


def _added(overrides: list[str]) -> set[str]:
    """Keys added with `+key=...`: maybe typos, checked against real signatures (lab.schema)."""
    added = (o.split("=", 1)[0].lstrip("+") for o in overrides if o.startswith("+"))
    return {key for key in added if "/" not in key}


def _resolved(cfg: DictConfig) -> dict:
    """The task config as plain data, resolved as it will be in the run (`${hydra:...}` too)."""
    try:
        with read_write(cfg.hydra):
            cfg.hydra.runtime.output_dir = cfg.hydra.run.dir  # set by Hydra only once it runs
        HydraConfig.instance().set_config(cfg)
        return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for k, v in cfg.items() if k != "hydra"}  # fmt: skip
    except OmegaConfBaseException as e:
        raise UserError(first_line(e)) from None


def _composition_error(e: HydraException, name: str, overrides: list[str], restored: bool) -> str:
    """Hydra refuses `key=value` for a key not in the config: name the key, then either suggest
    the key meant or, when the key is a real argument of its node, say how to add it."""
    if present := re.match(r"Could not append to config. An item is already at '([^']+)'", str(e)):
        return f"{present[1]} is in the config already: set it without the +, {present[1]}=..."
    match = re.match(r"Could not override '([^']+)'", str(e))
    if not match:
        return first_line(e)
    key = match.group(1)
    forced = [f"++{o}" if o.split("=", 1)[0] == key else o for o in overrides]
    try:
        _compose_checked(name, forced, restored)
    except UserError as unknown:
        return str(unknown)
    value = next(o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key)
    return f"{key} is not in the config; to set this argument, add it: +{key}={value}"


def _variants(overrides: list[str]) -> list[list[str]]:
    """For a sweep: the first value of every swept key, then each other value changed alone."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(first_line(e)) from None
    for o in parsed:
        if o.is_sweep_override() and o.get_key_element() == "name":
            raise UserError(
                f"{o.input_line}: a sweep has one name, the suffix of its folder; its jobs are"
                " told apart by their swept keys"
            )
    values = [_sweep_values(o) if o.is_sweep_override() else [o.input_line] for o in parsed]
    base = [v[0] for v in values]
    variants = [base]
    for i, options in enumerate(values):
        variants += [[*base[:i], v, *base[i + 1 :]] for v in options[1:]]
    return variants[:MAX_VARIANTS]


def _sweep_values(o) -> list[str]:
    key = o.get_key_element()
    try:
        return [f"{key}={v}" for v in o.sweep_string_iterator()]
    except Exception:  # an interval (for an optimizing sweeper): check both ends
        sweep = o.value()
        return [f"{key}={getattr(sweep, end)}" for end in ("start", "end") if hasattr(sweep, end)]
