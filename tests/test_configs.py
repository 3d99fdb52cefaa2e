"""Every config file of every group composes, and what it describes instantiates."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from abslab.models.base import GRADIENT_MODES, build_defense
from abslab.results.figures import MODELS
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
    expected |= {"budget", "paper"}
    assert expected <= groups


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_config_composes_and_instantiates(group, option, tmp_path):
    primary = "evaluate" if group in ("attack", "norm", "budget", "paper") else "train"
    override = {"hydra": "hydra=default", "paper": f"+paper={option}"}.get(
        group, f"{group}={option}"
    )
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


@pytest.mark.parametrize("norm", ["l2", "linf", "l0"])
def test_paper_block_sweeps_the_six_models_under_its_norm_into_a_fixed_dir(norm, tmp_path):
    cfg = compose_config("evaluate", [f"+paper=table1_{norm}"], tmp_path)
    assert cfg.norm.name == norm and cfg.budget.name == "cpu" and cfg.weights == "own"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose(
            "evaluate", [f"+paper=table1_{norm}", "budget=paper"], return_hydra_config=True
        ).hydra
    models = hydra_cfg.sweeper.params.model.split(",")
    assert sorted(models) == sorted(MODELS)
    assert hydra_cfg.sweep.dir == f"results/sweeps/table1_{norm}_own_paper"


def test_budget_lowers_attacks_and_samples_per_model(tmp_path):
    from abslab.attacks.budget import apply_budget

    cfg = compose_config("evaluate", ["+paper=table1_l2", "model=abs"], tmp_path)
    apply_budget(cfg)
    assert cfg.data.test_samples == 50 and cfg.data.eval_batch_size == 10
    assert cfg.attack.boundary.steps == 50  # expensive_attacks win over attacks (300)
    assert cfg.attack.fgm_ge.estimator == "antithetic"
    cfg = compose_config("evaluate", ["+paper=table1_l2", "data.test_samples=7"], tmp_path)
    apply_budget(cfg)
    assert cfg.data.test_samples == 7 and cfg.attack.boundary.steps == 300  # given: kept
    cfg = compose_config(
        "evaluate", ["norm=l2", "budget=cpu", "+budget.attacks.fgm.stepz=3"], tmp_path
    )
    with pytest.raises(ValueError, match=r"sets \['stepz'\] of attack fgm"):
        apply_budget(cfg)
