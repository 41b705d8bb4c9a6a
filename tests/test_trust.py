"""Files read back from disk build nothing but what belongs where they put it (mnistlab.lab.trust).

Each payload is a checkpoint, run folder, sweep folder or model.json that someone else could hand
a researcher. Every one must be refused in one line, with a non-zero exit, before anything is
called: the file it would write never appears, and no other file does either.
"""

import json
import shutil
import site
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runner import cli_args, run_cli, trained

from mnistlab.classify import predict, wild
from mnistlab.lab import UserError, export, report, signing, trust
from mnistlab.lab import compare as comparing
from mnistlab.lab import eval as evaluation
from mnistlab.lab.cli import prepare
from mnistlab.lab.config import ROOT

TINY = ["trainer.max_epochs=1", "trainer.limit_val_batches=2", "data.batch_size=32"]
OWN_NET = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))

    def forward(self, x):
        return self.layers(x)
"""


pytestmark = pytest.mark.usefixtures("fresh_logging")


@pytest.fixture(scope="module")
def run(synthetic_mnist, tmp_path_factory):
    """A run made by this checkout's command line: its folder and checkpoints are signed."""
    return trained(synthetic_mnist, tmp_path_factory.mktemp("trusted") / "run", *TINY)


def tree(*roots: Path) -> set[str]:
    """Every path under `roots`, and the names in site-packages (where a .pth file runs code).
    In the checkout's own logs/ and data/ (a researcher's may hold thousands of files), the
    first three levels: where a command makes its folders (`logs/<task>/runs/<stamp>`)."""
    found = set()
    for root in (r for r in roots if r.exists()):
        shallow = root in (ROOT / "logs", ROOT / "data")
        found |= {str(p) for p in (_levels(root, 3) if shallow else root.rglob("*"))}
    return found | {str(p) for d in site.getsitepackages() for p in Path(d).glob("*.pth")}


def _levels(root: Path, depth: int) -> list[Path]:
    found, level = [], [root]
    for _ in range(depth):
        level = [p for folder in level if folder.is_dir() for p in folder.iterdir()]
        found += level
    return found


class Refused:
    """Asserts a command refuses in one line, exits non-zero and leaves no file behind."""

    def __init__(self, capsys, *watched: Path):
        self.capsys, self.watched = capsys, (*watched, ROOT / "logs", ROOT / "data")

    def __call__(self, command, args: list[str], expected: str) -> None:
        before = tree(*self.watched)
        code = command.main(args)
        error = self.capsys.readouterr().err.strip()
        assert code != 0, error
        assert "\n" not in error and expected in error, error
        assert tree(*self.watched) == before


