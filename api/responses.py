"""The facade's JSON response class."""

from __future__ import annotations

import orjson
from fastapi.responses import JSONResponse


class ORJSONResponse(JSONResponse):
    """JSON through orjson: vectors go from numpy to bytes once, without a list of Python floats."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
