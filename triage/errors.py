"""Errors an operator can act on.

    TriageError          base: anything an operator can act on
      ConfigError        a setting is missing or invalid                  (exit status 2)
      MailboxError       connect, login, folder or command failed         (exit status 1)
      ModelError         model file missing, unreadable, or for other topics
      SampleError        a sample or training file that cannot be used
      TemplateError      no reply template for a topic, or one that does not render

Every message names the thing, where it is, and the next step.
"""

from __future__ import annotations


class TriageError(Exception):
    """Base class: a failure an operator can act on; ``triage`` prints it without a traceback."""

    exit_status = 1


class ConfigError(TriageError):
    """A setting is missing or invalid."""

    exit_status = 2


class MailboxError(TriageError):
    """Connecting, logging in, opening a folder or a mailbox command failed."""


class ModelError(TriageError):
    """The model file is missing, unreadable, or was trained for other topics or versions."""


class SampleError(TriageError):
    """A sample or training data file that cannot be used."""


class TemplateError(TriageError):
    """A reply template is missing for a topic, or does not render."""


__all__ = [
    "ConfigError",
    "MailboxError",
    "ModelError",
    "SampleError",
    "TemplateError",
    "TriageError",
]
