"""Name -> class registries, so a config names a model, strategy or data set by a string."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of classes (or factories) of one pluggable kind.

    With ``name_attr`` the decorator also sets that class attribute to the registered name, so a
    class states its name once (e.g. a strategy's ``name``).
    """

    def __init__(self, kind: str, name_attr: str | None = None) -> None:
        self.kind = kind
        self.name_attr = name_attr
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            return obj

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, /, option: str | None = None, **kwargs: Any) -> T:
        """Instantiate ``name`` with ``kwargs``; an argument it does not take, or a value of another
        type than its annotation (``hidden: 512`` for ``Sequence[int]``), is a clear error naming
        ``option.<argument>`` (e.g. ``model.network_args``)."""
        factory = self.get(name)
        _check_types(factory, kwargs, f"{option}." if option else f"{self.kind} {name!r} argument ")
        params = inspect.signature(factory).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(kwargs) - set(params))
            if unknown:
                valid = [p for p in params if p not in ("self",)]
                raise ValueError(
                    f"{self.kind} {name!r} has no argument(s) {unknown}; valid arguments: {valid}"
                )
        return factory(**kwargs)


_SEQUENCES = (list, tuple, collections.abc.Sequence)
_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _expected(value: Any, hint: Any) -> str | None:
    """What ``hint`` asks for when ``value`` does not fit it (``None``: fits, or not checked).
    Checks the plain types a config can hold: scalars, sequences of them, ``Optional`` (the
    factories check the values themselves, e.g. of a ``Literal``)."""
    if not isinstance(value, (int, float, str, list, tuple, dict, type(None))):
        return None  # an object given from Python, not a config value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        wants = [_expected(value, a) for a in args]
        return None if None in wants else " or ".join(w for w in wants if w)
    if hint is type(None):
        return None if value is None else "null"
    if hint in _SCALARS:
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool)) or (
            hint is float and isinstance(value, int) and not isinstance(value, bool))
        return None if ok else _SCALARS[hint]
    if origin in _SEQUENCES:
        item = args[0] if args and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) else None
        what = f"a list of {_SCALARS[item].split(' ', 1)[1]}s" if item in _SCALARS and item is not bool else "a list"
        if not isinstance(value, (list, tuple)):
            return what
        return what if item is not None and any(_expected(v, item) for v in value) else None
    return None


def _check_types(factory: Callable[..., Any], kwargs: dict[str, Any], prefix: str) -> None:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # annotations that do not resolve here: left to the factory
        return
    params = inspect.signature(factory).parameters
    for key, value in kwargs.items():
        want = _expected(value, hints[key]) if key in hints else None
        if want:
            default = params[key].default if key in params else inspect.Parameter.empty
            example = "" if default is inspect.Parameter.empty else f", e.g. the default {_plain(default)!r}"
            raise ValueError(f"{prefix}{key}: expected {want}, got {value!r} (valid: {want}{example})")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
