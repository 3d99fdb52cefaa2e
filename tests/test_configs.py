"""Every config file of every group composes, and what it describes instantiates; attack
configs compose without copies, budgets and overrides reach every attack, bad values stop a run
before any attack runs."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig

from abslab.attacks.budget import apply_budget
from abslab.attacks.estimators import GradientEstimator
from abslab.attacks.ranges import ATTACK_RANGES
from abslab.attacks.suite import build_attacks, estimator_of, instantiate_attack
from abslab.models.base import GRADIENT_MODES, build_defense
from abslab.models.cnn import CNNDefense
from conftest import (
    CONF,
    MNIST_ROOT,
    REFERENCE_MODELS,
    compose_config,
    run_evaluate,
    tiny_overrides,
)

GROUP_OPTIONS = sorted(
    (group.name, path.stem)
    for group in CONF.iterdir()
    if group.is_dir()
    for path in group.glob("*.yaml")
)
EVALUATE_GROUPS = ("attack", "norm", "budget", "paper", "estimator")
PUBLISHED = f"published_root={REFERENCE_MODELS}"
TABLE1_MODELS = ["cnn", "binary_cnn", "nearest_neighbor", "madry", "binary_abs", "abs"]
PRETRAINED_CNN = f"model.pretrained={REFERENCE_MODELS / 'cnn'}"


def test_every_group_has_options():
    groups = {group for group, _ in GROUP_OPTIONS}
    expected = {"data", "model", "trainer", "logger", "callbacks", "attack", "norm", "experiment"}
    expected |= {"budget", "paper", "estimator"}
    assert expected <= groups


def _evaluate_override(group: str, option: str) -> list[str]:
    if group == "paper":
        return [f"+paper={option}"]
    if group == "estimator":  # the option of a _ge attack's nested estimator
        return ["norm=l2", "attack=fgm_ge", f"estimator@attack.fgm_ge.estimator={option}"]
    return [f"{group}={option}"]


def _attack_nodes(cfg: DictConfig) -> dict[str, DictConfig]:
    return dict((cfg.get("attack") or {}).items())


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_config_composes_and_instantiates(group, option, tmp_path):
    primary = "evaluate" if group in EVALUATE_GROUPS else "train"
    overrides = {"hydra": ["hydra=default"]}.get(group) or (
        _evaluate_override(group, option) if primary == "evaluate" else [f"{group}={option}"]
    )
    extra = [PUBLISHED] if primary == "evaluate" else []
    if option == "torch_module":  # a user's module: its class is required
        extra.append("model.module._target_=torch.nn.Identity")
    cfg = compose_config(primary, [*overrides, f"data.root={MNIST_ROOT}", *extra], tmp_path)
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
    if primary == "evaluate":  # every attack the config names builds, checks included
        apply_budget(cfg)
        for name, spec in _attack_nodes(cfg).items():
            assert instantiate_attack(name, spec).name == name
        if cfg.get("distal"):
            assert isinstance(estimator_of(cfg.distal.estimator, "distal"), GradientEstimator)


@pytest.mark.parametrize("norm", ["l2", "linf", "l0"])
def test_a_norm_selects_its_suite_and_the_suite_builds_on_a_small_model(norm, tmp_path):
    cfg = compose_config("evaluate", [f"norm={norm}", "budget=smoke", PUBLISHED], tmp_path)
    apply_budget(cfg)
    attacks, skipped = build_attacks(cfg.attack, norm, CNNDefense().eval())
    names = [a.name for a in attacks] + list(skipped)
    assert sorted(names) == sorted(_attack_nodes(cfg))
    assert all(a.norm == norm for a in attacks)
    assert len(names) >= 2  # each norm has at least salt and pepper and pointwise


def test_attack_selection_narrows_extends_and_overrides(tmp_path):
    def attacks(*overrides: str) -> list[str]:
        return list(_attack_nodes(compose_config("evaluate", list(overrides), tmp_path)))

    assert attacks() == []  # norm=none: clean accuracy only
    assert attacks("norm=linf", "attack=bim") == ["bim"]
    assert attacks("norm=linf", "attack=[bim,mim]") == ["bim", "mim"]
    suite = attacks("norm=linf")
    assert "bim" in suite and "pgd" not in suite
    assert attacks("norm=linf", "attack=[linf,pgd]") == [*suite, "pgd"]
    cfg = compose_config(
        "evaluate", ["norm=linf", "attack=[bim,mim]", "attack.bim.steps=3"], tmp_path
    )
    assert cfg.attack.bim.steps == 3 and cfg.attack.mim.steps != 3
    with pytest.raises(MissingConfigException, match="(?s)attack/bimm.*bim_l2"):
        compose_config("evaluate", ["norm=linf", "attack=bimm"], tmp_path)


def test_a_ge_attack_is_its_base_plus_an_estimator(tmp_path):
    cfg = compose_config("evaluate", ["norm=linf", "attack=[bim,bim_ge]"], tmp_path)
    base, ge = dict(cfg.attack.bim), dict(cfg.attack.bim_ge)
    assert {k: v for k, v in ge.items() if k not in ("estimator", "skip_exact_gradients")} == base
    attack = instantiate_attack("bim_ge", cfg.attack.bim_ge)
    assert attack.estimator == GradientEstimator("coordinate", step=0.1)
    assert attack.settings()["estimator"] == {"kind": "coordinate", "step": 0.1, "samples": None}
    overrides = ["norm=linf", "attack=bim_ge", "estimator@attack.bim_ge.estimator=antithetic"]
    cfg = compose_config("evaluate", [*overrides, "attack.bim_ge.estimator.samples=20"], tmp_path)
    assert instantiate_attack("bim_ge", cfg.attack.bim_ge).estimator.samples == 20


def test_every_numeric_attack_setting_has_a_declared_range(tmp_path):
    def numeric_keys(spec: DictConfig) -> set[str]:
        keys = set()
        for key, value in spec.items():
            if key == "substitute_attacks":
                keys = keys.union(*(numeric_keys(v) for v in value.values() if v is not None))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                keys.add(str(key))
        return keys

    cfg = compose_config("evaluate", ["norm=l2", "attack=[l2,linf,l0,pgd]"], tmp_path)
    found = set().union(*(numeric_keys(spec) for spec in cfg.attack.values()))
    assert "steps" in found and "eps_start" in found  # the walk sees the settings
    assert found <= set(ATTACK_RANGES), found - set(ATTACK_RANGES)


@pytest.mark.parametrize("norm", ["l2", "linf", "l0"])
def test_paper_block_sweeps_the_six_models_under_its_norm_into_a_fixed_dir(norm, tmp_path):
    cfg = compose_config("evaluate", [f"+paper=table1_{norm}"], tmp_path)
    assert cfg.norm.name == norm and cfg.budget.name == "cpu" and cfg.weights == "own"
    assert cfg.attack and all(spec.norm == norm for spec in cfg.attack.values())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose(
            "evaluate", [f"+paper=table1_{norm}", "budget=paper"], return_hydra_config=True
        ).hydra
    models = hydra_cfg.sweeper.params.model.split(",")
    assert sorted(models) == sorted(TABLE1_MODELS)
    assert hydra_cfg.sweep.dir == f"results/sweeps/table1_{norm}_own_paper"
    for model in models:  # each job of the multirun composes, its suite unchanged
        job = compose_config("evaluate", [f"+paper=table1_{norm}", f"model={model}"], tmp_path)
        assert job.model.name == model and list(job.attack) == list(cfg.attack)


def test_budget_lowers_attacks_and_samples_per_model(tmp_path):
    cfg = compose_config("evaluate", ["+paper=table1_l2", "model=abs"], tmp_path)
    apply_budget(cfg)
    assert cfg.data.test_samples == 50 and cfg.data.eval_batch_size == 10
    assert cfg.attack.boundary.steps == 50  # expensive_attacks win over attacks (300)
    assert cfg.attack.fgm_ge.estimator.kind == "antithetic"
    cfg = compose_config("evaluate", ["+paper=table1_l2", "data.test_samples=7"], tmp_path)
    apply_budget(cfg)
    assert cfg.data.test_samples == 7 and cfg.attack.boundary.steps == 300  # given: kept
    cfg = compose_config(
        "evaluate", ["norm=l2", "budget=cpu", "+budget.attacks.fgm.stepz=3"], tmp_path
    )
    with pytest.raises(ValueError, match=r"sets attack\.\S*fgm\.stepz, which"):
        apply_budget(cfg)
    cfg = compose_config("evaluate", ["norm=l2", "budget=cpu", "budget.samples=0"], tmp_path)
    with pytest.raises(ValueError, match=r"budget\.samples=0: must be an integer >= 1"):
        apply_budget(cfg)


@pytest.mark.parametrize("model", ["cnn", "abs"])
def test_a_budget_reaches_the_transfers_substitute_attacks(model, tmp_path):
    overrides = ["budget=cpu", f"model={model}", "norm=l2", "budget.attacks.deepfool_l2.steps=7"]
    cfg = compose_config("evaluate", overrides, tmp_path)
    apply_budget(cfg)
    nested = cfg.attack.transfer_l2.substitute_attacks.deepfool_l2.steps
    assert nested == cfg.attack.deepfool_l2.steps
    assert nested == (7 if model == "cnn" else cfg.budget.expensive_attacks.deepfool_l2.steps)


def test_overrides_reach_and_drop_substitute_attacks_by_their_path(tmp_path):
    path = "attack.transfer_l2.substitute_attacks"
    overrides = ["norm=l2", "attack=transfer_l2", PUBLISHED, f"{path}.deepfool_l2.steps=4"]
    cfg = compose_config("evaluate", [*overrides, f"{path}.bim_l2=null"], tmp_path)
    transfer = instantiate_attack("transfer_l2", cfg.attack.transfer_l2)
    nested = transfer.settings()["substitute_attacks"]
    assert list(nested) == ["fgm", "deepfool_l2"] and nested["deepfool_l2"]["steps"] == 4
    cfg = compose_config("evaluate", ["norm=l2", "budget=smoke", PUBLISHED], tmp_path)
    apply_budget(cfg)
    transfer = instantiate_attack("transfer_l2", cfg.attack.transfer_l2)
    assert list(transfer.settings()["substitute_attacks"]) == ["fgm"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack=pgd", "+attack.pgd.bisect_steps=3"], "bisect_steps apply only with search: true"),
        (["attack=bim", "+attack.bim.stepz=3"], "attack.bim: .*'stepz': remove that key"),
        (["attack=bim", "+attack.bim.skip_exact_gradients=false"], "applies to attacks with an"),
        (["attack=bim_ge", "attack.bim_ge.estimator.samples=8"], "samples=8: must be null for"),
        (["attack=bim_ge", "attack.bim_ge.estimator.step=0"], r"estimator\.step=0: must be a"),
        (
            [
                "attack=transfer_linf",
                PUBLISHED,
                "attack.transfer_linf.substitute_attacks.bim.steps=0",
            ],
            r"substitute_attacks\.bim\.steps=0: must be an integer >= 1",
        ),
    ],
)
def test_settings_an_attack_would_ignore_or_misread_are_errors(overrides, message, tmp_path):
    cfg = compose_config("evaluate", ["norm=linf", *overrides], tmp_path)
    with pytest.raises(Exception, match=message):
        build_attacks(cfg.attack, "linf", CNNDefense().eval())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["norm=linf", "attack=bim", "attack.bim.steps=-3"],
            r"attack\.bim\.steps=-3: must be an integer >= 1\.",
        ),
        (
            ["norm=l2", "attack=boundary", "attack.boundary.max_queries=0"],
            r"attack\.boundary\.max_queries=0: must be an integer >= 1",
        ),
        (
            ["norm=linf", "attack=mim", "attack.mim.rel_stepsize=1.5"],
            r"attack\.mim\.rel_stepsize=1\.5: must be a number in \(0, 1\]",
        ),
    ],
)
def test_evaluate_stops_on_a_bad_value_before_any_attack_runs(overrides, message, tmp_path):
    run = [*tiny_overrides("model=cnn", PRETRAINED_CNN, "data.test_samples=2"), *overrides]
    with pytest.raises(ValueError, match=message):
        run_evaluate(run, tmp_path)
    assert not (tmp_path / "per_sample.csv").exists()


def test_evaluate_stops_on_a_probability_above_one_before_any_attack_runs(tmp_path):
    """The ABS bank's share of least likely draws left out is a probability: 1.5 is refused."""
    run = tiny_overrides("model=abs", "model.fraction_to_dismiss=1.5", "norm=l2", "attack=fgm")
    with pytest.raises(Exception, match=r"fraction_to_dismiss=1\.5: it must be in \[0, 1\)"):
        run_evaluate(run, tmp_path)
    assert not (tmp_path / "per_sample.csv").exists()


def test_unknown_config_name_lists_the_choices(tmp_path):
    with pytest.raises(MissingConfigException) as error:
        compose_config("train", ["model=resnet"], tmp_path)
    message = str(error.value)
    assert "resnet" in message and "cnn" in message and "madry" in message
