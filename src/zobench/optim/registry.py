"""The method registry: a zeroth-order method registers itself by subclassing ``ZOOptimizer``.

A public ``ZOOptimizer`` subclass defined in ``zobench/optim/<name>.py`` is the method
``<name>`` (one file per method; its config is ``conf/optimizer/<name>.yaml``). A class defined
elsewhere, such as a user's own method, names itself in its class statement:
``class MyZO(ZOOptimizer, method="my_zo")``. Classes whose name starts with ``_``, private
modules (``_common``, ``_lowrank``) and unnamed subclasses outside the package (a test's
throwaway subclass) are not registered. The conformance suite (tests/optim/test_conformance.py)
runs over every registered method, and checks that every class ``zobench.optim`` exports and
every ``conf/optimizer`` target is registered, so no method escapes it.
"""

from __future__ import annotations

PACKAGE = "zobench.optim"
_METHODS: dict[str, type] = {}


def method_name(cls: type, method: str | None = None) -> str | None:
    """The name ``cls`` registers under: ``method`` if given, else its module's name inside
    ``zobench.optim`` (``zobench.optim.mezo.MeZO`` -> ``mezo``); None: not registered."""
    if method is not None:
        return method
    package, _, module = cls.__module__.rpartition(".")
    if package != PACKAGE or module.startswith("_") or cls.__name__.startswith("_"):
        return None
    return module


def register(cls: type, method: str | None = None) -> None:
    """Record ``cls`` under its method name (``ZOOptimizer.__init_subclass__`` calls this).

    Raises:
        TypeError: another class already holds the name (two methods in one file, or a user's
            ``method=`` that repeats a shipped one). A module imported again re-registers freely.
    """
    name = method_name(cls, method)
    if name is None:
        return
    known = _METHODS.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(
            f"method {name!r} is already {known.__module__}.{known.__qualname__}; "
            f"{cls.__module__}.{cls.__qualname__} needs another name (one method per file)"
        )
    _METHODS[name] = cls


def methods() -> dict[str, type]:
    """Every registered method, name -> class, sorted by name (import ``zobench.optim`` first:
    importing a method's module is what registers it)."""
    return dict(sorted(_METHODS.items()))


def unregister(name: str) -> None:
    """Forget ``name`` (tests that define a method of their own clean up with this)."""
    _METHODS.pop(name, None)
