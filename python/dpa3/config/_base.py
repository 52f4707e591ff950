"""Helpers shared by every typed config: key checking, aliases and clear errors.

DeePMD-kit ``input.json`` files are dictionaries with string-encoded options
(``"silut:10.0"``, ``"auto:128"``).  They are parsed *once*, here at the edge, into
frozen dataclasses; nothing inside the package looks at raw dictionaries.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError


class Section:
    """A view on one ``dict`` section of a config that records which keys were read.

    Parameters
    ----------
    data
        The raw mapping (may be ``None`` for an absent optional section).
    path
        Dotted location used in error messages, e.g. ``"model.descriptor.repflow"``.
    aliases
        Map ``alias -> canonical name`` (DeePMD-kit accepts several spellings).
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None,
        path: str,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"'{path}' must be a JSON object, got {type(data).__name__}")
        self.path = path
        self._data: dict[str, Any] = {}
        aliases = dict(aliases or {})
        for key, value in data.items():
            canon = aliases.get(key, key)
            if canon in self._data:
                raise ConfigError(f"'{path}' gives '{canon}' twice (directly and as alias '{key}')")
            self._data[canon] = value
        self._known: set[str] = set(aliases.values())
        self._aliases = aliases

    def key(self, name: str) -> str:
        """Return the dotted path of ``name`` for messages."""
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        """Whether the key was given (marks it as known)."""
        self._known.add(name)
        return name in self._data

    def get(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        """Read a key (marks it as known); ``required`` raises a named error if absent."""
        self._known.add(name)
        if name not in self._data:
            if required:
                raise ConfigError(f"missing required key '{self.key(name)}'")
            return default
        return self._data[name]

    def get_float(self, name: str, default: float | None = None, *, required: bool = False):
        """Read a number as float (``None`` stays ``None``)."""
        v = self.get(name, default, required=required)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"'{self.key(name)}' must be a number, got {v!r}")
        return float(v)

    def get_int(self, name: str, default: int | None = None, *, required: bool = False):
        """Read an integer (``None`` stays ``None``)."""
        v = self.get(name, default, required=required)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise ConfigError(f"'{self.key(name)}' must be an integer, got {v!r}")
        return int(v)

    def get_bool(self, name: str, default: bool | None = None, *, required: bool = False):
        """Read a boolean."""
        v = self.get(name, default, required=required)
        if v is None:
            return None
        if not isinstance(v, bool):
            raise ConfigError(f"'{self.key(name)}' must be true or false, got {v!r}")
        return v

    def get_str(self, name: str, default: str | None = None, *, required: bool = False):
        """Read a string."""
        v = self.get(name, default, required=required)
        if v is None:
            return None
        if not isinstance(v, str):
            raise ConfigError(f"'{self.key(name)}' must be a string, got {v!r}")
        return v

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str:
        """Read a string restricted to ``choices`` (case-sensitive, as DeePMD-kit)."""
        v = self.get_str(name, default)
        choices = list(choices)
        if v not in choices:
            raise ConfigError(f"'{self.key(name)}' must be one of {choices}, got {v!r}")
        return v

    def reject_unless_default(self, name: str, default: Any, why: str = "not supported") -> None:
        """Accept a key only at its default value; otherwise raise a named error."""
        v = self.get(name, default)
        if v != default and not (v is None and default in ((), [], None)):
            raise ConfigError(
                f"'{self.key(name)}' = {v!r} is {why} by dpa3 (only {default!r} is accepted)"
            )

    def sub(self, name: str, aliases: Mapping[str, str] | None = None, *, required: bool = False):
        """Return the nested section ``name``."""
        data = self.get(name, None, required=required)
        return Section(data, self.key(name), aliases)

    def finish(self, ignore: Iterable[str] = ()) -> None:
        """Raise if a key was given that no parser read, suggesting the closest known key."""
        known = self._known | set(ignore)
        for key in self._data:
            if key in known or key.startswith("_"):
                continue  # DeePMD-kit allows "_comment"-style keys
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown key '{self.key(key)}'{extra}")


def parse_activation(value: str, where: str) -> tuple[str, float]:
    """Parse a DeePMD-kit activation string into ``(name, threshold)``.

    ``"silut:10.0"``/``"custom_silu:10"`` give ``("silut", 10.0)``; plain names give
    ``(name, 0.0)``.  Names are case-insensitive.  Raises :class:`ConfigError` otherwise.
    """
    if not isinstance(value, str):
        raise ConfigError(f"'{where}' must be a string, got {value!r}")
    v = value.strip().lower()
    if v.startswith(("silut", "custom_silu")):
        _, _, thr = v.partition(":")
        try:
            return "silut", float(thr) if thr else 3.0
        except ValueError:
            raise ConfigError(f"'{where}': bad threshold in {value!r}") from None
    aliases = {"none": "linear", "gelu_tf": "gelu"}
    v = aliases.get(v, v)
    known = ("tanh", "relu", "relu6", "softplus", "sigmoid", "gelu", "silu", "linear")
    if v not in known:
        raise ConfigError(
            f"'{where}': unknown activation {value!r}; known: {', '.join(known)}, silut:T"
        )
    return v, 0.0


def parse_precision(value: str, where: str) -> str:
    """Map DeePMD-kit precision names to ``"float32"``/``"float64"``."""
    table = {"default": "float64", "float64": "float64", "float32": "float32"}
    if value not in table:
        raise ConfigError(
            f"'{where}' must be one of {sorted(table)}, got {value!r} "
            "(float16/bfloat16 are not supported by dpa3)"
        )
    return table[value]