def foreign_ckpt(run: Path, folder: Path, edit) -> Path:
    """The run's best checkpoint as a lone file from elsewhere (no signature), its config edited."""
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    checkpoint = torch.load(best, weights_only=True)
    checkpoint.pop("origin", None)
    edit(checkpoint["hyper_parameters"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, folder / "given.ckpt")
    return folder / "given.ckpt"


def target(name: str, victim: Path, **more) -> dict:
    return {"_target_": name, **more, "file": str(victim), "mode": "w"}


# Each: where in the stored config, what is put there, the words of the refusal.
CHECKPOINT_PAYLOADS = {
    "tarfile through torch.nn's imports (the report's)": (
        "model.optimizer._args_", lambda v: [{
            "_target_": "torch.nn.modules.module.torch.serialization.tarfile.TarFile",
            "name": str(v), "mode": "w", "pax_headers": {"x": "y"}}],
        "it is a class tarfile.TarFile, not an nn.Module"),
    "zipfile through the download module": (
        "model.net._args_", lambda v: [target("mnistlab.data.download.zipfile.ZipFile", v)],
        "it is a class zipfile.ZipFile"),
    "FileIO through the predict module": (
        "model.net._args_", lambda v: [target("mnistlab.classify.predict.io.FileIO", v)],
        "it is a class _io.FileIO"),
    "a FileHandler, which writes on construction": (
        "model.net", lambda v: {"_target_": "mnistlab.lab.checkpoint.logging.FileHandler", "filename": str(v)},
        "it is a class logging.FileHandler"),
    "builtins.open": ("model.net", lambda v: target("builtins.open", v),
                      "not found in the packages a restored config may import from"),
    "a function of the project that writes a file, as a partial": (
        "model.optimizer", lambda v: {"_target_": "mnistlab.lab.files.write_whole", "_partial_": True,
                                      "path": str(v)},
        "it is a function mnistlab.lab.files.write_whole, not an Optimizer"),
    "a LightningModule from another package": (
        "model._target_", lambda v: "lightning.pytorch.demos.boring_classes.BoringModel",
        "and a LightningModule here comes from mnistlab"),
    "an nn.Module where an optimizer goes": (
        "model.optimizer._target_", lambda v: "torch.nn.Linear", "not an Optimizer"),
    "a method reached through a class": (
        "model.net._target_", lambda v: "mnistlab.nets.ConvNet.forward", "not an nn.Module"),
    "torch.hub.load through an allowed module": (
        "model.net", lambda v: {"_target_": "mnistlab.lab.checkpoint.torch.hub.load", "repo_or_dir": str(v)},
        "it is a function torch.hub.load"),
    "a class inside a list's item": (
        "model.net._args_", lambda v: [[target("mnistlab.data.download.zipfile.ZipFile", v)]],
        "model.net._args_[0][0]._target_="),
    "a callback of the trainer": (
        "trainer.callbacks", lambda v: [target("mnistlab.data.download.zipfile.ZipFile", v)],
        "trainer.callbacks[0]._target_=mnistlab.data.download.zipfile.ZipFile"),
    "an interpolation that creates a node": (
        "model.net", lambda v: "${oc.create:{_target_: mnistlab.data.download.zipfile.ZipFile, file: "
                               + str(v) + ", mode: w}}",
        "model.net._target_=mnistlab.data.download.zipfile.ZipFile"),
    "a resolver that decodes a node": (
        "model.net", lambda v: "${oc.decode:'{_target_: mnistlab.classify.predict.io.FileIO, file: "
                               + str(v) + ", mode: w}'}",
        "model.net._target_=mnistlab.classify.predict.io.FileIO"),
    "an escaped interpolation, resolved again when built": (
        "trainer.plugins", lambda v: ["\\${oc.create:{_target_: mnistlab.data.download.zipfile.ZipFile,"
                                      " file: " + str(v) + ", mode: w}}"],
        "trainer.plugins[0]=${oc.create:{_target_: mnistlab"),
    "a metric that loads a model from a path it is given": (
        "model.net", lambda v: {"_target_": "torchmetrics.multimodal.CLIPScore",
                                "model_name_or_path": str(v)},
        "model.net._target_=torchmetrics.multimodal.CLIPScore: refused, not found"),
    "a target that is not a name": ("model.net._target_", lambda v: ["os", "system"],
                                    "not a dotted name of a class"),
}  # fmt: skip


def _plant(where: str, value):
    def edit(hp):
        *parents, last = where.split(".")
        node = hp
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


@pytest.mark.parametrize("name", list(CHECKPOINT_PAYLOADS))
def test_a_foreign_checkpoint_builds_nothing_outside_its_kind(name, run, tmp_path, capsys):
    """Eval, predict, export and eval-wild refuse it in one line and write nothing."""
    where, value, expected = CHECKPOINT_PAYLOADS[name]
    victim = tmp_path / "victim.pth"
    ckpt = foreign_ckpt(run, tmp_path / "given", _plant(where, value(victim)))
    refused = Refused(capsys, tmp_path, run.parent)
    refused(evaluation, [f"ckpt={ckpt}"], expected)
    refused(predict, [f"input={ckpt}", f"ckpt={ckpt}"], expected)
    refused(export, [f"ckpt={ckpt}"], expected)
    refused(wild, [f"ckpt={ckpt}", f"data={tmp_path / 'wild'}"], expected)  # before the set
    assert not victim.exists()


def test_a_foreign_run_folder_builds_nothing_outside_its_kind(run, tmp_path, capsys):
    folder = tmp_path / "their_run"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("origin"))
    config = folder / ".hydra" / "config.yaml"
    plain = yaml.safe_load(config.read_text())
    plain["data"]["_target_"] = "mnistlab.data.mnist.MNISTDataModule.__init__"
    config.write_text(yaml.safe_dump(plain))
    expected = (
        "data._target_=mnistlab.data.mnist.MNISTDataModule.__init__: refused, it is a function"
    )
    refused = Refused(capsys, tmp_path, run.parent)
    refused(evaluation, [f"run={folder}"], expected)
    refused(predict, [f"input={config}", f"run={folder}"], expected)
    refused(export, [f"run={folder}"], expected)
    refused(wild, [f"run={folder}", f"data={tmp_path / 'wild'}"], expected)


