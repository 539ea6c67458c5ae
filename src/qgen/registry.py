"""A small name -> constructor registry, in the manner of timm's ``register_model``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from qgen.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to constructors; constructors register themselves with :meth:`register`.

    ``check(name, fn)``, if given, runs on every registration and raises if ``fn`` does not fit (e.g. a
    model constructor whose signature differs from its torch-free description in :mod:`qgen.vocab`).
    """

    def __init__(self, kind: str, check: Callable[[str, Callable[..., T]], None] | None = None) -> None:
        self.kind = kind
        self._check = check
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that files ``fn`` under ``name``; a duplicate name is a programming error."""

        def add(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self._check is not None:
                self._check(name, fn)
            self._entries[name] = fn
            return fn

        return add

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Callable[..., T]]:
        """The registered constructors in registration order (for registries whose order means something)."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
