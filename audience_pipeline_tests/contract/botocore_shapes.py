"""Hold AWS JSON-protocol exchanges to botocore's service models, Amazon's own definition of AWS APIs.

botocore checks what a client sends before it sends it, but it reads answers leniently: a missing
required member or an invented one would pass unnoticed. `shape_problems` checks a decoded JSON
body against a model shape, closed like the Amazon Ads contract checks.
"""

import base64
import binascii
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape

_SCALARS = {
    "string": str,
    "boolean": bool,
    "integer": int,
    "long": int,
    "float": (int, float),
    "double": (int, float),
    "timestamp": (int, float, str),
}


def shape_problems(shape: Shape, value: Any, where: str = "body") -> list[str]:
    """Everything in `value` (a decoded JSON body) that the botocore shape does not allow."""
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        found = [
            f"{where}.{name}: required member missing" for name in shape.required_members if name not in value
        ]
        for name, member in value.items():
            if name not in shape.members:
                found.append(f"{where}.{name}: not a member of {shape.name}")
            else:
                found += shape_problems(shape.members[name], member, f"{where}.{name}")
        return found
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [
            p for i, item in enumerate(value) for p in shape_problems(shape.member, item, f"{where}[{i}]")
        ]
    if isinstance(shape, MapShape):
        if not isinstance(value, dict):
            return [f"{where}: expected a map"]
        return [p for key, item in value.items() for p in shape_problems(shape.value, item, f"{where}.{key}")]
    if shape.type_name == "blob":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError):
            return [f"{where}: expected base64"]
        return []
    expected = _SCALARS.get(shape.type_name)
    if expected is not None and (
        not isinstance(value, expected) or isinstance(value, bool) != (expected is bool)
    ):
        return [f"{where}: expected {shape.type_name}"]
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        return [f"{where}: {value!r} is not one of {', '.join(enum)}"]
    return []
