"""Errors that end a run with one line for the user, and the exit status each gives."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user must fix; its message is one line naming what is wrong and what to do."""

    exit_status = 1


class ConfigError(UserError, ValueError):
    """A bad config key or value (found before anything compiles)."""

    exit_status = 2


class Preempted(Exception):
    """The run was asked to stop (SIGTERM / SIGINT) and saved a checkpoint; re-running resumes it."""

    # EX_TEMPFAIL: not finished, try again. Schedulers that requeue on failure will restart it.
    exit_status = 75
