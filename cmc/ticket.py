"""The branch's ticket as the start of the message (``feature/ABC-123-x`` → ``ABC-123: ``).

Only when the author's own recent messages start with ticket ids, in the form they use
(``ABC-1: x``, ``[ABC-1] x``, ``ABC-1 x``); ``git config cmc.ticket false`` turns it off and
``cmc.ticketPattern`` changes what a ticket id looks like.
"""

from __future__ import annotations

import re
from typing import Any

RECENT = 10  # the author's messages looked at


def branch_ticket(branch: str | None, pattern: str) -> str | None:
    if not branch:
        return None
    found = re.search(pattern, branch, re.IGNORECASE)
    return found.group(0).upper() if found else None


def ticket_style(subjects: list[str], pattern: str) -> str | None:
    """The author's ticket prefix as a format (``"{}: "``), when most recent subjects have one."""
    form = re.compile(rf"^(\[?)(?:{pattern})(\]?)([:\s-]*)", re.IGNORECASE)
    styles = [m for m in (form.match(s) for s in subjects[:RECENT]) if m]
    if not subjects or len(styles) * 2 <= min(len(subjects), RECENT):
        return None
    open_, close, sep = styles[0].groups()
    return open_ + "{}" + close + (sep if sep.endswith(" ") else sep + " ")


def ticket_prefix(repo: Any, settings: Any) -> str | None:
    """What to put in front of an empty message on this branch, or None."""
    if not settings.ticket:
        return None
    ticket = branch_ticket(repo.branch(), settings.ticket_pattern)
    if ticket is None:
        return None
    style = ticket_style(
        repo.author_subjects(settings.author_name, settings.author_email), settings.ticket_pattern
    )
    return style.format(ticket) if style else None
