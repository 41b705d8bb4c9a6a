"""What classification adds to the generic machinery: predict with class names, calibration,
the dashboard's pictures (predictions, confusion matrix, errors) and eval-wild.

They need more of a run than the machinery does, and `check` says what, in one place: the data
module is an `ImageDataModule` (`mnistlab.data.images`: its `classes`, input spec and
`to_input`), and the LightningModule's `forward` takes its normalized images and returns one
logit per class. A module may also have `probabilities(logits)` (the `Classifier`'s are
temperature-calibrated); softmax otherwise.
"""

import torch
from torch import Tensor

from mnistlab.data.images import ImageDataModule
from mnistlab.lab import UserError


def check(model, datamodule, what: str) -> None:
    """Refuse, in one line naming `what`, a model or data module the classification tools cannot
    use: data that is not an ImageDataModule, or a forward that is not one logit per class."""
    if not isinstance(datamodule, ImageDataModule):
        raise UserError(
            f"{what} needs a classifier's images: the data module is"
            f" {type(datamodule).__name__}, not an ImageDataModule (mnistlab.data.images)"
        )
    classes = len(datamodule.classes)
    probe = torch.zeros(1, *datamodule.spec.shape, device=model.device)
    try:
        with torch.no_grad():
            shape = tuple(model(probe).shape)
    except Exception as e:
        shape = f"an error ({type(e).__name__}: {str(e)[:80]})"
    if shape != (1, classes):
        raise UserError(
            f"{what} needs a classifier: {type(model).__name__}'s forward on a (1, "
            f"{', '.join(map(str, datamodule.spec.shape))}) batch gives {shape}, not (1, {classes})"
            f" logits for the {classes} classes"
        )


def probabilities(model, logits: Tensor) -> Tensor:
    """Class probabilities: the model's own (calibrated) when it has them, else softmax."""
    own = getattr(model, "probabilities", None)
    return own(logits) if callable(own) else logits.softmax(dim=1)
