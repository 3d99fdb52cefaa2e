"""Every config file of every group composes, and what it describes instantiates."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from abslab.models.base import GRADIENT_MODES, build_defense
from conftest import CONF, MNIST_ROOT, compose_config

GROUP_OPTIONS = sorted(
    (group.name, path.stem)
    for group in CONF.iterdir()
    if group.is_dir()
    for path in group.glob("*.yaml")
)


def test_every_group_has_options():
    groups = {group for group, _ in GROUP_OPTIONS}
    expected = {"data", "model", "trainer", "logger", "callbacks", "attack", "norm", "experiment"}
    assert expected <= groups


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_config_composes_and_instantiates(group, option, tmp_path):
    primary = "evaluate" if group in ("attack", "norm") else "train"
    override = f"{group}={option}" if group != "hydra" else "hydra=default"
    cfg = compose_config(primary, [override, f"data.root={MNIST_ROOT}"], tmp_path)
    datamodule = instantiate(cfg.data)
    model = build_defense(cfg.model)
    assert model.name == cfg.model.name
    assert model.gradient in GRADIENT_MODES
    if "ddp" not in str(cfg.trainer.get("strategy")) and cfg.trainer.accelerator != "gpu":
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
        trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks)
        assert trainer.default_root_dir == str(tmp_path)
    if cfg.get("logger") and "_target_" in cfg.logger:
        assert instantiate(cfg.logger) is not None
    assert datamodule.batch_size == cfg.data.batch_size


def test_unknown_config_name_lists_the_choices(tmp_path):
    with pytest.raises(MissingConfigException) as error:
        compose_config("train", ["model=resnet"], tmp_path)
    message = str(error.value)
    assert "resnet" in message and "cnn" in message and "madry" in message
