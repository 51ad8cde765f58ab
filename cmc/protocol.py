"""The daemon's wire format: one JSON object per line each way.

Requests: ``{"op": "ping"}``, ``{"op": "shutdown"}``, and a completion (`CompleteRequest`).
Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``, always with the daemon's
``version``; a completion's result is `cmc.complete.Completion.to_json`. The client resolves every
setting (`cmc.settings`), so the daemon never reads configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmc import __version__
from cmc.decoding import DecodeSettings
from cmc.settings import Settings

MAX_LINE_BYTES = 4 << 20  # a request line longer than this is refused, not read into memory
MAX_TYPED_CHARS = 8_000  # typed text beyond this is not a commit message


@dataclass(frozen=True)
class CompleteRequest:
    repo: str  # absolute path of the repository (work tree or git dir)
    typed: str
    settings: Settings
    decode: DecodeSettings
    wait_s: float = 30.0  # how long the client waits: the daemon drops the work after that

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
        wait_s = data.get("wait_s", 30.0)
        if (
            isinstance(wait_s, bool)
            or not isinstance(wait_s, (int, float))
            or not 0 < wait_s <= 600
        ):
            raise ValueError("wait_s must be a number of seconds in (0, 600]")
        return cls(
            repo,
            typed,
            Settings.from_json(data.get("settings")),
            DecodeSettings.from_json(data.get("decode", {})),
            float(wait_s),
        )
