"""The schema stays in step with the constructors it describes."""

import importlib
import inspect

import pytest

from mnistlab import schema
from mnistlab.schema import SCHEMAS, fields

# Arguments the system passes itself rather than the config: the parameters to an optimizer
# factory, the optimizer to a scheduler factory.
SUPPLIED = {"torch.optim.": "params", "torch.optim.lr_scheduler.": "optimizer"}
PASSED_ON = {  # targets taking **kwargs, and where those go
    "lightning.pytorch.loggers.TensorBoardLogger": "torch.utils.tensorboard.SummaryWriter",
}


def load(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def arguments(target: str) -> set[str]:
    # As the command-line check reads them: `**kwargs` followed to the parent's __init__.
    names = set(schema.arguments(target, target, []) or {})
    if not names or target in PASSED_ON:
        params = inspect.signature(load(target)).parameters.values()
        names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if target in PASSED_ON:
        names |= arguments(PASSED_ON[target]) - {"log_dir"}
    return names - {arg for prefix, arg in SUPPLIED.items() if target.startswith(prefix)}


@pytest.mark.parametrize("target", sorted(SCHEMAS))
def test_schema_lists_exactly_the_constructor_arguments(target):
    assert set(fields(SCHEMAS[target])) == arguments(target)


def test_a_target_without_a_schema_class_is_checked_against_its_real_signature():
    from mnistlab import UserError
    from mnistlab.schema import validate

    scheduler = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_sise": 2}
    with pytest.raises(
        UserError,
        match=r"unknown key model\.scheduler\.step_sise; did you mean model\.scheduler\.step_size\?",
    ):
        validate({"model": {"_target_": "mnistlab.system.Classifier", "scheduler": scheduler}})
    net = {"_target_": "torch.nn.Linear", "in_features": 3}  # not partial: all required arguments
    with pytest.raises(
        UserError,
        match=r"model\.net: missing required argument\(s\) out_features of torch\.nn\.Linear",
    ):
        validate({"model": {"_target_": "mnistlab.system.Classifier", "net": net}})
    with pytest.raises(UserError, match=r"data\._target_=my\.Missing: cannot be imported"):
        validate({"data": {"_target_": "my.Missing"}})
    validate(
        {"model": {"_target_": "mnistlab.system.Classifier", "net": {**net, "out_features": 2}}}
    )  # correct: quiet


def test_an_argument_added_to_a_constructor_needs_no_schema_edit(monkeypatch):
    """A key the schema class lacks but the real constructor takes (as after you add an argument
    to your network) is accepted; one neither has is refused with the real arguments' names."""
    from mnistlab import UserError
    from mnistlab.schema import validate

    class Shorter:  # ConvNet's schema without `dropout`
        hidden: int

    monkeypatch.setitem(SCHEMAS, "mnistlab.nets.ConvNet", Shorter)

    def model(**net):
        return {"model": {"_target_": "mnistlab.system.Classifier",
                          "net": {"_target_": "mnistlab.nets.ConvNet", **net}}}  # fmt: skip

    validate(model(hidden=8, dropout=0.1))
    with pytest.raises(
        UserError, match=r"unknown key model\.net\.dropot; did you mean model\.net\.dropout\?"
    ):
        validate(model(dropot=0.1))


def test_top_level_keys_of_the_config_are_yours_but_a_plus_typo_is_refused():
    from mnistlab import UserError
    from mnistlab.schema import validate

    validate({"my_setting": 3})  # a key of conf/train.yaml the schema does not list
    with pytest.raises(UserError, match="unknown key sed; did you mean seed"):
        validate({"sed": 3}, added=["sed"])  # `+sed=3` on the command line
