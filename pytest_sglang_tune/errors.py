"""One exception tree for the whole tool.

    TuneError                       anything this tool raises on purpose
    ├── SuiteError                  a suite file or a CLI option is wrong (file, field, value, what is allowed)
    │   └── FlagError               an SGLang flag is unknown, ambiguous, deprecated or has a bad value
    ├── GrammarError                an SLO / objective / metric expression is malformed
    └── BackendError                deploying or talking to a server failed (carries config_id and a log tail)
        ├── DeployError             the server could not be started (launcher missing, port taken, image missing)
        │   └── InfeasibleConfig    the config cannot run by its own nature (out of memory, invalid combination)
        ├── NotReady                the server did not become ready (timeout, or it died while starting)
        ├── ServerCrashed           the server died after it became ready (e.g. during load)
        ├── FlagsNotApplied         /server_info does not reflect the config's flags
        ├── CapacityError           not enough GPUs for the config
        └── BackendUnavailable      the backend cannot be asked at all (API unreachable, 401/403, not installed):
                                    an error of the whole session, never a skip

Warnings subclass ``pytest.PytestWarning`` (see ``TuneWarning``).
"""

from __future__ import annotations

import pytest


class TuneError(Exception):
    """Base class of every error this tool raises on purpose."""


class SuiteError(TuneError):
    """A suite (YAML or Python) or an option is invalid.

    The message always names where (``file:line`` when known), the field, the bad value and what is allowed.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        self.path = path
        self.line = line
        self.field = field
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        if field:
            where += f"{field}: "
        super().__init__(where + message)
        self.bare_message = message


class FlagError(SuiteError):
    """An SGLang server flag is not valid for the SGLang version that will run."""


class GrammarError(TuneError):
    """An SLO, objective or metric expression does not follow the grammar."""


class BackendError(TuneError):
    """Something went wrong deploying or talking to a server."""

    def __init__(self, message: str, *, config_id: str | None = None, log_tail: str = ""):
        self.config_id = config_id
        self.log_tail = log_tail
        text = message
        if log_tail:
            text += "\n--- server log (last lines) ---\n" + log_tail.rstrip()
        super().__init__(text)
        self.bare_message = message


class DeployError(BackendError):
    """The server could not be started."""


class InfeasibleConfig(DeployError):
    """The configuration cannot run by its own nature (out of memory, invalid flag combination)."""


class NotReady(BackendError):
    """The server did not become ready in time, or died while starting."""


class ServerCrashed(BackendError):
    """The server died after it became ready."""


class FlagsNotApplied(BackendError):
    """The running server does not report the flags the configuration asked for."""


class CapacityError(BackendError):
    """Not enough GPUs for the configuration."""


class BackendUnavailable(BackendError):
    """The backend could not be asked (unreachable, credentials refused, not installed).

    Raised by ``Backend.capacity()``; the plugin ends the session with it (one ``ERROR: <message>`` line, as a
    ``pytest.UsageError``) instead of skipping every config into a green run."""


class TuneWarning(pytest.PytestWarning):
    """Base class of the warnings of pytest-sglang-tune."""