@pytest.mark.parametrize("config", ["a: [", "- 1", "", "null"])
def test_a_run_folder_whose_config_is_no_run_config_is_one_line(config, run, tmp_path, capsys):
    folder = tmp_path / "broken"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("origin"))
    (folder / ".hydra" / "config.yaml").write_text(config)
    expected = "config.yaml: holds no run config" if config != "a: [" else "config.yaml: cannot be"
    Refused(capsys, tmp_path)(evaluation, [f"run={folder}"], expected)


def test_a_checkpoint_whose_config_is_no_run_config_is_one_line(run, tmp_path, capsys):
    ckpt = foreign_ckpt(run, tmp_path, lambda hp: None)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"] = "model"
    torch.save(checkpoint, ckpt)
    Refused(capsys, tmp_path)(evaluation, [f"ckpt={ckpt}"], "name its run folder with RUN=")


def test_an_edited_config_of_one_s_own_run_is_no_longer_trusted(run, tmp_path, capsys):
    """The signature covers the config: a change to it makes the folder foreign."""
    folder = tmp_path / "mine"
    shutil.copytree(run, folder)
    assert signing.made_here(folder)
    config = folder / ".hydra" / "config.yaml"
    config.write_text(
        config.read_text().replace("torch.optim.Adam", "mnistlab.lab.files.write_whole")
    )
    assert not signing.made_here(folder)
    Refused(capsys, tmp_path)(evaluation, [f"run={folder}"], "model.optimizer._target_=mnistlab")


def test_model_json_builds_only_a_network(tmp_path):
    victim = tmp_path / "victim"
    for name in ("mnistlab.data.download.zipfile.ZipFile", "builtins.open", "mnistlab.lab.files.write_whole",
                 "torch.nn.modules.module.torch.serialization.tarfile.TarFile"):  # fmt: skip
        network = {"class": name, "arguments": {"file": str(victim), "mode": "w"}}
        prep = {"mean": [0.5], "std": [0.5]}
        (tmp_path / "model.json").write_text(json.dumps({"network": network, "input": prep}))
        with pytest.raises(UserError, match=r"model\.json: network\.class=.*: refused"):
            export.load_exported(tmp_path)
    for broken in ('{"network": "builtins.open"}', "[]", "{", '{"network": {"class": "x"}}'):
        (tmp_path / "model.json").write_text(broken)
        with pytest.raises(UserError, match=r"model\.json: not an export of this template"):
            export.load_exported(tmp_path)
    assert not victim.exists()


