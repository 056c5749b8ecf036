"""User-facing errors: bad config, bad data, bad arguments. The CLI maps them to exit code 2."""

from __future__ import annotations


class UserInputError(Exception):
    """One or more problems with what the user gave us, each a self-contained line.

    Each line names where the problem is (a config field or a file:line), the rule that is
    broken with the offending value, and what to do about it.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class SweepStopped(Exception):
    """The sweep ended early for a reason the user must see; the CLI exits with ``exit_code``."""

    exit_code = 1


class SweepFailed(SweepStopped):
    """Trials keep failing the same way (fail fast): running on would burn the cluster."""


class SweepInterrupted(SweepStopped):
    """Ctrl-C or SIGTERM: the sweep stopped cleanly and ``vlsweep resume`` continues it."""

    exit_code = 130
