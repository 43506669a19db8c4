"""Hyperparameter axes of a comparison: the numeric config keys other than rule and depth that a sweep
varied (`optimizer.lr`, `train.batch_size`, `model.width`, `model.init.scale`, ...). Pure: no printing,
no files written.

For an axis K the groups are sliced by every other grouping key except the rule (the depth only when
it differs), so that within a slice each rule has one mean final test accuracy per value of K. The
"tuned" comparison picks, per rule, the best group over all the axes at once (per depth and per any
non-numeric key), the fair way to rank rules whose best learning rates differ. Every best value and
best setting is chosen on the mean final VALIDATION accuracy and reported with the test accuracy
there: choosing on the test set would report the maximum of noisy estimates as the rule's accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from bioprop_cli.records import is_number
from bioprop_cli.report.aggregate import (
    ALWAYS_KEYS, Group, _hashable, _pct, _rule_rank, _sort_value, context_label, format_value,
)


def diverged(group: Group) -> int:
    return group.stats.get("status", {}).get("diverged", 0)


def stable(group: Group) -> bool:
    """No seed of the group diverged. A diverged run's summary keeps the accuracy of its last finite
    epoch, so an unstable setting could otherwise look best; the best-value findings skip it."""
    return diverged(group) == 0


def selection_accuracy(group: Group) -> Optional[float]:
    """What a setting is chosen on: the mean final validation accuracy (None without a validation set,
    or where a seed diverged)."""
    val, test = group.stats.get("val_accuracy_mean"), group.stats.get("test_accuracy_mean")
    return val if stable(group) and test is not None else None


def unselectable(groups: list[Group]) -> bool:
    """Some stable group has a test accuracy but no validation accuracy (data.validation_size 0)."""
    return any(stable(g) and g.stats.get("test_accuracy_mean") is not None and g.stats.get("val_accuracy_mean") is None
               for g in groups)


def axis_keys(groups: list[Group], keys: list[str]) -> list[str]:
    """The grouping keys, other than rule and depth, whose values are all numbers with at least two distinct ones."""
    out = []
    for k in keys:
        if k in ALWAYS_KEYS:
            continue
        values = [g.keys.get(k) for g in groups]
        if values and all(is_number(v) for v in values) and len(set(values)) > 1:
            out.append(k)
    return out


def _fixed_keys(groups: list[Group], left_out) -> list[str]:
    """The grouping keys that name a context: all but the rule and `left_out`, and the depth only where it varies."""
    keys = groups[0].keys if groups else {}
    depth_varies = len({_hashable(g.keys.get("model.depth")) for g in groups}) > 1
    return [k for k in keys if k != "rule" and k not in left_out and (k != "model.depth" or depth_varies)]


def _context(group: Group, keys: list[str]) -> tuple:
    return tuple((k, _hashable(group.keys.get(k))) for k in keys)


@dataclass
class AxisSlice:
    key: str  # the axis
    context: tuple  # ((key, value), ...): the other grouping keys held fixed in this slice
    values: list  # the axis values present, sorted
    by_rule: dict  # {rule: {axis value: Group}}

    @property
    def label(self) -> str:
        return context_label(self.context)

    def accuracy(self, rule: Any, value: Any) -> Optional[float]:
        g = self.by_rule.get(rule, {}).get(value)
        return None if g is None else g.stats.get("test_accuracy_mean")

    def best_value(self, rule: Any) -> Optional[tuple[Any, float]]:
        """(axis value, mean final test accuracy there) for the value with the highest mean final
        validation accuracy for `rule` among those where no seed diverged; None without any."""
        scored = [(val, v) for v in self.values if v in self.by_rule.get(rule, {})
                  and (val := selection_accuracy(self.by_rule[rule][v])) is not None]
        if not scored:
            return None
        _, v = max(scored, key=lambda t: (t[0], -_sort_value(t[1])[1]))  # ties: the smaller value
        return v, self.accuracy(rule, v)


def axis_slices(groups: list[Group], key: str) -> list[AxisSlice]:
    """One slice per combination of the other grouping keys (depth only where it varies), in group order."""
    fixed = _fixed_keys(groups, (key,))
    slices: dict[tuple, AxisSlice] = {}
    for g in groups:
        context = _context(g, fixed)
        s = slices.setdefault(context, AxisSlice(key=key, context=context, values=[], by_rule={}))
        value = g.keys.get(key)
        s.by_rule.setdefault(g.rule, {})[value] = g
        if value not in s.values:
            s.values.append(value)
    for s in slices.values():
        s.values.sort(key=_sort_value)
        s.by_rule = {r: s.by_rule[r] for r in sorted(s.by_rule, key=_rule_rank)}
    return list(slices.values())


def tuned_best(groups: list[Group], axes: list[str]) -> dict[tuple, dict[Any, Group]]:
    """{context: {rule: the group with the highest mean final validation accuracy, none of whose seeds diverged}}; the context
    is every grouping key except the rule and the axes (so the depth, where it varies, and non-numeric keys). Groups
    without a validation accuracy are never chosen."""
    fixed = _fixed_keys(groups, axes)
    out: dict[tuple, dict] = {}
    for g in groups:
        val = selection_accuracy(g)
        if val is None:
            continue
        context = _context(g, fixed)
        best = out.setdefault(context, {})
        if g.rule not in best or val > selection_accuracy(best[g.rule]):
            best[g.rule] = g
    return {c: {r: by_rule[r] for r in sorted(by_rule, key=_rule_rank)} for c, by_rule in out.items()}


def setting_label(group: Group, axes: list[str]) -> str:
    return ", ".join(f"{k}={format_value(group.keys.get(k))}" for k in axes)


def _edge_note(values: list, best: list) -> str:
    """A warning when some rule's best value is the smallest or largest of three or more swept values."""
    if len(values) < 3:
        return ""
    edges = [name for name, v in (("smallest", values[0]), ("largest", values[-1])) if v in best]
    if not edges:
        return ""
    return f" Some optima are at the {' and the '.join(edges)} value swept: widen the grid to bracket them."