def test_a_module_outside_the_allowed_packages_is_never_imported(tmp_path, monkeypatch):
    """Resolution imports nothing outside the allowed packages: a module that would write a file
    when imported stays unimported."""
    victim = tmp_path / "imported"
    (tmp_path / "planted.py").write_text(f"open({str(victim)!r}, 'w').close()\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="not found in the packages"):
        trust.check_config({"model": {"net": {"_target_": "planted.Net"}}})
    assert not victim.exists() and "planted" not in sys.modules


# ------------------------------------------------------------------ a recorded command line

RESUME_PAYLOADS = {
    "a Hydra callback (the report's)": (
        "+hydra.callbacks.pwn={_target_: pathlib.Path.write_text, self: VICTIM, data: x}",
        "it sets Hydra itself"),
    "Hydra's log file": ("hydra.job_logging.handlers.file.filename=VICTIM", "it sets Hydra itself"),
    "Hydra's run folder": ("hydra.run.dir=VICTIM", "it sets Hydra itself"),
    "the run's output moved elsewhere": ("paths.output_dir=VICTIM", "the one resume= names"),
    "a Hydra group": ("hydra/launcher=joblib", "it sets Hydra itself"),
    "a dict value with a target": (
        "model.net={_target_: mnistlab.data.download.zipfile.ZipFile, file: VICTIM, mode: w}",
        "model.net._target_=mnistlab.data.download.zipfile.ZipFile: refused, it is a class"),
    "a list value with a target": (
        "+model.net._args_=[{_target_: mnistlab.classify.predict.io.FileIO, file: VICTIM, mode: w}]",
        "model.net._args_[0]._target_=mnistlab.classify.predict.io.FileIO: refused"),
    "a callback through a dict value": (
        "+callbacks.x={_target_: mnistlab.lab.checkpoint.logging.FileHandler, filename: VICTIM}",
        "callbacks.x._target_=mnistlab.lab.checkpoint.logging.FileHandler: refused"),
    "an interpolation that creates a node": (
        '+model.net.x="${oc.create:{_target_: mnistlab.classify.predict.io.FileIO, file: VICTIM}}"',
        "model.net.x._target_=mnistlab.classify.predict.io.FileIO: refused"),
    "a new top-level node": ("+pwn={_target_: mnistlab.lab.files.write_whole, path: VICTIM}",
                             "pwn._target_=mnistlab.lab.files.write_whole: refused"),
    "a scalar target of the wrong kind": (
        "model.optimizer._target_=mnistlab.lab.files.write_whole", "not an Optimizer"),
    "a target reached by an attribute chain": (
        "+callbacks.x._target_=mnistlab.data.download.zipfile.ZipFile", "it is a class zipfile.ZipFile"),
    "a group option outside conf/": ("experiment=../../../tmp/evil", "not an option of experiment"),
    "a sweep": ("seed=1,2", "a run's override sweeps nothing"),
    "a package directive": ("model@hydra.x=classifier", "it sets Hydra itself"),
    "a bad interpolation": ("data.batch_size=${nope.nothing}", "nope"),
    "not an override at all": ("=1", "not a key of the config"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RESUME_PAYLOADS))
def test_resume_takes_a_recorded_command_line_as_data(name, tmp_path):
    recorded, expected = RESUME_PAYLOADS[name]
    victim = tmp_path / "victim.pth"
    folder = tmp_path / "their_run"
    (folder / ".hydra").mkdir(parents=True)
    overrides = folder / ".hydra" / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(["seed=3", recorded.replace("VICTIM", str(victim))]))
    kept = overrides.read_text()
    before = tree(tmp_path, ROOT / "logs")
    with pytest.raises(UserError) as refused:
        prepare([f"resume={folder}", f"paths.log_dir={tmp_path}"], "train")
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    assert tree(tmp_path, ROOT / "logs") == before and overrides.read_text() == kept


def test_the_real_command_refuses_a_planted_run_folder_in_one_line(tmp_path):
    folder = tmp_path / "their_run"
    (folder / ".hydra").mkdir(parents=True)
    victim = tmp_path / "victim.pth"
    payload = f"+hydra.callbacks.pwn={{_target_: pathlib.Path.write_text, self: {victim}, data: x}}"
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([payload]))
    proc = run_cli(f"resume={folder}", f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "overrides.yaml: +hydra.callbacks.pwn=" in proc.stderr and not victim.exists()


def test_recorded_overrides_of_a_foreign_run_that_are_plain_data_are_reused(tmp_path):
    folder = tmp_path / "their_run"
    (folder / ".hydra").mkdir(parents=True)
    recorded = ["experiment=two_conv", "model.optimizer.lr=0.002", "+trainer.gradient_clip_val=0.5",
                "~callbacks.model_summary", "data.checksums={a: b}", "name=my_target_run"]  # fmt: skip
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(recorded))
    argv = prepare([f"resume={folder}", f"paths.log_dir={tmp_path}"], "train")
    assert argv[: len(recorded)] == recorded


