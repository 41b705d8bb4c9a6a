"""Calibrated probabilities (mnistlab.classify.calibration): the temperature fitted on the validation
split, stored in every checkpoint; the test's expected calibration error with and without it.
The statistics here are fast; a real run's temperature and predict's flags are in the slow tier."""

import json

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from mnistlab.classify import predict
from mnistlab.classify.calibration import expected_calibration_error, fit_temperature
from mnistlab.train import train


def sampled(temperature: float, n: int = 20_000, classes: int = 10, seed: int = 0):
    """Logits, and labels drawn from softmax(logits / temperature): the true temperature."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, classes, generator=g)
    labels = torch.multinomial((logits / temperature).softmax(1), 1, generator=g).flatten()
    return logits, labels


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with():
    for true in (0.5, 1.0, 2.5):
        assert fit_temperature(*sampled(true)) == pytest.approx(true, rel=0.05)


def test_calibration_error_is_small_when_calibrated_and_falls_after_fitting():
    logits, labels = sampled(2.5)  # the raw softmax is over-confident
    raw = expected_calibration_error(logits.softmax(1), labels)
    fitted = expected_calibration_error(
        (logits / fit_temperature(logits, labels)).softmax(1), labels
    )
    assert raw > 0.1 and fitted < 0.02, (raw, fitted)


def test_calibration_error_matches_its_definition():
    probs = torch.rand(1000, 5).softmax(1)
    labels = torch.randint(0, 5, (1000,))
    confidence, predicted = probs.max(1)
    right, confidence = (predicted == labels).numpy(), confidence.numpy().astype(np.float64)
    which = np.minimum((confidence * 15).astype(int), 14)
    gaps = [abs(right[which == b].sum() - confidence[which == b].sum()) for b in range(15)]
    metric = MulticlassCalibrationError(5, n_bins=15)  # as the Classifier's test/ece
    for part in (slice(0, 400), slice(400, 1000)):  # two batches: carried between them
        metric.update(probs[part], labels[part])
    assert float(metric.compute()) == pytest.approx(sum(gaps) / 1000, abs=1e-6)
    assert expected_calibration_error(probs, labels) == pytest.approx(sum(gaps) / 1000, abs=1e-6)


@pytest.mark.slow  # a training run: the fast tier keeps to its three minutes
def test_a_run_stores_its_temperature_reports_the_error_and_predict_flags_doubt(
    tiny_cfg, synthetic_mnist, tmp_path, capsys
):
    cfg = tiny_cfg("trainer.max_epochs=2", "data.prepare=fit")
    metrics = train(cfg)
    assert {"test/ece", "test/ece_uncalibrated", "val/temperature"} <= metrics.keys()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    best = torch.load(results["best_checkpoint"], weights_only=True)
    temperature = float(best["state_dict"]["temperature"])
    assert temperature != 1.0 and temperature > 0
    assert temperature == pytest.approx(best["callback_metrics"]["val/temperature"])

    idx = synthetic_mnist.raw / "t10k-images-idx3-ubyte"
    out = tmp_path / "preds.json"
    args = [f"input={idx}", f"ckpt={results['best_checkpoint']}", f"output={out}"]
    assert predict.main([*args, "min_confidence=0.99"]) == 0
    rows = json.loads(out.read_text())
    assert all(r["uncertain"] == (r["prob"] < 0.99) for r in rows)
    assert any(r["uncertain"] for r in rows)
    assert "uncertain (probability below min_confidence=0.99)" in capsys.readouterr().err
    assert predict.main([*args, "min_confidence=1.5"]) == 2
    assert "min_confidence=1.5: a probability between 0 and 1" in capsys.readouterr().err
