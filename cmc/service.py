"""A warm completion service: models stay loaded, each repository's context and prompt KV are reused.

Used by the daemon (`cmc serve`) and the language server (`cmc lsp`). A repository's context (staged
diff + author history) is recomputed only when git's index or HEAD changes (a stat of a few files,
no git process); with it goes its `PromptCache`, so while the user types, only new tokens run.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cmc.complete import (
    Completion,
    Context,
    complete_context,
    context_from_repo,
    wants_file_history,
)
from cmc.decoding import Candidate, DecodeSettings
from cmc.protocol import CompleteRequest


@dataclass
class _RepoEntry:
    state: tuple
    context: Context
    cache: Any  # cmc.decoding.beam.PromptCache
    last: tuple[DecodeSettings, Completion] | None = None  # the previous request's answer


def follow_suggestion(previous: Completion, typed: str) -> Completion | None:
    """When the user typed more of what was suggested, the suggestion stands: no model run. The
    same request again (a herd of clients, an editor asking twice) gets the same answer."""
    if typed == previous.typed:
        return Completion(typed, list(previous.candidates), previous.model, 0.0)
    if not typed.startswith(previous.typed):
        return None
    kept = [
        c
        for c in previous.candidates
        if c.message.startswith(typed) and len(c.message) > len(typed)
    ]
    if not kept or not previous.candidates[0].message.startswith(typed):
        return None
    cands = [Candidate(c.message, c.message[len(typed) :], c.score, c.origin) for c in kept]
    return Completion(typed, cands, previous.model, 0.0)


class CompletionService:
    """Thread-safe: one computation at a time (the model is shared), any number of repositories.

    With ``prefetch()`` called now and then (the daemon does, twice a second), the last
    whole-message request of a repository is run again as soon as its index or HEAD changes, while
    no request waits: by the time `git commit` runs the hook, its suggestion is ready."""

    def __init__(self, max_repos: int = 8):
        self.lock = threading.Lock()
        self.repos: OrderedDict[tuple, _RepoEntry] = OrderedDict()
        self.max_repos = max_repos
        self.waiting = 0  # requests of clients queued or running (prefetch yields to them)
        self.prefetched = 0  # completions computed ahead of a request (for tests and benchmarks)
        self._count = threading.Lock()
        self._replay: OrderedDict[tuple, CompleteRequest] = OrderedDict()
        self.seen: dict[str, Any] = {}  # repositories served, with their latest settings

    def complete(self, request: CompleteRequest, cancelled: Any = None) -> tuple[Completion, int]:
        """Completion for a repository's staged change, and how many prompt tokens were reused
        (-1 when the previous suggestion stood and no model ran).

        Requests queue for the model; one still waiting after ``request.wait_s`` (its client gave
        up), or whose ``cancelled()`` says so, is dropped rather than computed for nobody."""
        from cmc.decoding.beam import Cancelled

        deadline = time.monotonic() + request.wait_s

        def abandoned() -> bool:
            return time.monotonic() > deadline or (cancelled is not None and cancelled())

        with self._count:
            self.waiting += 1
        try:
            if not self.lock.acquire(timeout=request.wait_s):
                raise Cancelled(f"busy for {request.wait_s:g}s; request dropped")
            try:
                return self._complete(request, abandoned)  # type: ignore[return-value]
            finally:
                self.lock.release()
        finally:
            with self._count:
                self.waiting -= 1

    def _entry(self, repo: Any, settings: Any, lm: Any, decider: Any) -> tuple[tuple, _RepoEntry]:
        from cmc import memory
        from cmc.decoding.beam import PromptCache

        key = (str(repo.git_dir), settings, lm.name)  # each model its own context and prompt cache
        self.seen[str(repo.cwd)] = settings
        # The memory's file too: a build finished in the background changes what is recalled.
        state = (repo.index_state(), memory.stamp(repo.common_dir) if settings.memory else None)
        entry = self.repos.get(key)
        if entry is None or entry.state != state:
            context = context_from_repo(repo, settings,
                                        file_history=wants_file_history(lm, decider))  # fmt: skip
            if entry is not None and context == entry.context:
                entry.state = state  # the index was rewritten, not changed: all stays valid
            else:
                entry = _RepoEntry(state, context, PromptCache())
                self.repos[key] = entry
        self.repos.move_to_end(key)
        while len(self.repos) > self.max_repos:
            self.repos.popitem(last=False)
        return key, entry

    def _complete(
        self, request: CompleteRequest, abandoned: Any, unless_empty: bool = False
    ) -> tuple[Completion, int] | None:
        """The work of `complete`, with the lock held; None when ``unless_empty`` and nothing
        is staged (a prefetch: no one will ask)."""
        from cmc.complete import load_models
        from cmc.decoding.beam import Cancelled
        from cmc.gitctx import repo_at

        settings, decode = request.settings, request.decode
        repo = repo_at(request.repo)
        lm, decider = load_models(settings, whole=not decode.stop_at_newline)
        key, entry = self._entry(repo, settings, lm, decider)
        if unless_empty and not entry.context.diff.strip():
            return None
        if not decode.stop_at_newline:  # a whole message (the hook, `cmc complete`): replayed
            self._replay[key] = request
            self._replay.move_to_end(key)
            while len(self._replay) > self.max_repos:
                self._replay.popitem(last=False)
        if entry.last is not None and entry.last[0] == decode:
            followed = follow_suggestion(entry.last[1], request.typed)
            if followed is not None:
                entry.last = (decode, followed)
                return followed, -1
        if abandoned():
            raise Cancelled("the client has gone")
        result = complete_context(lm, entry.context, request.typed, decode, entry.cache, abandoned,
                                  decider)  # fmt: skip
        entry.last = (decode, result)
        return result, entry.cache.reused_tokens

    def prefetch(self) -> int:
        """Recompute, for each repository whose index or HEAD changed since its last whole-message
        request, that request's answer, unless a client is waiting (then it stops at once).
        Nothing is computed for an empty staged diff. Returns how many were computed."""
        from cmc.decoding.beam import Cancelled
        from cmc.gitctx import repo_at

        done = 0
        for key, request in list(self._replay.items()):
            entry = self.repos.get(key)
            if entry is None:
                continue
            try:
                if entry.state[0] == repo_at(request.repo).index_state():
                    continue
            except Exception:  # a repository that went away: its request is not replayed
                self._replay.pop(key, None)
                continue
            if self.waiting or not self.lock.acquire(blocking=False):
                return done
            try:
                if self._complete(request, lambda: self.waiting > 0, unless_empty=True):
                    done += 1
                    self.prefetched += 1
            except Cancelled:
                return done
            except Exception:  # a repository that went away: its request is not replayed
                self._replay.pop(key, None)
            finally:
                self.lock.release()
        return done

    def memories_behind(self) -> list[str]:
        """Repositories served (with ``cmc.memory`` on) whose memory is missing or behind HEAD."""
        from cmc import memory
        from cmc.gitctx import repo_at

        behind = []
        for path, settings in list(self.seen.items()):
            try:
                if settings.memory and settings.history and memory.behind(repo_at(path)):
                    behind.append(path)
            except Exception:  # a repository that went away
                self.seen.pop(path, None)
        return behind
