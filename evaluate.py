"""Evaluate a defense: `python evaluate.py model=cnn ckpt=PATH data.test_samples=1000`."""

import hydra
from omegaconf import DictConfig

from abslab.tasks import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return evaluate.run(cfg)["clean_accuracy"]


if __name__ == "__main__":
    main()
