"""A package's API loaded on first use (PEP 562): `import package` imports none of its submodules,
and `package.name` imports the one that defines it."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_api(package: str, api: dict[str, str]) -> Callable[[str], object]:
    """The module ``__getattr__`` of ``package`` for ``api``: name -> the submodule defining it."""

    def __getattr__(name: str) -> object:
        if name in api:
            return getattr(importlib.import_module(f".{api[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
