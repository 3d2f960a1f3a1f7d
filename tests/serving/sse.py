"""Reading a server-sent-event response the way OpenAI clients do."""

from __future__ import annotations

import json


def sse_events(lines) -> list:
    """The JSON objects of `data: {...}` lines, then the string "[DONE]"; any other non-empty
    line is a format error."""
    events = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
