"""A JSON schema with every feature structured-output tests and benchmarks exercise: nested
object, array, enum, pattern, bounded integer and strings (bounded, so a sampled output always
ends inside a few hundred tokens)."""

from __future__ import annotations

SIX_FIELD_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "verse": {"type": "string", "pattern": "^[0-9]{1,3}:[0-9]{1,3}$"},
        "book": {"enum": ["Genesis", "Exodus", "Psalms"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "place": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                   "north": {"type": "boolean"}},
                  "required": ["city", "north"], "additionalProperties": False},
    },
    "required": ["name", "age", "verse", "book", "tags", "place"],
    "additionalProperties": False,
}
