"""Frozen dataclass configs <-> plain dicts (JSON / YAML), rejecting unknown keys by name."""
import dataclasses
from typing import Mapping


class RemovedOptionError(ValueError):
    """A saved config asks for an option this version no longer has."""


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict, what: str, removed: Mapping[str, object] = None):
    """cls(**values), with a clear error naming unknown options.

    `removed` maps options that earlier versions had to the value this version always uses: a
    saved config holding that value loads (the option is dropped), another value is refused
    with the option's name, since this version cannot do what it asked for."""
    values = dict(values)
    for name, kept in (removed or {}).items():
        if name in values and _as_saved(values.pop(name)) != _as_saved(kept):
            raise RemovedOptionError(f'{what} option {name} is no longer supported (only '
                                     f'{kept!r} is; see docs/design_notes.md)')
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f'unknown {what} options: {sorted(unknown)}')
    return cls(**values)


def _as_saved(value):
    """Lists and tuples compare alike (JSON and YAML give lists)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value
