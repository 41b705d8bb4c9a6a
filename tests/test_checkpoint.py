"""Checkpoint files: atomic writes, checksums, refusal of damaged and code-carrying files."""

import errno
import os
import re
from pathlib import Path

import pytest
import torch

from mnistlab.lab import checkpoint
from mnistlab.lab.checkpoint import (
    AtomicCheckpointIO,
    CheckpointError,
    latest_intact,
    load,
    save,
    sidecar,
)
from mnistlab.lab.config import ROOT

STATE = {"state_dict": {"w": torch.arange(1000.0)}, "global_step": 7}


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


class RunsCode:
    """Unpickling this would create the file `path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def saved(tmp_path) -> Path:
    path = tmp_path / "last.ckpt"
    save(STATE, path)
    return path


def test_save_writes_the_file_and_a_sha256sum_line_beside_it(saved):
    assert torch.equal(load(saved)["state_dict"]["w"], STATE["state_dict"]["w"])
    digest, name = sidecar(saved).read_text().split()
    assert name == "last.ckpt" and re.fullmatch(r"[0-9a-f]{64}", digest)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]


@pytest.mark.parametrize("failure", ["serialization", "disk full"])
def test_a_failed_save_keeps_the_previous_checkpoint_byte_for_byte(saved, monkeypatch, failure):
    before = saved.read_bytes(), sidecar(saved).read_bytes()
    new = {**STATE, "global_step": 8}
    if failure == "serialization":
        new["extra"] = Unpicklable()
        error = RuntimeError
    else:

        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(checkpoint.os, "fsync", no_space)
        error = CheckpointError
    with pytest.raises(error) as err:
        save(new, saved)
    if failure == "disk full":
        assert f"cannot write checkpoint {saved}: No space left on device" in str(err.value)
    assert (saved.read_bytes(), sidecar(saved).read_bytes()) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "one byte flipped"])
def test_damaged_checkpoints_are_refused_in_one_line_naming_the_file(saved, damage):
    data = bytearray(saved.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    else:
        data[len(data) // 3] ^= 0x10
    saved.write_bytes(bytes(data))
    for loader in (load, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            loader(saved)
        assert str(saved) in str(err.value) and "\n" not in str(err.value)
    assert latest_intact(saved.parent) == (None, [f"last.ckpt ({checkpoint.verify(saved)})"])


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.ckpt"
    save({"state_dict": {}, "extra": RunsCode(marker)}, path)  # checksum matches: not the guard
    for loader in (load, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError, match=r"refused checkpoint .*evil\.ckpt"):
            loader(path)
    assert not marker.exists()


def test_without_checksum_only_an_explicit_loader_accepts_a_file(tmp_path):
    path = tmp_path / "from-elsewhere.ckpt"
    torch.save(STATE, path)
    with pytest.raises(CheckpointError, match="no checksum beside it"):
        load(path)
    assert load(path, require_checksum=False)["global_step"] == 7


def flip_byte_in(path: Path, member_suffix: str) -> None:
    """Flip one byte inside the stored data of the zip member whose name ends so."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(data[info.header_offset + k : info.header_offset + k + 2], "little")
                           for k in (26, 28))  # fmt: skip
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage", ["a tensor's byte", "a byte of data.pkl", "truncated", "empty sidecar"]
)
def test_a_checkpoint_without_its_sidecar_is_still_checked(tmp_path, damage):
    """As after `scp` of a lone checkpoint: the zip's CRC32s catch what the sha256 would."""
    path = tmp_path / "copied.ckpt"
    torch.save(STATE, path)
    if damage == "a tensor's byte":
        flip_byte_in(path, "data/0")
    elif damage == "a byte of data.pkl":
        flip_byte_in(path, "data.pkl")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        sidecar(path).write_text("")
    with pytest.raises(CheckpointError) as err:
        load(path, require_checksum=False)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    expected = {"empty sidecar": "checksum file copied.ckpt.sha256 is empty",
                "truncated": "not a readable checkpoint file"}.get(damage, "fails its CRC check")  # fmt: skip
    assert expected in message


def test_no_unsafe_loading_anywhere_in_src():
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "pickle.load(" not in text and "pickle.loads(" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
