"""Plug-ins by name: the one lookup every family of algorithms uses.

Jobs, devices and command lines name an aggregation strategy, a tier configurator, a client
selector or a task by a string; the code behind each name is a class in a file of its own that
declares ``name`` and is decorated with its family's :meth:`Registry.register`. One helper for
all of them means one set of rules: a name is taken once (a second class under the same name is
refused at import, where the mistake is made, not later as the wrong algorithm silently
running), and an unknown name is answered with the names that exist, which is what someone who
mistyped one needs.

It lives at the bottom of the package graph (it imports nothing from the project) so that
``models/`` can register its tasks with it without importing anything above itself. Not to be
confused with :mod:`models.registry`, which resolves *base models* by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one plug-in family, keyed by their ``name`` class attribute.

    ``kind`` is how errors name the family (``"unknown strategy 'x'; known: ..."``).
    ``unknown_error`` is the exception an unknown name raises (a ``KeyError`` subclass keeps
    ``except KeyError`` callers working). ``lazy_members`` are modules imported on the first
    lookup instead of by the family's package: for a family whose members pull in heavy
    libraries that the package's importers must not pay for until they use one.
    """

    def __init__(self, kind: str, *, unknown_error: type[Exception] = KeyError,
                 lazy_members: Sequence[str] = ()):
        self.kind = kind
        self._unknown_error = unknown_error
        self._lazy_members = tuple(lazy_members)
        self._loaded = not self._lazy_members
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: make ``cls`` available under ``cls.name``.

        Registering the same class again is harmless (a module imported twice under one
        name); a different class under a taken name is a ``ValueError``.
        """
        name = getattr(cls, "name", None)
        if not name:
            raise TypeError(f"{cls.__name__} needs a class attribute `name`")
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"two {self.kind} classes named {name!r}: {existing.__name__} and {cls.__name__}")
        self._classes[name] = cls
        return cls

    def _load(self) -> None:
        if not self._loaded:
            for module in self._lazy_members:
                importlib.import_module(module)
            self._loaded = True

    def names(self) -> list[str]:
        """The registered names, sorted."""
        self._load()
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._classes

    def class_of(self, name: str) -> type[T]:
        """The class registered as ``name``; the family's ``unknown_error`` lists the known names."""
        self._load()
        try:
            return self._classes[name]
        except KeyError:
            raise self._unknown_error(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def get(self, name: str, *args, **kwargs) -> T:
        """A fresh instance of the class registered as ``name``, built with ``args`` and ``kwargs``."""
        return self.class_of(name)(*args, **kwargs)
