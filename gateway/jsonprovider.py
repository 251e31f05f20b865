"""Flask's JSON through orjson: the API's responses are large lists, and encoding them dominated.

Keys keep their insertion order and output is compact, as with the default provider
configured in `create_app`.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider


class OrjsonProvider(JSONProvider):
    """`jsonify` and `request.get_json` backed by orjson."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """Serialize `obj` to a JSON string."""
        return orjson.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse a JSON document."""
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """A JSON response, serialized straight to bytes."""
        obj = self._prepare_response_obj(args, kwargs)
        return Response(orjson.dumps(obj), mimetype="application/json")
