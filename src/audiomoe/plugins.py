"""User code without forking: import the user's modules before a command runs (bottom layer).

A plugin is a dotted module name (importable from ``sys.path``) or a path to a ``.py`` file; importing it runs its
``@register_adapter`` / ``@register_encoder`` / ``register_task`` / ``@register_metric`` calls, so everything the
package builds from a registry name can build the plugin's entries too. Given by ``audiomoe --plugin X`` (repeatable)
and by the training config's ``plugins: [...]``. A plugin is imported once per process, however often it is named.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_LOADED: dict[str, ModuleType] = {}  # resolved file path or dotted name -> module


class PluginError(ValueError):
    """A plugin could not be imported (one line: which plugin, from where, why, how to fix)."""


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def locate(spec: str, base_dir: str | Path | None = None) -> str:
    """A dotted name as given; a file as an absolute path: a relative one is looked up in the working directory,
    then in ``base_dir`` (the folder of the config file that names it)."""
    if not _is_file(spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.is_file() and base_dir is not None:
        path = Path(base_dir) / path
    return str(path.resolve())


def load_plugin(spec: str, where: str = "--plugin", base_dir: str | Path | None = None) -> ModuleType:
    """Import one plugin (found as :func:`locate` says)."""
    path = Path(locate(spec, base_dir))
    if _is_file(spec):
        key = str(path)
        if key in _LOADED:
            return _LOADED[key]
        if not path.is_file():
            raise PluginError(f"plugin {spec!r} (from {where}): no such file; give a path to a .py file or a "
                              "dotted module name on PYTHONPATH")  # fmt: skip
    else:
        key = spec
        if key in _LOADED:
            return _LOADED[key]
    try:
        if _is_file(spec):
            name = f"audiomoe_plugin_{path.stem}_{len(_LOADED)}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        else:
            module = importlib.import_module(spec)
    except Exception as err:
        missing = isinstance(err, ModuleNotFoundError) and err.name is not None and not _is_file(spec)
        if missing and (spec == err.name or spec.startswith(f"{err.name}.")):
            fix = "install it, add its folder to PYTHONPATH, or give a path to a .py file"
        else:
            fix = f"fix the error in {'that file' if _is_file(spec) else 'that module'} (--debug shows where)"
        reason = (str(err).splitlines() or [""])[0]
        raise PluginError(
            f"plugin {spec!r} (from {where}) could not be imported: {type(err).__name__}: {reason}; {fix}"
        ) from err
    _LOADED[key] = module
    return module


def load_plugins(
    specs: Sequence[str], where: str = "--plugin", base_dir: str | Path | None = None
) -> list[ModuleType]:
    """Import every plugin in order (see :func:`load_plugin`)."""
    return [load_plugin(spec, where, base_dir) for spec in specs]
