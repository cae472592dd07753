"""triage: email triage and auto-reply worker for the ECT training programme's support mailbox."""

from triage.errors import (
    ConfigError,
    MailboxError,
    ModelError,
    SampleError,
    TemplateError,
    TriageError,
)
from triage.topics import LABELS, OTHER, TOPICS

__version__ = "0.1.0"

__all__ = [
    "LABELS",
    "OTHER",
    "TOPICS",
    "ConfigError",
    "MailboxError",
    "ModelError",
    "SampleError",
    "TemplateError",
    "TriageError",
    "__version__",
]
