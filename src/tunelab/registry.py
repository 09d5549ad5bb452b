"""A tiny name → object registry that fails loudly on duplicates and unknown names."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from tunelab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered by name.

    Args:
        kind: what is registered, for error messages (e.g. "problem type").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            ConfigError: for an unknown name, suggesting the closest one.
        """
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(self._items)}"
            raise ConfigError(f"unknown {self.kind} '{name}'", hint=hint)
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)
