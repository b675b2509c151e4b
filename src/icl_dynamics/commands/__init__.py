"""Extra CLI commands. Each module here registers its commands with :func:`icl_dynamics.cli.command`;
every module in this package is imported when the CLI builds its parser."""

import importlib
import pkgutil


def load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
