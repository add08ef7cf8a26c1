"""The typed refusal of a command: an AWS error name plus a human-readable message."""

from __future__ import annotations


class DomainError(Exception):
    """A command was refused. ``type_name`` is the CodePipeline error name (``__type``)."""

    def __init__(self, type_name: str, message: str, status: int = 400) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.status = status
