"""Where a run came from, whatever its logger (mnistlab.lab.provenance): run.json with the code's
commit, its uncommitted changes as a patch, the versions, host, device and times; the same entry in
every checkpoint; the commit in `make compare`."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from mnistlab.lab import provenance
from mnistlab.train import train


def checkout(folder: Path, change: bool) -> str:
    """A git checkout with one commit, and (`change`) an uncommitted change; its commit."""
    folder.mkdir()

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=folder, check=True, capture_output=True, text=True).stdout  # fmt: skip

    git("init", "-q", "-b", "main")
    (folder / "net.py").write_text("width = 16\n")
    git("add", "net.py")
    git("commit", "-q", "-m", "first")
    if change:
        (folder / "net.py").write_text("width = 32\n")
        (folder / "my_net.py").write_text("depth = 3\n")  # new, not yet added
    return git("rev-parse", "HEAD").strip()


@pytest.fixture
def code(tmp_path, monkeypatch):
    def make(change: bool, name: str = "code") -> str:
        commit = checkout(tmp_path / name, change)
        monkeypatch.setattr(provenance, "ROOT", tmp_path / name)
        return commit

    return make


def test_a_csv_run_records_its_code_and_a_resumed_one_adds_a_start(tiny_cfg, code, tmp_path):
    commit = code(change=True)
    cfg = tiny_cfg("logger=csv")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    (entry,) = json.loads((run / "run.json").read_text())["starts"]
    assert entry["code"] == {"commit": commit, "branch": "main", "dirty": True, "new_files": 1,
                             "patch": "changes-0.patch"}  # fmt: skip
    patch = (run / "changes-0.patch").read_text()
    assert "-width = 16" in patch and "+width = 32" in patch and "+depth = 3" in patch
    # The patch rebuilds the code that ran: applied to a clean copy of the commit.
    copy = tmp_path / "copy"
    subprocess.run(["git", "clone", "-q", str(tmp_path / "code"), str(copy)], check=True)
    subprocess.run(["git", "apply", str(run / "changes-0.patch")], cwd=copy, check=True)
    assert (copy / "net.py").read_text() == "width = 32\n"
    assert (copy / "my_net.py").read_text() == "depth = 3\n"
    assert entry["status"] == "completed" and entry["ended"] >= entry["started"]
    assert (
        entry["versions"]["torch"] == torch.__version__.split("+")[0]
        or entry["versions"]["torch"] == torch.__version__
    )
    assert entry["versions"]["lightning"] and entry["device"] == "cpu" and entry["host"]
    assert entry["command"] and entry["cwd"]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["provenance"]
    assert saved["code"]["commit"] == commit and saved["started"] == entry["started"]

    # The same run trained on (resume): a second start; a clean checkout, no patch.
    code(change=False, name="clean")
    train(tiny_cfg("logger=csv", "trainer.max_epochs=2", f"resume={run}"))
    first, second = json.loads((run / "run.json").read_text())["starts"]
    assert first == entry and second["code"]["dirty"] is False and "patch" not in second["code"]
    assert (
        second["status"] == "completed"
        and provenance.commit_of(run) == second["code"]["commit"][:7]
    )


def test_compare_shows_each_run_s_commit(code, tmp_path, capsys):
    from mnistlab.lab import compare

    runs = []
    for name, change, lr in (("a", False, "0.001"), ("b", True, "0.002")):
        commit = code(change, name=f"code_{name}")
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"model:\n  optimizer:\n    lr: {lr}\n")
        (run / "results.json").write_text(json.dumps({"metrics": {"test/acc": 0.9}}))
        overrides = [f"model.optimizer.lr={lr}"]
        (run / "job.json").write_text(json.dumps({"overrides": overrides, "status": "completed"}))
        provenance.start(run, "cpu")
        runs.append((run, commit[:7] + ("+changes" if change else "")))
    assert compare.main([f"runs=[{runs[0][0]},{runs[1][0]}]"]) == 0
    assert f"| commit | {runs[0][1]} | {runs[1][1]} |" in capsys.readouterr().out


def test_not_a_checkout_is_said_not_guessed(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    entry = provenance.start(tmp_path, "cpu", argv=["x=1"])
    assert entry["code"]["commit"] is None and "not a git checkout" in entry["code"]["note"]
    assert entry["command"][1:] == ["x=1"] and provenance.commit_of(tmp_path) == "?"
