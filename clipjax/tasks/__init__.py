"""Tasks: each module here that defines `TASK = TaskSpec(...)` is a task (`config.task` names it).

A task from outside clipjax registers its spec with `register(spec)` before the config is validated, e.g. at
the top of its config file, which `python -m clipjax.main --config=...` executes first.
"""

from __future__ import annotations

import importlib
import pkgutil

from clipjax.errors import ConfigError
from clipjax.tasks.spec import TaskSpec

_REGISTERED: dict[str, TaskSpec] = {}
_COLLECTED = False


def _collect_built_in() -> None:
    """Imports every module of this package once and registers the spec it declares."""
    global _COLLECTED
    if _COLLECTED:
        return
    _COLLECTED = True
    for module in pkgutil.iter_modules(__path__):
        spec = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK", None)
        if isinstance(spec, TaskSpec):
            _add(spec)


def register(spec: TaskSpec) -> TaskSpec:
    """Makes `spec` selectable as `config.task=spec.name`. Registering it again is a no-op, also when its module
    was executed again (a config file is, each time it is loaded): a spec whose `run` is the same function
    (module and name) replaces the earlier one.

    Raises:
      ConfigError: another task of the same name is registered (clipjax's own included).
    """
    _collect_built_in()
    _add(spec)
    return spec


def _add(spec: TaskSpec) -> None:
    known = _REGISTERED.get(spec.name)
    if known is not None and _origin(known) != _origin(spec):
        raise ConfigError(
            f"a task named {spec.name!r} is registered already (by {_origin(known)}); give the task in "
            f"{_origin(spec)} another name"
        )
    _REGISTERED[spec.name] = spec


def _origin(spec: TaskSpec) -> str:
    return f"{spec.run.__module__}.{spec.run.__qualname__}"


def registered() -> dict[str, TaskSpec]:
    """Every task by name: clipjax's own and the registered ones."""
    _collect_built_in()
    return dict(_REGISTERED)


def get_task(name: str) -> TaskSpec:
    """The spec of task `name`.

    Raises:
      ConfigError: no such task (the line lists the known ones).
    """
    tasks = registered()
    if name not in tasks:
        raise ConfigError(f"config.task={name!r} is not one of {', '.join(repr(t) for t in tasks)}")
    return tasks[name]


def data_kinds() -> tuple[str, ...]:
    """Every `config.data.kind` some task reads, in the order the tasks declare them."""
    return tuple(dict.fromkeys(kind for spec in registered().values() for kind in spec.data_kinds))