def test_report_and_compare_take_a_sweep_folder_as_data(tmp_path, capsys):
    """A job's recorded overrides that carry a command are refused, naming the file."""
    sweep = tmp_path / "sweep"
    payloads = {"job.json": "+hydra.callbacks.pwn={_target_: pathlib.Path.write_text}",
                ".hydra/overrides.yaml": "hydra.job_logging.handlers.file.filename=/tmp/x"}  # fmt: skip
    for n, (file, payload) in enumerate(payloads.items()):
        job = sweep / str(n)
        (job / ".hydra").mkdir(parents=True)
        record = ["seed=1", payload]
        (job / file).write_text(json.dumps({"overrides": record}) if file == "job.json"
                                else yaml.safe_dump(record))  # fmt: skip
        (job / "results.json").write_text(json.dumps({"metrics": {"test/acc": 0.5}}))
        refused = Refused(capsys, tmp_path)
        refused(report, [f"sweep={sweep}"], f"{job / file}: {payload}: refused")
        refused(comparing, [f"sweep={sweep}"], f"{job / file}: {payload}: refused")
        shutil.rmtree(job)
    job = sweep / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"overrides": "seed=1"}))  # a string, not a list
    Refused(capsys, tmp_path)(report, [f"sweep={sweep}"], "not a list of overrides")


# ------------------------------------------------------------------ what keeps working


