"""The error catalogue names every project error: a new one that is not listed fails here."""

from __future__ import annotations

import importlib
import pkgutil

from infra.cli import errors as catalogue
from infra.errors import LakesightError

PACKAGES = ("infra", "streams", "training", "handlers", "serving")


def _import_every_module() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            legacy = module.name.startswith("training.legacy.") and not module.name.endswith(".check")
            # Entry points act when imported (__main__ runs the CLI; the Functions app builds the app
            # from the environment's settings); legacy modules need Horovod.
            if module.name.endswith(("__main__", ".function_app")) or legacy:
                continue
            importlib.import_module(module.name)


def _subclasses(root: type) -> set[type]:
    found = set()
    for cls in root.__subclasses__():
        found |= {cls, *_subclasses(cls)}
    return found


def test_the_catalogue_lists_every_public_lakesight_error() -> None:
    _import_every_module()
    public = {cls for cls in _subclasses(LakesightError) if not cls.__name__.startswith("_")}
    listed = {getattr(catalogue, name) for name in catalogue.__all__}
    missing = sorted(f"{cls.__module__}.{cls.__name__}" for cls in public - listed)
    assert not missing, f"add to infra/cli/errors.py: {missing}"
    assert all(issubclass(cls, LakesightError) for cls in listed)