def axis_findings(groups: list[Group], axes: list[str], baseline: str = "bp") -> list[str]:
    """Per axis and slice: each rule's best value (or the one value every rule prefers); then, per
    context, each rule at its own best setting and its gap to the baseline's best."""
    lines = []
    for key in axes:
        for s in axis_slices(groups, key):
            where = f" ({s.label})" if s.context else ""
            best = {r: b for r in s.by_rule if (b := s.best_value(r)) is not None}
            if not best or len(s.values) < 2:
                continue
            chosen = {v for v, _ in best.values()}
            if len(best) > 1 and len(chosen) == 1:
                v = chosen.pop()
                per_rule = ", ".join(f"{r} {_pct(acc)}" for r, (_, acc) in best.items())
                line = f"{key}{where}: every rule is best at {key}={format_value(v)} on validation accuracy (test: {per_rule})."
            else:
                per_rule = ", ".join(f"{r} at {format_value(v)} ({_pct(acc)})" for r, (v, acc) in best.items())
                line = f"{key}{where}: best value per rule on validation accuracy (test accuracy there): {per_rule}."
            unstable = [f"{r} at {format_value(v)} ({diverged(g)} of {g.stats['n_runs']})" for r, by_value in s.by_rule.items()
                        for v, g in by_value.items() if not stable(g)]
            if unstable:
                line += f" Diverged (left out of the best values): {', '.join(unstable)}."
            lines.append(line + _edge_note(s.values, [v for v, _ in best.values()]))
    if not axes:
        return lines
    if unselectable(groups):
        lines.append("Some settings have no validation accuracy (data.validation_size 0): they are never chosen as a best "
                     "value or setting (a choice on the test set would overstate the chosen accuracy).")
    for context, by_rule in tuned_best(groups, axes).items():
        where = f" ({context_label(context)})" if context else ""
        ranked = sorted(by_rule.items(), key=lambda t: -t[1].stats["test_accuracy_mean"])
        parts = ", ".join(f"{r} {_pct(g.stats['test_accuracy_mean'])} ({setting_label(g, axes)})" for r, g in ranked)
        line = f"Each rule at its best setting on validation accuracy{where}, test accuracy there: {parts}."
        base = by_rule.get(baseline)
        others = [(r, g) for r, g in by_rule.items() if r != baseline]
        if base is not None and others:
            top = base.stats["test_accuracy_mean"]
            gaps = ", ".join(f"{r} {100 * (top - g.stats['test_accuracy_mean']):.2f}" for r, g in others)
            line += f" Gap to {baseline}'s best (points; negative = better than {baseline}): {gaps}."
        lines.append(line)
    return lines


MAX_CURVES = 8  # more groups than this: the per-epoch figures split into panels (see curve_panels)


def curve_panels(groups: list[Group], axes: list[str], max_curves: int = MAX_CURVES) -> tuple[list[tuple[str, list[Group]]], str]:
    """What the per-epoch figures draw: [(panel title, groups)] and a note for the caption.
    Up to `max_curves` groups: one panel with all of them. More: with swept axes, each rule at its
    best setting (tuned_best), one panel per context; without, one panel per setting of the keys
    other than the rule (a depth sweep: one panel per depth). Within a panel each rule appears once."""
    if len(groups) <= max_curves:
        return [("", list(groups))], ""
    if axes:
        best = tuned_best(groups, axes)
        panels = [(context_label(c), list(by_rule.values())) for c, by_rule in best.items()]
        return panels, "each rule at its best setting"
    panels: dict[tuple, list[Group]] = {}
    for g in groups:
        panels.setdefault(tuple((k, _hashable(v)) for k, v in g.keys.items() if k != "rule"), []).append(g)
    titles = {c: ", ".join("depth " + str(v) if k == "model.depth" else f"{k}={format_value(v)}" for k, v in c) for c in panels}
    return [(titles[c], gs) for c, gs in panels.items()], "one panel per setting"
