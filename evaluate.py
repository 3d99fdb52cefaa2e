"""Evaluate a defense: `python evaluate.py model=cnn ckpt=PATH data.test_samples=1000`.
With `distal` set (+paper=figure_distal): the model's distal adversarials instead."""

import hydra
from omegaconf import DictConfig

from abslab.tasks import distal, evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    if cfg.distal is not None:
        distal.run(cfg)
        return None
    return evaluate.run(cfg)["clean_accuracy"]


if __name__ == "__main__":
    main()
