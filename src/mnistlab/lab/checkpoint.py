"""Checkpoints that are never lost, never trusted blindly, and hold all a run needs to go on exactly.

- Written atomically: a temporary file in the same folder, fsync, rename, with a sha256 beside it
  (`last.ckpt.sha256`, in `sha256sum` format). A save that fails leaves the previous file as it was.
- Read only after the checksum matches, and only with `torch.load(weights_only=True)`: a damaged
  file is refused in one line, and a file crafted to run code when unpickled never runs it.
- `last.ckpt` is rewritten after every epoch. What a run's checkpoints hold beside the weights
  and Lightning's own state (the RNG states, the run's record) is `mnistlab.lab.record`.
"""

import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnistlab.lab import UserError
from mnistlab.lab.compat import save_last
from mnistlab.lab.files import atomic_write, file_sha256, write_whole

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, damaged, or not plain data (a fault of the
    file, not of the command line: exit 1)."""

    code = 1


def sidecar(path: Path) -> Path:
    return Path(f"{path}.sha256")


def save(checkpoint: dict, path: str | Path) -> None:
    """Write `checkpoint` to `path` and its checksum beside it, each replaced only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as f:  # both written whole before either is renamed into place
            torch.save(checkpoint, f)
            f.flush()
            # A crash between the two renames leaves a checkpoint and a checksum that disagree:
            # damage, so resuming takes the newest intact checkpoint.
            write_whole(sidecar(path), f"{file_sha256(Path(f.name))}  {path.name}\n".encode())
        _sync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not _write_failed(e):
            raise  # not the disk: something in the checkpoint that cannot be saved
        why = e.strerror if isinstance(e, OSError) else "the write failed (is the disk full?)"
        kept = "the previous one is kept" if path.is_file() else "none was written"
        raise CheckpointError(f"cannot write checkpoint {path}: {why}; {kept}") from e


def _write_failed(e: RuntimeError) -> bool:
    """torch.save's zip writer reports a failed write (a full disk) as a RuntimeError."""
    return any(
        m in str(e) for m in ("PytorchStreamWriter", "inline_container", "file write failed")
    )


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify(path: str | Path) -> str | None:
    """Why `path` cannot be trusted, or None when it matches its checksum."""
    path = Path(path)
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "empty file"
    if not sidecar(path).is_file():  # a copy from elsewhere: the zip's own CRCs still hold
        return _zip_damage(path) or f"no checksum beside it ({sidecar(path).name})"
    recorded = sidecar(path).read_text(errors="replace").split()
    if not recorded:
        return f"its checksum file {sidecar(path).name} is empty"
    actual, expected = file_sha256(path), recorded[0]
    return None if actual == expected else f"sha256 {actual[:12]}..., expected {expected[:12]}..."


def _zip_damage(path: Path) -> str | None:
    """What is wrong with a checkpoint as a zip file (torch.save's format, with a CRC32 per
    member), or None: a flipped bit in any tensor or in the pickle is found without a sidecar."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"damaged: not a readable checkpoint file ({str(e).splitlines()[0][:80]})"
    return f"damaged: {bad} fails its CRC check" if bad else None


_told: set[str] = set()


def load(path: str | Path, map_location="cpu", require_checksum: bool = True, quiet=False) -> dict:
    """A verified checkpoint as plain data; CheckpointError (one line, naming the file) otherwise.
    `require_checksum=False` accepts a file with no checksum beside it (one from elsewhere), and
    says so unless `quiet` (a command that may yet refuse it says so once it has not)."""
    path = Path(path)
    problem = verify(path)
    if problem and not (problem.startswith("no checksum") and not require_checksum):
        raise CheckpointError(f"checkpoint {path} is not usable: {problem}")
    if problem and not quiet:
        say_unverified(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused checkpoint {path}: it holds objects other than tensors and plain data, which"
            f" could run code when loaded ({str(e).splitlines()[-1][:120]})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged: {str(e).splitlines()[0]}") from None


def latest_intact(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in `folder` that matches its checksum, and why newer ones did not."""
    rejected = []
    candidates = sorted(Path(folder).glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if (problem := verify(path)) is None:
            return path, rejected
        rejected.append(f"{path.name} ({problem})")
    return None, rejected


def say_unverified(path: Path) -> None:
    """Once per file, however often it is loaded: a checkpoint with no checksum beside it."""
    if not sidecar(path).is_file() and str(path) not in _told:
        _told.add(str(path))
        log.warning("%s has no .sha256 beside it: checked by the CRCs inside the file only", path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, writing with `save` and reading with `load`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        from mnistlab.lab.signing import signature

        if "hyper_parameters" in checkpoint:  # its config, signed: eval here trusts its own runs
            checkpoint["origin"] = signature(checkpoint["hyper_parameters"]) or ""
        save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load(path, map_location or "cpu", require_checksum=False)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)
        sidecar(Path(path)).unlink(missing_ok=True)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is rewritten after every epoch: Lightning 2.6 rewrites it
    only when a top-k checkpoint is saved, so it falls behind once the monitored metric stalls.
    `save_latest` also writes it on demand, when a signal stops a run part-way."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        save_last(self, trainer, "on_train_epoch_end")

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        save_last(self, trainer, "on_validation_end")

    def load_state_dict(self, state_dict: dict) -> None:
        """A run folder that moved (copied from another machine, renamed) keeps its records:
        the paths under the folder its checkpoint names become paths under this one. Lightning
        would otherwise drop them, write `last-v1.ckpt` beside a stale `last.ckpt` and never
        prune the old best."""
        old, new = str(state_dict.get("dirpath") or ""), str(self.dirpath or "")
        if old and new and old != new:
            state_dict = _moved(state_dict, old, new)
        super().load_state_dict(state_dict)

    def save_latest(self, trainer) -> str | None:
        """Write last.ckpt unless it already holds this step; return its path."""
        save_last(self, trainer)
        return self.last_model_path or None


def _moved(value, old: str, new: str):
    if isinstance(value, dict):
        return {_moved(k, old, new): _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old) :]
    return value


def check_fits(state_dict: dict, model: torch.nn.Module, path: Path) -> None:
    """UserError in one line when the checkpoint's weights do not fit the configured model."""
    from torch.nn.parameter import is_lazy

    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    # A lazy layer's (nn.LazyLinear) shape is known once it has seen an input or loads weights.
    reshaped = [f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
                if k in state_dict and not is_lazy(v) and state_dict[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or reshaped:
        parts = [f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("other shape", reshaped)) if keys]  # fmt: skip
        raise UserError(
            f"checkpoint {path} does not fit the configured model ({'; '.join(parts)}); "
            "resume with the model settings the run started with, or use resume=never"
        )
