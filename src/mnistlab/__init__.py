"""mnistlab: a PyTorch Lightning + Hydra research template, with MNIST as its worked example.

What you change is in front: `train.py` (the run), `nets.py` (networks), `classifier.py` and
`autoencoder.py` (LightningModules), `data/` (LightningDataModules and their sources) and
`classify/` (what classification adds: predict, calibration, pictures, eval-wild). `lab/` is
the machinery, which reaches this code only through the configs' `_target_`s.
"""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """The example's config resolver, `${class_folders:root}` (conf/data/image_folder.yaml), made
    known whenever any of the package is imported, the machinery's commands included. Without
    omegaconf (an exported model loaded where only torch is) there are no configs to resolve."""
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return

    def class_folders(root):
        from mnistlab.data.folders import dataset_classes
        from mnistlab.lab.config import project_path

        return dataset_classes(project_path(root))

    if not OmegaConf.has_resolver("class_folders"):
        OmegaConf.register_new_resolver("class_folders", class_folders)


_register_resolvers()
