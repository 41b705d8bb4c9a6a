"""mnistlab: a PyTorch Lightning + Hydra research template, with MNIST as its worked example."""

__version__ = "0.1.0"


class UserError(Exception):
    """A failure the user can fix (missing data, bad setting): reported in one line, no traceback."""
