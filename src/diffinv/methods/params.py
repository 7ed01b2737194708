"""Typed method parameters: a method's signature is the one home of each parameter's type, range and default.

A parameter is annotated with its Python type (``bool``, ``int``, ``float``, ``str``, a ``Literal`` of
choices, ``tuple[int, int]``), and a range where one applies, as ``Annotated[int, Bounds(1)]``
(aliases below). :func:`check` accepts a value only if it is of that type (no bool for an int, no 2.5 for
an int, no ``"false"`` for a bool, no NaN or infinity for a float) and in range; :func:`parse_text`
reads the command line's text into the type first. Both raise :class:`ParamError` naming the parameter.
"""

from __future__ import annotations

import ast
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal


class ParamError(ValueError):
    """A method parameter of the wrong type or out of range; ``name`` is the parameter."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.reason = name, message


@dataclass(frozen=True)
class Bounds:
    """An interval, closed unless ``low_open`` / ``high_open``; None is unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


PositiveInt = Annotated[int, Bounds(1)]
NonNegativeInt = Annotated[int, Bounds(0)]
NonNegativeFloat = Annotated[float, Bounds(0.0)]
PositiveFloat = Annotated[float, Bounds(0.0, low_open=True)]
UnitInterval = Annotated[float, Bounds(0.0, 1.0)]


def hints(function: Any) -> dict[str, Any]:
    """The resolved annotations of ``function`` (``from __future__ import annotations`` leaves strings)."""
    return typing.get_type_hints(function, include_extras=True)


def describe(hint: Any) -> str:
    """What a value of ``hint`` must be, in words (for error messages and ``diffinv methods``)."""
    base, bounds = _split(hint)
    origin = typing.get_origin(base)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(base))
    if origin is tuple:
        return "a list of " + ", ".join(describe(a) for a in typing.get_args(base))
    words = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(base, str(base))
    return f"{words} {bounds}" if bounds is not None else words


def check(name: str, hint: Any, value: Any) -> Any:
    """``value`` as a parameter of type ``hint``: an int for a float becomes a float, a list for a tuple a
    tuple; anything else of the wrong type, not finite, out of range or not a choice raises :class:`ParamError`."""
    base, bounds = _split(hint)
    origin = typing.get_origin(base)
    wrong = ParamError(name, f"must be {describe(hint)}, got {value!r}")
    if origin is Literal:
        if not any(value == choice and type(value) is type(choice) for choice in typing.get_args(base)):
            raise wrong
        return value
    if origin is tuple:
        parts = typing.get_args(base)
        if not isinstance(value, (list, tuple)) or len(value) != len(parts):
            raise wrong
        return tuple(check(f"{name}[{k}]", part, v) for k, (part, v) in enumerate(zip(parts, value)))
    if base is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong
        value = float(value)
    elif base is str:
        if not isinstance(value, str):
            raise wrong
    elif not isinstance(value, base):
        raise wrong
    if bounds is not None and value not in bounds:
        raise wrong
    return value


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_text(name: str, hint: Any, text: str) -> Any:
    """A command-line value (``--param NAME=TEXT``) read as type ``hint``, then :func:`check`-ed."""
    base, _ = _split(hint)
    value: Any = text
    if base is bool and text.strip().lower() in _TRUE + _FALSE:
        value = text.strip().lower() in _TRUE
    elif base in (int, float) or typing.get_origin(base) is tuple:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ParamError(name, f"must be {describe(hint)}, got {text!r}") from None
    return check(name, hint, value)


def _split(hint: Any) -> tuple[Any, Bounds | None]:
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        return base, next((e for e in extras if isinstance(e, Bounds)), None)
    return hint, None
