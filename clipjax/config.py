"""Config files, command-line overrides and validation, big_vision style.

A config file is a Python file defining `get_config(arg: str | None) -> ConfigDict`. The file is named as
`path/to/file.py[:ARG]`; ARG is a comma-separated list of `key=value` or bare `key` (meaning True) that
`parse_arg` turns into a ConfigDict of the file's arguments. The file's config is merged onto
`clipjax.defaults.base_config()`, so a misspelt key is caught, then `--config.a.b=value` overrides apply.

Every problem raises `ConfigError` with a single line naming the key and the fix.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ml_collections import ConfigDict

from clipjax.defaults import base_config
from clipjax.errors import ConfigError

__all__ = [
    "ConfigError", "apply_override", "choice", "load_config", "load_file_function", "merge_onto_defaults", "parse_arg",
]  # fmt: skip


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
    """Parses a config file's argument, e.g. "smoke" or "res=64,steps=100".

    Args:
      arg: the text after `:` in `--config=file.py:ARG`, or None.
      **defaults: every argument the file accepts with its default; values are cast to the default's type.

    Returns:
      ConfigDict of all arguments.
    """
    args = ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"unknown config argument {key!r}; this file accepts {', '.join(sorted(defaults)) or 'none'}"
            )
        args[key] = _cast(f"argument {key}", defaults[key], value.strip()) if sep else True
    return args


def load_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ConfigDict:
    """Loads `file.py[:ARG]`, merges it onto the defaults and applies `(dotted.key, value)` overrides.

    Args:
      spec: config file path with an optional `:ARG` suffix.
      overrides: pairs like ("batch_size", "65536") or ("model.name", "vit_l14"), without "config.".

    Returns:
      The full config (every key of `base_config()`).
    """
    get_config, arg = load_file_function(spec, "--config", "get_config", "configs/demo.py")
    config = merge_onto_defaults(get_config(arg))
    for key, value in overrides:
        apply_override(config, key, value)
    return config


def load_file_function(spec: str, flag: str, function: str, example: str) -> tuple[Any, str | None]:
    """Executes the Python file of `spec` ("path.py[:ARG]") and returns (its `function`, ARG or None).

    Raises:
      ConfigError: no such file, or the file defines no `function` (the line names `flag` and `example`).
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"{flag}: no such file {path!r}; pass a file such as {example}")
    module_spec = importlib.util.spec_from_file_location(f"_clipjax_user_{function}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, function):
        raise ConfigError(f"{flag}: {path} defines no {function}(arg); see {example} for the form")
    return getattr(module, function), arg or None


def merge_onto_defaults(user: ConfigDict) -> ConfigDict:
    """Returns `base_config()` updated with `user`; a key the defaults do not know raises ConfigError."""
    config = base_config()
    _merge(config, user, "config")
    return config


def _merge(into: ConfigDict, user: ConfigDict | dict, prefix: str) -> None:
    for key, value in user.items():
        name = f"{prefix}.{key}"
        if key not in into:
            raise ConfigError(f"unknown config key {name!r}{_suggest(key, into.keys(), prefix)}")
        if isinstance(into[key], ConfigDict):
            if not isinstance(value, (ConfigDict, dict)):
                raise ConfigError(f"{name} is a group of keys; set its fields, e.g. {name}.{next(iter(into[key]))}")
            _merge(into[key], value, name)
        else:
            _assign(into, key, value, name)


def apply_override(config: ConfigDict, dotted_key: str, raw_value: str) -> None:
    """Sets `config.<dotted_key>` from its command-line text, cast to the type the key already holds."""
    *parents, leaf = dotted_key.split(".")
    node, name = config, "config"
    for part in parents:
        if part not in node or not isinstance(node[part], ConfigDict):
            raise ConfigError(f"unknown config key '{name}.{part}'{_suggest(part, node.keys(), name)}")
        node, name = node[part], f"{name}.{part}"
    if leaf not in node:
        raise ConfigError(f"unknown config key '{name}.{leaf}'{_suggest(leaf, node.keys(), name)}")
    if isinstance(node[leaf], ConfigDict):
        raise ConfigError(f"{name}.{leaf} is a group of keys; override its fields, e.g. --{name}.{leaf}.KEY=VALUE")
    _assign(node, leaf, _cast(f"{name}.{leaf}", node[leaf], raw_value), f"{name}.{leaf}")


def _assign(node: ConfigDict, key: str, value: Any, name: str) -> None:
    try:
        node[key] = value
    except TypeError:
        raise ConfigError(
            f"{name} expects a {type(node[key]).__name__}, got {value!r} ({type(value).__name__})"
        ) from None


def _cast(name: str, current: Any, text: str) -> Any:
    """Turns command-line text into the type of the value it replaces."""
    try:
        if isinstance(current, bool):
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (list, tuple)):
            value = ast.literal_eval(text)
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return type(current)(value)
    except (ValueError, SyntaxError):
        raise ConfigError(f"{name} expects a {type(current).__name__}, got {text!r}") from None
    # The default is None: take a Python literal if it parses (numbers, None, tuples), else the text.
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _suggest(key: str, known: Iterable[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f"; did you mean '{prefix}.{close[0]}'?"
    return f"; known keys under {prefix}: {', '.join(sorted(known))}"


def choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raises ConfigError unless `value` is one of `allowed`."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(repr(a) for a in allowed)}")
