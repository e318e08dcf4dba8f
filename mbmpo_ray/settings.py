"""Typed settings with validation rules, shared by every config of the project (pure Python).

A setting is declared once with :func:`setting` (default, one-line doc, rule) in a dataclass
(``MetaConfig``, ``FitConfig``) or in an algorithm config's ``RULES`` table. :func:`problems`
checks every setting of an object against its rule and returns one line per problem, so a
config can report all mistakes at once, before anything starts::

    @dataclass
    class FitConfig:
        model_lr: float = setting(1e-3, "Adam learning rate", Rule(float, low=0, open_low=True))

    problems(FitConfig(model_lr="fast"))
    # ["model_lr must be a number > 0, got 'fast' (str)"]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What a setting accepts.

    Attributes:
        kind: ``int``, ``float`` (ints accepted), ``bool``, ``str`` or ``tuple`` (a tuple of
            positive ints, e.g. hidden layer sizes; ints >= ``low`` where ``low`` is given).
        low, high: inclusive bounds for numbers (``open_low`` / ``open_high``: exclusive).
        choices: the allowed values (for ``str`` settings).
        optional: ``None`` is allowed too.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] | None = None
    optional: bool = False

    def describe(self) -> str:
        """Human description of what is accepted, e.g. ``an integer >= 1``."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind is tuple:
            text = ("a tuple of positive integers, e.g. (64, 64)" if self.low is None
                    else f"a tuple of integers >= {self.low:g}")
        else:
            text = {int: "an integer", float: "a number", bool: "True or False",
                    str: "a string"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.open_low else '>='} {self.low:g}")
            if self.high is not None:
                bounds.append(f"{'<' if self.open_high else '<='} {self.high:g}")
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (" or None" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is of the right type and within the bounds."""
        if value is None:
            return self.optional
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is tuple:
            low = 1 if self.low is None else self.low
            return (isinstance(value, (tuple, list)) and len(value) > 0
                    and all(_is_int(v) and v >= low for v in value))
        if self.kind is str:
            ok = isinstance(value, str)
        elif self.kind is int:
            ok = _is_int(value)
        else:
            ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
        if not ok:
            return False
        if self.choices is not None and value not in self.choices:
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None
                    and (value >= self.high if self.open_high else value > self.high))

    def check(self, name: str, value: Any) -> str | None:
        """One line naming the setting, what it accepts and what it got; None if accepted."""
        if self.accepts(value):
            return None
        return f"{name} must be {self.describe()}, got {value!r} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Declared:
    """One setting of an algorithm config, declared once: its default, one-line doc and
    :class:`Rule` (the config's ``__init__``, ``validate()`` and ``--list-settings`` read it)."""

    default: Any
    doc: str
    rule: Rule


def declared_from(cls: type, names: Iterable[str]) -> dict[str, Declared]:
    """The :func:`setting` fields ``names`` of dataclass ``cls`` as declarations."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {n: Declared(fields[n].default, fields[n].metadata["doc"], fields[n].metadata["rule"])
            for n in names}


def setting(default: Any, doc: str, rule: Rule) -> Any:
    """A dataclass field with a default, a one-line doc and a :class:`Rule` (in its metadata)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use an immutable default (a tuple) for a setting")
    return dataclasses.field(default=default, metadata={"doc": doc, "rule": rule})


def rules_of(cls_or_obj: Any) -> dict[str, Rule]:
    """``name -> Rule`` of a dataclass declared with :func:`setting`."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls_or_obj)
            if "rule" in f.metadata}


def docs_of(cls_or_obj: Any) -> dict[str, str]:
    """``name -> one-line doc`` of a dataclass declared with :func:`setting`."""
    return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls_or_obj)
            if "doc" in f.metadata}


def problems(obj: Any, rules: Mapping[str, Rule] | None = None) -> list[str]:
    """Every setting of ``obj`` that its rule rejects, one line each (empty: all fine).

    ``rules`` defaults to the rules of the dataclass ``obj``.
    """
    rules = rules_of(obj) if rules is None else rules
    return [msg for name, rule in rules.items()
            if (msg := rule.check(name, getattr(obj, name))) is not None]


def build(cls: type, source: Any, **fixed: Any) -> Any:
    """An instance of dataclass ``cls`` whose fields are read, by the same name, from ``source``
    (an algorithm config); ``fixed`` overrides or supplies fields ``source`` does not have."""
    names = [f.name for f in dataclasses.fields(cls)]
    values = {n: getattr(source, n) for n in names if n not in fixed and hasattr(source, n)}
    return cls(**values, **fixed)


def raise_if(found: Iterable[str], owner: str) -> None:
    """Raise one ``ValueError`` listing every problem (one per line), if there are any."""
    found = list(found)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise ValueError(f"{owner}: {len(found)} invalid setting(s):\n{lines}")
