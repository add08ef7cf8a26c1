"""The web console served by ``stageline serve`` at ``/console`` (see docs/console.md)."""
