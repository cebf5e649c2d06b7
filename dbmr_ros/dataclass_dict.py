"""Frozen dataclass configs <-> plain dicts (JSON / YAML), rejecting unknown keys by name."""
import dataclasses


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls, values: dict, what: str):
    """cls(**values), with a clear error naming unknown options."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f'unknown {what} options: {sorted(unknown)}')
    return cls(**values)
