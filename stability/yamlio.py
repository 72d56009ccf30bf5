"""The one YAML dialect of the product: the YAML 1.2 core schema, for every file it reads.

PyYAML implements YAML 1.1, where `1e-3` is a string (no dot), `yes`/`on` are booleans,
`010` is octal 8, `1:20` is 80 and `2024-01-01` a date. Users write YAML 1.2 (and JSON):
`1e-3` is a number, `yes` a string. Every YAML read in the product (run configs, workflow
configs, a run's config.yaml, `--set` values) goes through `Loader`/`FastLoader` or
`scalar`, so a value means the same thing everywhere; `Dumper` quotes any string that
either dialect would read as something else, so what it writes reads back unchanged
with this loader and with a plain `yaml.safe_load` alike.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import yaml

_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")


def _to_int(text: str) -> int:
    if text[:2] in ("0o", "0x"):
        return int(text, 0)
    return int(text, 10)  # "010" is ten (YAML 1.1 read it as octal 8)


def _to_float(text: str) -> float:
    low = text.lower()
    if low.lstrip("+-") == ".inf":
        return -math.inf if text.startswith("-") else math.inf
    if low == ".nan":
        return math.nan
    return float(text)


# (tag, pattern, first characters, constructor): the core schema, in resolution order.
_CORE: list[tuple[str, re.Pattern, str, Callable[[str], Any]]] = [
    ("tag:yaml.org,2002:null", _NULL, "~nN", lambda t: None),
    ("tag:yaml.org,2002:bool", _BOOL, "tTfF", lambda t: t.lower() == "true"),
    ("tag:yaml.org,2002:int", _INT, "-+0123456789", _to_int),
    ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789.", _to_float),
]


def scalar(text: str) -> Any:
    """A plain (unquoted) YAML 1.2 scalar: `1e-3` -> 0.001, `true` -> True, `0x10` -> 16,
    `null` -> None; anything else is the string itself, unchanged."""
    for _, pattern, _, construct in _CORE:
        if pattern.match(text):
            return construct(text)
    return text


def _core_resolvers() -> dict:
    resolvers: dict = {}
    for tag, pattern, first, _ in _CORE:
        for ch in first:
            resolvers.setdefault(ch, []).append((tag, pattern))
    resolvers.setdefault("", []).append(("tag:yaml.org,2002:null", _NULL))  # an empty value
    resolvers.setdefault("<", []).append(("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$")))
    return resolvers


def _construct(kind: Callable[[str], Any]):
    return lambda loader, node: kind(loader.construct_scalar(node))


def _core(cls: type) -> type:
    cls.yaml_implicit_resolvers = _core_resolvers()
    cls.add_constructor("tag:yaml.org,2002:int", _construct(_to_int))
    cls.add_constructor("tag:yaml.org,2002:float", _construct(_to_float))
    cls.add_constructor("tag:yaml.org,2002:bool", _construct(lambda t: t.lower() == "true"))
    return cls


@_core
class Loader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema's implicit types (no timestamps either)."""


@_core
class FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """The same dialect on libyaml's parser (for reading many run configs)."""


class Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings YAML 1.2 reads as another type (`'1e-3'`)."""


for _tag, _pattern, _first, _ in _CORE:
    Dumper.add_implicit_resolver(_tag, _pattern, list(_first))


def load(text: str) -> Any:
    """Parse YAML text; raises yaml.YAMLError (and, for some bad explicit tags, ValueError)."""
    return yaml.load(text, Loader=Loader)


def dump(obj: Any, **kw) -> str:
    return yaml.dump(obj, Dumper=Dumper, **kw)
