"""The one exception type the API layer turns into an AWS-shaped error response."""

from __future__ import annotations

__all__ = ["AwsError"]


class AwsError(Exception):
    """An error with an AWS error name, sent as ``{"__type": type_name, "message": message}``.

    ``status`` is the HTTP status; AWS uses 400 for client errors and 409 for
    ``ConflictException`` (the default for that name here).
    """

    def __init__(self, type_name: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        if status is None:
            status = 409 if type_name == "ConflictException" else 400
        self.status = status
