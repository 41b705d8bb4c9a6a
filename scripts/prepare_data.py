"""Fetch and verify the dataset (MNIST), or decode an image folder into its cache, without
training: e.g. on a login node before offline jobs run.

python scripts/prepare_data.py [hydra overrides, e.g. paths.data_dir=/scratch/data]
"""

import logging
import sys

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mnistlab.lab import UserError
from mnistlab.lab.config import CONF_DIR


def main(overrides: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    try:
        datamodule.prepare_data()
    except UserError as e:
        logging.error("%s", e)
        return 1
    where = getattr(datamodule, "raw_dir", None) or getattr(datamodule, "cache_dir", "")
    print(f"Ready: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
