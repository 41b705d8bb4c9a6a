"""Probabilities that mean what they say: temperature scaling and expected calibration error.

A network trained with cross-entropy is often over-confident: of the images it calls 99% sure,
fewer than 99% are right. Temperature scaling (Guo et al., 2017) divides the logits by one number
T, fitted on held-out data to minimize the negative log-likelihood; the predicted class does not
change, only how sure it claims to be. Here T is fitted on the validation split at every
validation (`TemperatureFit`, summed over DDP processes), so each checkpoint carries the T that
fits its own weights, and predict's probabilities are softmax(logits / T). The expected
calibration error (ECE) is torchmetrics' `MulticlassCalibrationError`: over 15 equal-width
confidence bins, the mean gap between confidence and accuracy, weighted by how many images fall
in each bin.
"""

import math

import torch
from torch import Tensor
from torchmetrics import Metric

BINS = 15
LOG_T_RANGE = (math.log(0.05), math.log(20.0))  # the temperatures searched


def fit_temperature(logits: Tensor, labels: Tensor, steps: int = 60) -> float:
    """The T > 0 that minimizes the mean cross-entropy of softmax(logits / T): a golden-section
    search on log T (the loss is unimodal in it), deterministic and in float64."""
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        return float(torch.nn.functional.cross_entropy(scaled, labels))

    lo, hi = LOG_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = BINS) -> float:
    """ECE of class probabilities (N, C) against labels (N,): torchmetrics'."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(probs, labels, probs.shape[1], n_bins=bins))


class TemperatureFit(Metric):
    """The validation logits and labels of an epoch (gathered from every process); `compute`
    fits the temperature on them."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, logits: Tensor, labels: Tensor) -> None:
        self.logits.append(logits.float())
        self.labels.append(labels)

    def compute(self) -> Tensor:
        logits = torch.cat(self.logits) if isinstance(self.logits, list) else self.logits
        labels = torch.cat(self.labels) if isinstance(self.labels, list) else self.labels
        return torch.tensor(fit_temperature(logits.cpu(), labels.cpu()))
