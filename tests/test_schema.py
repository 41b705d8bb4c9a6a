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
