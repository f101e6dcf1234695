"""The one exception tree of oi. Every error meant for a person derives from ``OiError``.

::

    OiError                      what failed, where, and the fix, in one message
    ├── ConfigError              bad settings, flags, config file or usage          (exit 2)
    │   └── UnknownLanguageError a block's language is not one oi runs
    ├── PolicyError              the admin policy forbids what was asked            (exit 2)
    ├── SandboxError             the container engine failed us                     (exit 1)
    │   ├── EngineUnavailableError  no Docker engine answers at the socket
    │   ├── ImageMissingError       a sandbox image is not built
    │   ├── ImageBuildError         building an image failed
    │   └── RuntimeMissingError     an isolation runtime (gVisor) is asked for but not installed
    ├── ModelError               the model endpoint failed us                       (exit 1)
    │   ├── ModelUnavailableError   nothing answers at the API base URL
    │   │   └── ModelTimeoutError      no answer within a bound (names the setting) [llm]
    │   ├── ModelNotFoundError      the server does not serve that model
    │   ├── ContextOverflowError    the conversation does not fit the model's context
    │   ├── ToolsUnsupportedError   the server refuses tool calls (auto falls back) [llm]
    │   ├── ImagesUnsupportedError  the server refuses images (--vision goes on without) [llm]
    │   └── MalformedReplyError     a reply not in OpenAI's streaming format        [llm]
    ├── RecordWriteError         a session record could not be written whole        (exit 1)
    │                            (disk full, quota, I/O error); the record is left
    │                            ending at a whole line
    └── RequestError             ``oi serve`` refuses a request (``status``: 400-429)
        ├── NotFoundError           no such session or file *for this user*        (404)
        ├── ConflictError           not now: a turn runs, nothing waits, sha256 differs (409)
        ├── TooLargeError           an upload over the user's limit                 (413)
        └── LimitError              over the user's session limit                   (429)

``[llm]``: defined in ``orchestrator/llm/types.py``, beside the client that raises them.
Failed *user code* is never an exception: it is data in an ``ExecResult``.
Third-party errors (docker, openai) are converted at exactly one boundary each
(``sandbox/docker.py``, ``llm/client.py``) with ``raise Mapped(...) from exc``.
"""

from __future__ import annotations

from pathlib import Path


class OiError(Exception):
    """Root of every error oi raises for a person to read."""

    exit_code = 1


class ConfigError(OiError):
    """Settings, flags or a config file are wrong."""

    exit_code = 2


class UnknownLanguageError(ConfigError):
    """A block's language is not one oi can run."""


class PolicyError(OiError):
    """The admin policy forbids what was asked."""

    exit_code = 2


class SandboxError(OiError):
    """The container engine failed (not the user's code)."""


class EngineUnavailableError(SandboxError):
    """No Docker engine answers."""


class ImageMissingError(SandboxError):
    """A sandbox image is not present."""


class ImageBuildError(SandboxError):
    """Building a sandbox image failed."""


class RuntimeMissingError(SandboxError):
    """An isolation runtime was requested but is not installed: fail closed."""


class ModelError(OiError):
    """The model endpoint failed."""


class ModelUnavailableError(ModelError):
    """Nothing answers at the model API base URL."""


class ModelNotFoundError(ModelError):
    """The endpoint does not serve the requested model."""


class ContextOverflowError(ModelError):
    """The conversation does not fit the model's context window."""


class RecordWriteError(OiError):
    """A session record entry could not be written whole (no space, quota, I/O error).

    The file was cut back to the end of its last whole line, so what is on disk stays readable;
    ``path`` is the record and ``record_type`` the entry that is missing (None when the record
    could not even be started).
    """

    def __init__(self, message: str, *, path: Path, record_type: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.record_type = record_type


class RequestError(OiError):
    """A request ``oi serve`` refuses; ``status`` is the HTTP status it answers with."""

    status = 400


class NotFoundError(RequestError):
    """No such session or file for this user (another user's ids answer the same)."""

    status = 404


class ConflictError(RequestError):
    """The session is not in a state to do this (a turn runs, nothing awaits approval, the
    sha256 named is not the code waiting)."""

    status = 409


class TooLargeError(RequestError):
    """An upload over the user's size limit."""

    status = 413


class LimitError(RequestError):
    """Over one of the user's limits (open sessions)."""

    status = 429
