"""The daemon's wire format: one JSON object per line each way. Both ends build and read their
messages here, nowhere else (`cmc.client`, `cmc.daemon`).

Requests: `PING`, `SHUTDOWN`, and a completion (`CompleteRequest`).
Replies: ``{"ok": true, ...}`` (`ok`) or ``{"ok": false, "error": "one line"}`` (`error`), always
with the daemon's ``version`` (`encode_reply`); a completion's result is
`cmc.complete.Completion.to_json` (`complete_reply`, read back by `completion_of`). The client
resolves every setting (`cmc.settings`), so the daemon never reads configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cmc import __version__
from cmc.decoding import DecodeSettings
from cmc.settings import DEFAULT_WAIT_S, Settings

MAX_LINE_BYTES = 4 << 20  # a request line longer than this is refused, not read into memory
MAX_TYPED_CHARS = 8_000  # typed text beyond this is not a commit message
MAX_WAIT_S = 600.0  # the longest a client may ask the daemon to keep its request

PING = {"op": "ping"}
SHUTDOWN = {"op": "shutdown"}


def ok(**fields: Any) -> dict:
    return {"ok": True, **fields}


def error(text: str) -> dict:
    return {"ok": False, "error": text}


def encode(message: dict) -> bytes:
    """One message on the wire: a JSON object and a newline."""
    return (json.dumps(message) + "\n").encode()


def encode_reply(reply: dict) -> bytes:
    """A daemon's reply, stamped with its version (a client of another version ignores it)."""
    return encode({**reply, "version": __version__})


def decode_reply(data: bytes) -> dict | None:
    """A reply as received; None when it is not a JSON object."""
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


def ping_reply(pid: int, prefetched: int) -> dict:
    return ok(pid=pid, prefetched=prefetched)


def complete_reply(result: Any, reused_tokens: int) -> dict:
    """``result``: a `cmc.complete.Completion`; ``reused_tokens``: prompt tokens not run again."""
    return ok(result=result.to_json(), reused_tokens=reused_tokens)


def completion_of(reply: dict | None, served_by: str = "daemon") -> Any:
    """The `cmc.complete.Completion` in a reply from a daemon of this version, else None."""
    if not reply or not reply.get("ok") or reply.get("version") != __version__:
        return None
    from cmc.complete import Completion

    try:
        return Completion.from_json(reply.get("result"), served_by=served_by)
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True)
class CompleteRequest:
    repo: str  # absolute path of the repository (work tree or git dir)
    typed: str
    settings: Settings
    decode: DecodeSettings
    wait_s: float = DEFAULT_WAIT_S  # how long the client waits: the daemon drops the work after

    def to_json(self) -> dict:
        return {
            "op": "complete",
            "version": __version__,
            "repo": self.repo,
            "typed": self.typed,
            "settings": self.settings.to_json(),
            "decode": self.decode.to_json(),
            "wait_s": self.wait_s,
        }

    @classmethod
    def from_json(cls, data: Any) -> CompleteRequest:
        """Parse and validate a request (ValueError with a one-line reason)."""
        if not isinstance(data, dict):
            raise ValueError("a request must be a JSON object")
        if data.get("version") != __version__:
            raise ValueError(f"version mismatch (daemon {__version__})")
        repo, typed = data.get("repo"), data.get("typed", "")
        if not isinstance(repo, str) or not repo:
            raise ValueError("repo must be a path")
        if not isinstance(typed, str):
            raise ValueError("typed must be a string")
        if len(typed) > MAX_TYPED_CHARS:
            raise ValueError(f"typed text over {MAX_TYPED_CHARS} characters")
        wait_s = data.get("wait_s", DEFAULT_WAIT_S)
        if (
            isinstance(wait_s, bool)
            or not isinstance(wait_s, (int, float))
            or not 0 < wait_s <= MAX_WAIT_S
        ):
            raise ValueError(f"wait_s must be a number of seconds in (0, {MAX_WAIT_S:g}]")
        return cls(
            repo,
            typed,
            Settings.from_json(data.get("settings")),
            DecodeSettings.from_json(data.get("decode", {})),
            float(wait_s),
        )
