"""Per-class scores from a confusion matrix (true rows, predicted columns): precision, recall,
F1 and support for each class, with pandas. The classifier keeps them in results.json
(`per_class`) after its test, `make report` averages them over seeds, and predict prints them
for a folder of labelled images.
"""

import logging
from pathlib import Path

import torch

log = logging.getLogger("mnistlab.classify.predict")

COLUMNS = ["precision", "recall", "f1", "support"]


def per_class(matrix: torch.Tensor, classes: list[str]):
    """A DataFrame, one row per class. A class never predicted has precision 0 (no true positives); F1 is
    0 where precision and recall are both 0 (scikit-learn's `zero_division=0`)."""
    import pandas as pd  # when a test ends or predict has labels: start-up stays light

    counts = pd.DataFrame(matrix.cpu().double().numpy(), index=classes, columns=classes)
    hits = pd.Series(matrix.diagonal().cpu().double().numpy(), index=classes)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = (hits / predicted).fillna(0.0)
    recall = (hits / support).fillna(0.0)
    f1 = (2 * precision * recall / (precision + recall)).fillna(0.0)
    table = pd.DataFrame({"precision": precision, "recall": recall, "f1": f1,
                          "support": support.astype(int)})  # fmt: skip
    return table.rename_axis("class")


def macro_f1(table, matrix: torch.Tensor) -> float:
    """The mean F1 of the classes in the truth or the predictions (scikit-learn's macro F1)."""
    present = (matrix.sum(dim=1) > 0) | (matrix.sum(dim=0) > 0)
    return float(table.f1[present.cpu().numpy()].mean())


def as_record(table) -> dict[str, dict]:
    """Plain data for results.json: {class: {precision, recall, f1, support}}."""
    return {str(name): {k: (int(v) if k == "support" else float(v)) for k, v in row.items()}
            for name, row in table.iterrows()}  # fmt: skip


def text(matrix: torch.Tensor, classes: list[str]) -> str:
    """Accuracy, the per-class table and macro F1, and the confusion matrix, for a terminal."""
    import pandas as pd

    table = per_class(matrix, classes)
    counts = pd.DataFrame(matrix.cpu().long().numpy(), index=classes, columns=classes)
    total = int(matrix.sum())
    accuracy = float(matrix.diagonal().sum()) / total if total else float("nan")
    counts = pd.DataFrame(matrix.cpu().long().numpy(), index=classes, columns=classes)
    present = table[(table.support > 0) | (counts.sum(axis=0) > 0)]
    shown = table.astype({"support": str})  # counts as integers, the scores to 4 places
    return (f"accuracy {accuracy:.4f} ({int(matrix.diagonal().sum())} of {total}), macro F1"
            f" {macro_f1(table, matrix):.4f} over the {len(present)} classes labelled or predicted\n\n"
            f"{shown.to_markdown(floatfmt='.4f')}\n\n"
            f"confusion matrix (true rows, predicted columns):\n"
            f"{counts.rename_axis('true').to_markdown()}\n")  # fmt: skip


def folder_labels(root: Path, paths: list[Path], classes: list[str]) -> list[str] | None:
    """Each image's class when `root` is a labelled folder (`root/<class>/<image>`, every
    sub-folder named as one of the run's classes), else None (said when it nearly is)."""
    if not root.is_dir():
        return None
    parts = [p.relative_to(root).parts for p in paths]
    folders = {p[0] for p in parts if len(p) > 1}
    if not folders:
        return None
    if unknown := sorted(folders - set(classes)) or [
        "/".join(p)
        for p in parts
        if len(p) != 2  # a file beside the class folders, or deeper
    ]:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        log.info("Not a labelled folder (root/<class>/<image> with the run's classes %s): %s%s;"
                 " no accuracy", ", ".join(classes[:10]), ", ".join(map(str, unknown[:3])), more)  # fmt: skip
        return None
    return [p[0] for p in parts]


def labelled_summary(rows: list[dict], labels: list[str], classes: list[str]) -> str:
    """Accuracy, per-class scores and the confusion matrix of the rows that could be read."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = torch.zeros(len(classes), len(classes), dtype=torch.long)
    for row, label in zip(rows, labels, strict=True):
        if row["class"] is not None:
            matrix[index[label], index[row["class"]]] += 1
    return "\nLabelled by folder: " + text(matrix, classes)
