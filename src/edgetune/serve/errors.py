"""OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`, as one exception type.

Route code raises `ApiError`; the app turns it into a JSON response with its status. The
`param` field names the request field at fault, as OpenAI does, so a client can tell which
of its arguments was refused.
"""

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An HTTP error answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        """The JSON body OpenAI's clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The error as a response (401 also says how to authenticate)."""
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """400: a malformed body or a parameter out of range; `param` names it."""
    return ApiError(400, message, param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """404: an unknown model, file, job or adapter."""
    return ApiError(404, message, param, code)


def conflict(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """409: the thing exists but cannot change now (an adapter in use, a finished job)."""
    return ApiError(409, message, param, code)


def unauthorized() -> ApiError:
    """401: a missing or wrong `Authorization: Bearer` key."""
    return ApiError(401, "missing or incorrect API key (send Authorization: Bearer KEY)", None, "invalid_api_key")


def too_large(limit: int) -> ApiError:
    """413: a request body over the server's limit."""
    return ApiError(413, f"the request body is larger than this server's limit of {limit} bytes", None, "too_large")


def queue_full(limit: int) -> ApiError:
    """429, answered at once: every row is busy and the queue holds `limit` requests."""
    return ApiError(
        429, f"the server is at capacity ({limit} requests queued); retry later", None, "queue_full", "rate_limit_error"
    )


def shutting_down() -> ApiError:
    """503: the server is draining its requests before it exits."""
    return ApiError(503, "the server is shutting down", None, "shutting_down", "server_error")
