"""The budgets: what each measure (attnvgg_runtime.verify.measures) must stay within, per precision
(tolerances.toml merged with a user's file). The gate holds artifacts to them and records them
in the manifest, where a target box reads them; the layer fallback aims at them with a margin.
The judgement against a budget is the box-side package's (attnvgg_runtime.verify.budgets)."""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path

from attnvgg_export.models import ConfigError
from attnvgg_export.models.names import VARIANT_NAMES
from attnvgg_runtime.verify.budgets import METRICS, PRECISION_BUDGETS


def _read_toml(path: Path | None) -> dict:
    where = str(path) if path else "attnvgg_export/verify/tolerances.toml"
    try:
        text = Path(path).read_text() if path else (
            importlib.resources.files("attnvgg_export.verify") / "tolerances.toml").read_text()
        return tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read tolerances from {where}: {e}") from None


def _check_sections(config: dict, where: str) -> None:
    unknown = set(config) - {"precision", "variant"}
    unknown |= {f"precision.{p}" for p in config.get("precision", {}) if p not in PRECISION_BUDGETS}
    for variant, overrides in config.get("variant", {}).items():
        if variant not in VARIANT_NAMES:
            unknown.add(f"variant.{variant}")
            continue
        unknown |= {f"variant.{variant}.{p}" for p in overrides if p not in PRECISION_BUDGETS}
    if unknown:
        raise ConfigError(f"tolerances in {where}: unknown sections {sorted(unknown)}; known: "
                          f"[precision.<{'|'.join(PRECISION_BUDGETS)}>] and "
                          f"[variant.<{'|'.join(VARIANT_NAMES)}>.<precision>]")
    sections = [(f"precision.{p}", b) for p, b in config.get("precision", {}).items()]
    sections += [(f"variant.{v}.{p}", b) for v, o in config.get("variant", {}).items()
                 for p, b in o.items()]
    for name, budget in sections:
        bad = set(budget) - set(METRICS)
        if bad:
            raise ConfigError(f"tolerances in {where}, [{name}]: unknown keys {sorted(bad)}; "
                              f"known: {', '.join(METRICS)}")
        for key, value in budget.items():  # checked before anything runs, not after the gate
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
                    or value < 0:
                raise ConfigError(f"tolerances in {where}, [{name}] {key} = {value!r}: a budget is "
                                  f"a number >= 0 (e.g. {key} = 0.1); fix the file or leave the key "
                                  f"out for the default")


def load_tolerances(variant: str, path: Path | None = None) -> dict[str, dict[str, float]]:
    """precision -> budget: the defaults (attnvgg_export/verify/tolerances.toml), then a user file's sections
    merged over them key by key, then [variant.<name>.<precision>] overrides of both."""
    layers = [(_read_toml(None), "attnvgg_export/verify/tolerances.toml")]
    if path:
        layers.append((_read_toml(path), str(path)))
    budgets: dict[str, dict[str, float]] = {}
    for config, where in layers:
        _check_sections(config, where)
        for precision, budget in config.get("precision", {}).items():
            budgets.setdefault(precision, {}).update(budget)
    for config, _ in layers:
        for precision, override in config.get("variant", {}).get(variant, {}).items():
            budgets.setdefault(precision, {}).update(override)
    return budgets


def changed_budgets(variant: str, path: Path | None) -> list[str]:
    """Every budget key that ``path`` (a user's tolerances) sets to other than the default, as
    "precision.key default -> used", so that a loosened budget is never silent."""
    if path is None:
        return []
    defaults, used = load_tolerances(variant), load_tolerances(variant, path)
    return [f"{p}.{k} {defaults.get(p, {}).get(k, 'unset')} -> {v}"
            for p, budget in sorted(used.items()) for k, v in sorted(budget.items())
            if defaults.get(p, {}).get(k) != v]
