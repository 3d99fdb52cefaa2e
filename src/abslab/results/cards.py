"""How results show a model and a norm: their cards, read from configs, never typed in here.

A model's card is `conf/model/<name>.yaml`'s `card:` block (label, Table 1 column, curve colour
and line, the paper's all-attacks median and accuracy per norm); a norm's card is
`conf/norm/<name>.yaml`'s title, column, axis unit and the stem of the paper's curve data.
For a run the card comes from the config the run recorded (summary.json["config"]) first; runs
older than the cards are looked up in conf/ through Hydra's compose API; a name conf does not
know gets a default card (its name as label, placed after the known columns, no paper numbers),
so an unknown model or norm is shown, never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[3] / "conf"
# Colours of models whose card names none (a model conf does not know): none is the paper's.
SPARE_COLORS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:cyan")


@dataclass(frozen=True)
class ModelCard:
    """A model as tables and figures show it; paper: norm -> (median, accuracy at threshold)."""

    name: str
    label: str
    column: int | None = None
    color: str | None = None  # None: a spare colour, assigned per figure
    line: str = "-"
    paper: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, card: Mapping[str, Any] | None) -> ModelCard:
        """The card of a model config's `card:` block (None: the default card)."""
        if not card:
            return cls(name, label=name)
        paper = card.get("paper") or {}
        return cls(
            name,
            label=str(card.get("label") or name),
            column=card.get("column"),
            color=card.get("color"),
            line=str(card.get("line") or "-"),
            paper={norm: (float(m), float(a)) for norm, (m, a) in paper.items()},
        )


@dataclass(frozen=True)
class NormCard:
    """A norm as tables and figures show it; paper_curves: the stem of the paper's curve data."""

    name: str
    title: str
    column: int | None = None
    unit: str = ""
    paper_curves: str | None = None

    @classmethod
    def from_config(cls, name: str, norm: Mapping[str, Any] | None) -> NormCard:
        """The card of a norm config (None, or one older than the cards: the default card)."""
        if not norm or "title" not in norm:
            return cls(name, title=name)
        return cls(
            name,
            title=str(norm["title"]),
            column=norm.get("column"),
            unit=str(norm.get("unit") or ""),
            paper_curves=norm.get("paper_curves"),
        )


def order(card: ModelCard | NormCard) -> tuple[bool, int, str]:
    """Sort key: the cards' columns, then cards without a column by name."""
    return card.column is None, card.column or 0, card.name


@cache
def composed(group: str, name: str) -> dict[str, Any] | None:
    """conf/<group>/<name>.yaml as evaluate.py composes it (`<group>=<name>`): the config's
    `<group>` node, interpolations unresolved; None where conf has no such file."""
    fresh = not GlobalHydra.instance().is_initialized()
    context = initialize_config_dir(str(CONF), version_base="1.3") if fresh else nullcontext()
    try:
        with context:
            cfg = compose("evaluate", overrides=[f"{group}={name}"])
    except MissingConfigException:
        return None
    return OmegaConf.to_container(cfg[group])


def model_card(summary: Mapping[str, Any]) -> ModelCard:
    """The card of the model a run (its summary.json) attacked."""
    name = summary["model"]
    recorded = (summary.get("config") or {}).get("model") or {}
    if "card" in recorded:
        return ModelCard.from_config(name, recorded["card"])
    conf = composed("model", name)
    return ModelCard.from_config(name, conf.get("card") if conf else None)


def norm_card(summary: Mapping[str, Any]) -> NormCard:
    """The card of the norm a run attacked under."""
    name = summary["norm"]
    recorded = (summary.get("config") or {}).get("norm") or {}
    if "title" in recorded:
        return NormCard.from_config(name, recorded)
    return NormCard.from_config(name, composed("norm", name))


def table_models() -> list[str]:
    """The models with a Table 1 column in conf/model, in column order."""
    cards = [
        ModelCard.from_config(p.stem, (composed("model", p.stem) or {}).get("card"))
        for p in sorted((CONF / "model").glob("*.yaml"))
    ]
    return [c.name for c in sorted(cards, key=order) if c.column is not None]
