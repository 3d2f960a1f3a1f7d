"""Request fields that ask for structured output -> one runtime `Constraint`.

Clients spell the same wish several ways, and a server that ignored any of them would return
free text to a client that will parse it as JSON; so each spelling is read, and a request that
gives two (even two that agree) is refused, naming both, rather than guessing which one wins:

- OpenAI's `response_format`: `{"type": "text"}` (nothing), `{"type": "json_object"}`,
  `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`;
- vLLM's `structured_outputs: {json, regex, choice, grammar, json_object}`;
- vLLM's older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`;
- SGLang's `sampling_params.regex` / `json_schema` (/generate, see sglang.py).

Whether a schema, regex or grammar is valid is the runtime's to say (llguidance compiles it
when the engine takes the request); its SamplingError becomes a 400 with that message.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmirc.runtime.sampling import SamplingError
from llmirc.runtime.structured import Constraint

# vLLM's StructuredOutputsParams keys that are constraints, with the runtime kind each means.
STRUCTURED_OUTPUT_KINDS = {"json": "json", "regex": "regex", "choice": "choice", "grammar": "grammar",
                           "json_object": "json_object"}
# vLLM's options that tune a constraint rather than give one (accepted, not applied).
STRUCTURED_OUTPUT_OPTIONS = {"disable_fallback", "disable_any_whitespace", "disable_additional_properties",
                             "whitespace_pattern", "backend"}
GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar"}


class ConstraintFieldError(ValueError):
    """A structured-output field that is malformed or conflicts with another (`param` names it)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def constraint_from_fields(fields: dict[str, Any]) -> tuple[Constraint, str] | None:
    """The one constraint the request's fields ask for and the field that gave it (for error
    messages), or None for free text. `fields`: the request's response_format,
    structured_outputs and guided_* values, by name (None: not given)."""
    found = list(_candidates(fields))
    if len(found) > 1:
        names = " and ".join(f"`{param}`" for _, _, param in found[:2])
        raise ConstraintFieldError(f"give at most one structured output constraint; this request gives {names}",
                                   found[1][2])
    if not found:
        return None
    kind, value, param = found[0]
    try:
        return Constraint(kind, value), param
    except SamplingError as e:
        raise ConstraintFieldError(f"{param}: {e}", param) from None


def _candidates(fields: dict[str, Any]) -> Iterable[tuple[str, Any, str]]:
    """(kind, value, field name) for every constraint the fields give."""
    fmt = fields.get("response_format")
    if fmt is not None:
        yield from _response_format(fmt)
    so = fields.get("structured_outputs")
    if so is not None:
        yield from _structured_outputs(so)
    for name, kind in GUIDED_FIELDS.items():
        value = fields.get(name)
        if value is not None:
            yield kind, value, name


def _response_format(fmt: Any) -> Iterable[tuple[str, Any, str]]:
    if not isinstance(fmt, dict):
        raise ConstraintFieldError("response_format must be an object such as {\"type\": \"json_object\"}",
                                   "response_format")
    kind = fmt.get("type", "text")
    if kind == "text":
        return
    if kind == "json_object":
        yield "json_object", None, "response_format"
        return
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise ConstraintFieldError("response_format of type json_schema needs a `json_schema` object "
                                       "({\"name\", \"schema\", \"strict\"})", "response_format.json_schema")
        schema = spec.get("schema", spec.get("json_schema"))
        if schema is None:
            raise ConstraintFieldError("response_format.json_schema needs a `schema` (a JSON schema object)",
                                       "response_format.json_schema.schema")
        yield "json", schema, "response_format.json_schema.schema"
        return
    raise ConstraintFieldError(f"response_format type must be text, json_object or json_schema, got {kind!r}",
                               "response_format.type")


def _structured_outputs(so: Any) -> Iterable[tuple[str, Any, str]]:
    if not isinstance(so, dict):
        raise ConstraintFieldError("structured_outputs must be an object such as {\"regex\": \"[0-9]+\"}",
                                   "structured_outputs")
    for key, value in so.items():
        if value is None or key in STRUCTURED_OUTPUT_OPTIONS:
            continue
        kind = STRUCTURED_OUTPUT_KINDS.get(key)
        if kind is None:
            raise ConstraintFieldError(f"structured_outputs.{key} is not supported by this server (it takes "
                                       f"{', '.join(STRUCTURED_OUTPUT_KINDS)})", f"structured_outputs.{key}")
        if kind == "json_object":
            if value is True:
                yield "json_object", None, "structured_outputs.json_object"
            elif value is not False:
                raise ConstraintFieldError("structured_outputs.json_object must be true or false",
                                           "structured_outputs.json_object")
            continue
        yield kind, value, f"structured_outputs.{key}"
