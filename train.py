"""Train a defense: `python train.py model=cnn trainer.max_epochs=5 seed=0` (configs in conf/)."""

import hydra
from omegaconf import DictConfig

from abslab.tasks import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train.run(cfg).get("test_acc")


if __name__ == "__main__":
    main()
