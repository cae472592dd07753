"""The fixed topic ids, in the order of the FAQ (shared/topics.md), and "other"."""

from __future__ import annotations

# The fifteen FAQ questions of the seed FAQ, one id each; the ids are a contract shared by
# the classifier, the reply templates, the routing table, the samples and the journal.
TOPICS: tuple[str, ...] = (
    "glossary",
    "funding-eligibility",
    "registration-timeline",
    "induction-not-recorded",
    "unfunded-registration",
    "myect-login",
    "missing-emails",
    "change-details",
    "tutor-onboarding",
    "mentor-matching",
    "missing-on-steplab",
    "transfers",
    "myect-vs-steplab",
    "induction-length",
    "events",
)

# A real person's message that none of the fifteen answers: a human takes it.
OTHER = "other"

# Every label a classifier can give: the topics, then "other".
LABELS: tuple[str, ...] = (*TOPICS, OTHER)

__all__ = ["LABELS", "OTHER", "TOPICS"]
