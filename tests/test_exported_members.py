"""Every module's __all__ is sorted and lists exactly its public names (httpx's check)."""

import importlib
import inspect
import pkgutil

import pytest

import triage

MODULES = sorted(m.name for m in pkgutil.iter_modules(triage.__path__) if m.name != "__main__")


def _isort_key(name):
    """isort-style order, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return (kind, name)


@pytest.mark.parametrize("name", ["__init__", *MODULES])
def test_all_is_sorted_and_complete(name):
    module = triage if name == "__init__" else importlib.import_module(f"triage.{name}")
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key), f"triage.{name}.__all__ is not sorted"
    if name == "__init__":
        return
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }
    assert defined <= set(exported), f"triage.{name}: not in __all__: {sorted(defined - set(exported))}"
