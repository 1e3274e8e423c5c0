"""Name lookups with a "did you mean" hint, shared by every registry (tasks, corpora, recipes,
merge methods, selection rules) and every config loader (unknown keys)."""
from __future__ import annotations

import difflib
from typing import Iterable, Mapping, TypeVar

V = TypeVar("V")


class UnknownNameError(KeyError, ValueError):
    """A name the user gave (task, corpus, recipe, method, field, ...) is not known; the message says
    which are. A KeyError for ``registry[name]`` callers, a ValueError as the bad value it is; the CLI
    prints it as one line, where any other KeyError is a bug and shows its traceback."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, known: Iterable[str], n: int = 3, known_label: str = "known") -> str:
    """``unknown <kind> 'name'; did you mean a, b?`` -- or the full list when nothing is close."""
    known = [str(k) for k in known]
    close = difflib.get_close_matches(str(name), known, n=n)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; {known_label}: {', '.join(known)}"
    return f"unknown {kind} {name!r}{hint}"


def by_name(items: Iterable[V], kind: str) -> dict[str, V]:
    """``{item.name: item}`` for a registry; a name given twice is an error: ``duplicate <kind> 'x'``."""
    out: dict[str, V] = {}
    for item in items:
        name = getattr(item, "name")
        if name in out:
            raise ValueError(f"duplicate {kind} {name!r}")
        out[name] = item
    return out


def lookup(registry: Mapping[str, V], name: str, kind: str, known_label: str = "known") -> V:
    """``registry[name]``, or an :class:`UnknownNameError` whose message names the closest entries."""
    if name in registry:
        return registry[name]
    raise UnknownNameError(unknown_name(kind, name, registry, known_label=known_label))


def check_known_keys(keys: Iterable[str], known: Iterable[str], where: str, what: str = "config key") -> None:
    """Unknown config keys are errors: ``<where>: unknown <what> 'k'; did you mean 'key'?``."""
    known = list(known)
    for k in keys:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise ValueError(f"{where}: unknown {what} {k!r}{hint}")


def read_yaml_mapping(path) -> dict:
    """A YAML config file's top-level mapping; missing file, bad YAML or a non-mapping name the file."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level")
    return data
