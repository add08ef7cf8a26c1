"""Action runners: one module per action kind."""

from workers.runners.commands import CommandsResult, run_commands

__all__ = ["CommandsResult", "run_commands"]
