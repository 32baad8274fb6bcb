"""JSON for the CLI's side of the control socket, straight from the json module's C
accelerator.

``import json`` costs ~7 ms of a cold CLI start here: its pure-Python layer pulls in
``re`` and ``enum``. The C scanner and encoder under it are what ``json.loads`` and
``json.dumps`` run for our messages anyway (no indent, ASCII output, no hooks), so
the client calls them directly. Where ``_json`` is missing (not CPython) the json
module does the work.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _not_serializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _no_constant(name: str) -> object:
    raise ValueError(f"JSON has no {name}")


class _Context:
    """What ``_json.make_scanner`` reads off a JSONDecoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constant)
    memo: dict[str, str] = {}


try:
    import _json
except ImportError:  # pragma: no cover - every CPython has it
    import json

    def dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    def loads(text: str) -> Any:
        return json.loads(text)
else:
    _encode = _json.make_encoder(None, _not_serializable, _json.encode_basestring_ascii,
                                 None, ":", ",", False, False, True)
    _scan = _json.make_scanner(_Context())

    def dumps(value: Any) -> str:
        """``json.dumps(value, separators=(",", ":"))``."""
        return "".join(_encode(value, 0))

    def loads(text: str) -> Any:
        """``json.loads(text)`` for one JSON value (surrounding whitespace allowed);
        ValueError when ``text`` is not one."""
        start = len(text) - len(text.lstrip())
        try:
            value, end = _scan(text, start)
        except StopIteration as stop:
            raise ValueError(f"invalid JSON at character {stop.value}") from None
        if text[end:].strip():
            raise ValueError(f"extra data after JSON at character {end}")
        return value