@pytest.mark.slow  # 12-27 s of training or fuzzing: the fast tier stays near 3 minutes
def test_one_s_own_run_with_a_network_of_one_s_own_needs_no_trust(
    synthetic_mnist, tmp_path, monkeypatch, capsys
):
    """Made by this checkout: eval and resume need no trust=. The same folder without its
    signature (copied to another machine) names the package to trust, and trust= opens it."""
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text(OWN_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "logs" / "mine"
    env = {"PYTHONPATH": str(tmp_path)}
    own = ["~model.net", "+model.net={_target_: mynets.TinyNet}", *TINY]
    proc = run_cli(*cli_args(synthetic_mnist, run_dir), *own, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert signing.made_here(run_dir)
    assert evaluation.main([f"run={run_dir}"]) == 0
    assert export.main([f"run={run_dir}"]) == 0  # and its model.json, signed, loads as it is
    assert isinstance(
        export.load_exported(run_dir / "checkpoints").net, sys.modules["mynets"].TinyNet
    )
    more = [f"resume={run_dir}", "trainer.max_epochs=2"]
    assert prepare(more, "train")[-1] == f"hydra.run.dir={run_dir}"

    capsys.readouterr()
    (run_dir / ".hydra" / "origin").unlink()  # as copied elsewhere
    Refused(capsys, tmp_path / "logs")(evaluation, [f"run={run_dir}"],
                                       "model.net._target_=mynets.TinyNet: refused")  # fmt: skip
    with pytest.raises(UserError, match=r"model\.net\._target_=mynets\.TinyNet: refused.*"
                                        r"export MNISTLAB_TRUST=mynets"):  # fmt: skip
        prepare(more, "train")
    (run_dir / "checkpoints" / "model.json").write_text(
        (run_dir / "checkpoints" / "model.json").read_text().replace('"origin"', '"was"')
    )
    with pytest.raises(UserError, match=r"network\.class=mynets\.TinyNet: refused"):
        export.load_exported(run_dir / "checkpoints")
    assert export.load_exported(run_dir / "checkpoints", trust="[mynets]")  # Hydra's list too
    assert evaluation.main([f"run={run_dir}", "trust=mynets"]) == 0
    monkeypatch.setenv(trust.ENV, "mynets")
    assert prepare(more, "train")[-1] == f"hydra.run.dir={run_dir}"


@pytest.mark.slow  # 12-27 s of training or fuzzing: the fast tier stays near 3 minutes
def test_a_foreign_copy_of_a_run_resumes_as_the_run_would(run, synthetic_mnist, tmp_path):
    """Unsigned (from another machine), with the shipped targets only: resume= trains on."""
    folder = tmp_path / "copied"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("origin"))
    assert not signing.made_here(folder)
    proc = run_cli(f"resume={folder}", "trainer.max_epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [json.loads((r / "results.json").read_text())["global_step"] for r in (run, folder)]
    assert steps[1] == 2 * steps[0]
    # The moved folder's checkpoint records moved with it: last.ckpt rewritten, the old best pruned.
    last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == steps[1] and not list(folder.glob("checkpoints/last-v*"))
    assert len(list(folder.glob("checkpoints/epoch*.ckpt"))) == 1


def test_every_shipped_config_passes_the_check():
    """What the checkout itself composes is of the right kind everywhere: nothing legitimate is
    refused when it comes back from disk."""
    from conftest import compose_train

    from mnistlab.lab.config import CONF_DIR, to_plain

    choices = [f"experiment={p.stem}" for p in (CONF_DIR / "experiment").glob("*.yaml")]
    choices += ["callbacks=early_stopping", "debug=profiler", "logger=csv", "model/net=resnet"]
    for choice in choices:
        cfg = to_plain(compose_train([choice, "paths.output_dir=/x"]))
        trust.check_config(cfg)


# ------------------------------------------------------------------ the property

MODULES = ["mnistlab.data.download", "mnistlab.classify.predict", "mnistlab.lab.files", "mnistlab.nets",
           "mnistlab.lab.dashboard", "mnistlab.lab.checkpoint", "torch.nn", "torch.nn.modules.module",
           "torch.optim", "torchvision.transforms", "lightning.pytorch.callbacks"]  # fmt: skip


def _names() -> list[str]:
    import importlib

    names = []
    for module in MODULES:
        obj = importlib.import_module(module)
        for attr in sorted(vars(obj)):
            if attr.startswith("__"):
                continue
            names.append(f"{module}.{attr}")
            inner = vars(obj)[attr]
            if isinstance(inner, type) or type(inner).__name__ == "module":
                names += [f"{module}.{attr}.{a}" for a in sorted(vars(inner))[:40]
                          if not a.startswith("__")]  # fmt: skip
    return names


NAMES = _names()
PLACES = [
    *(p.replace("*", "x").replace("[]", "") for p in trust.PLACES),
    "model.net.block",
    "other",
]


def _configs():
    node = st.fixed_dictionaries({"_target_": st.sampled_from(NAMES)})
    return st.dictionaries(st.sampled_from(PLACES), node, min_size=1, max_size=4)


def _placed(cfg: dict, place: str, node: dict) -> None:
    *parents, last = place.split(".")
    for key in parents:
        cfg = cfg.setdefault(key, {})
    cfg[last] = node


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs())
def test_nothing_outside_an_allowed_kind_is_ever_accepted(nodes):
    """Random targets from the attributes of allowed modules (and one attribute further), at
    the places of a config: whatever the check accepts is, as Hydra itself resolves it, a class
    (or a factory of the project) of the kind that place takes, defined where that kind may be."""
    cfg: dict = {}
    for place, node in sorted(nodes.items()):
        _placed(cfg, place, dict(node))
    try:
        trust.check_config(cfg)
    except UserError:
        return
    for place, node, kind in trust._nodes(cfg, "", "an nn.Module"):
        obj = get_object(node["_target_"])
        bases, homes = trust.KINDS[kind]
        assert trust._under(obj.__module__, homes), (place, node)
        classes = tuple(get_object(b) for b in bases)
        if isinstance(obj, type):
            called = any("__call__" in vars(c) for c in obj.__mro__[:-1])
            assert issubclass(obj, classes) or (kind == "a transform" and called), place
        else:  # a factory: the project's, returning the kind
            assert obj.__module__.startswith("mnistlab."), place
            assert issubclass(obj.__annotations__["return"], classes), place


def test_a_trial_queued_in_a_study_from_elsewhere_is_no_command(tmp_path, capsys):
    """An Optuna storage is read back from disk: a trial queued there with a value outside the
    search space (here a node that would build a file writer) never becomes a job's override."""
    from conftest import need_modules

    need_modules("optuna", install="make install-sweep")
    import optuna

    from hydra_plugins.mnistlab_sweepers.optuna_sweeper import _asked

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    space = {"model.optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "data.batch_size": optuna.distributions.CategoricalDistribution([32, 64])}  # fmt: skip
    assert set(_asked(study, space).params) == set(space)  # a trial of its own: fine
    payload = "{_target_: pathlib.Path.write_text, self: /tmp/x.pth, data: x}"
    for queued in ({"model.optimizer.lr": payload}, {"model.optimizer.lr": 5.0},
                   {"data.batch_size": "64"}):  # fmt: skip
        study.enqueue_trial(queued, skip_if_exists=False)
        with pytest.raises(SystemExit) as stop:
            _asked(study, space)
        error = capsys.readouterr().err.strip().splitlines()[-1]  # after Optuna's own log lines
        assert stop.value.code == 2 and "outside the search space: refused" in error
    # Refused by us (failed), or by Optuna while asking (left running, failed by the next sweep).
    assert [t.state.name for t in study.trials[2:]] == ["FAIL", "RUNNING"]
