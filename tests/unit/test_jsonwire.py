"""The client's JSON (json's C accelerator, called directly) against the json module."""

from __future__ import annotations

import json
import random

import pytest

from supervisor import jsonwire


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-2**70, 2**70)
    if kind == 2:
        return rng.uniform(-1e300, 1e300) if rng.random() < 0.5 else rng.random()
    if kind in (3, 4):
        return "".join(chr(rng.choice([rng.randrange(0x20), rng.randrange(0x20, 0x7f),
                                       rng.randrange(0x80, 0x3000), 0x1F600, 0x22, 0x5C]))
                       for _ in range(rng.randrange(12)))
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {str(_value(rng, 4)): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_same_text_and_values_as_the_json_module() -> None:
    rng = random.Random(20261129)
    for _ in range(2000):
        value = _value(rng)
        text = jsonwire.dumps(value)
        assert text == json.dumps(value, separators=(",", ":"))
        assert jsonwire.loads(text) == value
        pretty = json.dumps(value, indent=1, ensure_ascii=False)
        assert jsonwire.loads(f" {pretty}\n") == json.loads(pretty)


def test_tuples_encode_as_lists() -> None:
    assert jsonwire.dumps({"a": (1, "x")}) == '{"a":[1,"x"]}'


@pytest.mark.parametrize("text", ['{"a":', "", "[1,]", '{"a":1} x', "NaN", "'x'", "[1] [2]"])
def test_invalid_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        jsonwire.loads(text)


def test_what_json_cannot_encode_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonwire.dumps({"fd": object()})
