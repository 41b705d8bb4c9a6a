"""The config rules stay in step with the constructors; keys are checked against the real ones."""

import importlib
import re
from typing import Literal

import pytest

from mnistlab.lab import UserError
from mnistlab.lab.schema import RULES, validate
from mnistlab.lab.signatures import arguments

OPTIMIZER = {"_target_": "torch.optim.Adam", "_partial_": True}
MODULE_TARGETS = {"torch.optim.": ["torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"]}


@pytest.mark.parametrize("target", sorted(RULES))
def test_every_rule_is_on_a_real_argument(target):
    """A rule on a key no constructor takes would never fire (and hides a renamed argument)."""
    for real_target in MODULE_TARGETS.get(target, [target]):
        importlib.import_module(real_target.rpartition(".")[0])
        real = arguments(real_target, real_target, [])
        assert real is not None, f"{real_target} takes **kwargs: its keys cannot be checked"
        assert set(RULES[target]) <= set(real), set(RULES[target]) - set(real)


def test_a_node_is_checked_against_its_real_signature():
    scheduler = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_sise": 2}
    with pytest.raises(
        UserError,
        match=r"unknown key model\.scheduler\.step_sise; did you mean model\.scheduler\.step_size\?",
    ):
        validate({"model": {"_target_": "mnistlab.classifier.Classifier", "scheduler": scheduler}},
                 deep=True)  # fmt: skip
    net = {"_target_": "torch.nn.Linear", "in_features": 3}  # not partial: all required arguments
    with pytest.raises(
        UserError,
        match=r"model\.net: missing required argument\(s\) out_features of torch\.nn\.Linear",
    ):
        validate({"model": {"_target_": "mnistlab.classifier.Classifier", "net": net}}, deep=True)
    with pytest.raises(UserError, match=r"data\._target_=my\.Missing: cannot be imported .*"
                       r"a module of your own goes in src/ or in a folder on PYTHONPATH"):  # fmt: skip
        validate({"data": {"_target_": "my.Missing"}}, deep=True)
    correct = {"_target_": "mnistlab.classifier.Classifier", "net": {**net, "out_features": 2},
               "optimizer": OPTIMIZER}  # fmt: skip
    validate({"model": correct}, deep=True)  # quiet
    validate({"model": {**correct, "nett": 1}})  # not deep: a key from a config file is not read
    with pytest.raises(UserError, match=r"unknown key model\.nett; did you mean model\.net\?"):
        validate({"model": {**correct, "nett": 1}}, added=["model.nett"])  # `+model.nett=1`


def test_an_argument_added_to_a_constructor_needs_no_schema_edit(monkeypatch):
    """A key without a rule that the real constructor takes (as after you add an argument to
    your network) is accepted; one it does not take is refused with the real arguments' names."""
    monkeypatch.setitem(RULES, "mnistlab.nets.ConvNet", {"hidden": int})  # no rule on `dropout`

    def model(**net):
        return {"model": {"_target_": "mnistlab.classifier.Classifier", "optimizer": OPTIMIZER,
                          "net": {"_target_": "mnistlab.nets.ConvNet", **net}}}  # fmt: skip

    validate(model(hidden=8, dropout=0.1), deep=True)
    with pytest.raises(
        UserError, match=r"unknown key model\.net\.dropot; did you mean model\.net\.dropout\?"
    ):
        validate(model(dropot=0.1), deep=True)


def test_top_level_keys_of_the_config_are_yours_but_a_plus_typo_is_refused():
    validate({"my_setting": 3})  # a key of conf/train.yaml the schema does not list
    with pytest.raises(UserError, match="unknown key sed; did you mean seed"):
        validate({"sed": 3}, added=["sed"])  # `+sed=3` on the command line


class Own:  # a constructor of one's own, outside the installed libraries: its hints are checked
    def __init__(self, hidden: int = 8, mode: Literal["min", "max"] = "min",
                 ratio: float | None = None, name: str = "x", net=None):  # fmt: skip
        pass


def test_the_type_hints_of_one_s_own_constructor_are_checked():
    for key, value, said in (("hidden", "abc", "model.hidden=abc: expected an integer"),
                             ("hidden", 1.5, "model.hidden=1.5: expected an integer"),
                             ("mode", "maxx", "model.mode=maxx: expected one of min, max"),
                             ("ratio", "half", "model.ratio=half: expected a finite number or null")):  # fmt: skip
        with pytest.raises(UserError, match=re.escape(said)):
            validate({"model": {"_target_": "test_schema.Own", key: value}}, deep=True)
    fine = {
        "hidden": 3,
        "mode": "max",
        "ratio": 1,
        "name": 123,
        "net": {"a": 1},
    }  # str: not checked
    validate({"model": {"_target_": "test_schema.Own", **fine}}, deep=True)
