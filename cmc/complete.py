"""Completion: context (diff + history + typed text) → candidate messages. The one code path.

The hook, `cmc complete`, `cmc complete --batch` (evaluation) and the editor server all call
`complete_context`; only where the context comes from differs (`context_from_repo`,
`context_from_row`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from cmc.decoding import Candidate, DecodeSettings
from cmc.prompt import build_prompt, split_typed

# cmc.diffs and cmc.messages are imported by the functions that read diffs and history: a client
# that only decodes a daemon's `Completion` does not pay for the secret masks' regexes.


@dataclass
class Context:
    diff: str  # processed diff text
    history: list[str] = field(default_factory=list)  # oldest → newest, cleaned
    file_history: list[str] = field(default_factory=list)  # same files, any author; oldest → newest
    recall: Any = None  # cmc.memory.Recall: the repository's earlier commits most like this change
    ci_markers: bool = False  # the author's own messages (as written) use [skip ci] and the like
    _support: Any = field(default=None, compare=False, repr=False)  # of diff and history, cached

    def support(self, typed: str) -> Any:
        """What a suggestion may state here (`cmc.specifics.Support`)."""
        from cmc.specifics import Support

        if self._support is None:
            self._support = Support.of(self.diff, self.history)
            self._support.ci_markers = self.ci_markers
        return self._support.with_typed(typed)


@dataclass
class Completion:
    typed: str
    candidates: list[Candidate]
    model: str
    latency_ms: float
    served_by: str = "in-process"
    note: str = ""  # why there are no candidates, when that is known (an empty change)

    def to_json(self) -> dict:
        """The JSON of `cmc complete --json` and of the daemon's replies."""
        out = {
            "prefix": self.typed,
            "model": self.model,
            "latency_ms": round(self.latency_ms, 1),
            "served_by": self.served_by,
            "candidates": [c.to_json() for c in self.candidates],
        }
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, data: Any, served_by: str | None = None) -> Completion:
        if not isinstance(data, dict) or not isinstance(data.get("candidates"), list):
            raise ValueError("a completion must be an object with a list of candidates")
        if not isinstance(data.get("prefix"), str) or not isinstance(data.get("model"), str):
            raise ValueError("a completion needs a prefix and a model")
        return cls(
            data["prefix"],
            [Candidate.from_json(c) for c in data["candidates"]],
            data["model"],
            float(data.get("latency_ms") or 0.0),
            served_by or str(data.get("served_by") or "in-process"),
            str(data.get("note") or ""),
        )


def context_from_repo(
    repo: Any, settings: Any, max_diff_chars: int = 24_000, file_history: bool = False
) -> Context:
    """The staged change and the author's history of a `cmc.gitctx.GitRepo` (`cmc.settings.Settings`);
    with ``file_history`` (a model whose prompt has that section) also the staged files' history."""
    mods = repo.staged_mods(settings.exclude, max_chars=max_diff_chars)
    messages = (
        repo.author_messages(settings.author_name, settings.author_email)
        if settings.history
        else []
    )
    files = repo.file_history(mods) if file_history and settings.history else []
    from cmc.diffs import process_diff
    from cmc.specifics import CI_MARKER

    history = [cleaned for _, cleaned in messages]
    ci_markers = any(CI_MARKER.search(raw) for raw, _ in messages)
    recall = repo_recall(repo, settings, mods)
    return Context(process_diff(mods), history, files, recall, ci_markers)


def repo_recall(repo: Any, settings: Any, mods: list) -> Any:
    """What the repository's memory holds for the staged change (None without a memory, or with
    ``cmc.memory false`` or ``cmc.history false``)."""
    if not (settings.history and settings.memory) or not any(m.diff or m.path for m in mods):
        return None
    from cmc import memory

    found = memory.load_cached(repo.common_dir)
    if found is None or not len(found):
        return None
    return memory.recall(found, memory.diff_features(mods), None,
                         memory.email_key(settings.author_email))  # fmt: skip


def recall_section(context: Context, budget: Any) -> list[str]:
    """The prompt's recall section (`cmc.prompt`) for ``context``: the repository memory's most
    alike commits' messages, only for a model whose ``budget`` has the section."""
    if context.recall is None or getattr(budget, "recall_tokens", 0) <= 0:
        return []
    return context.recall.section()


def wants_file_history(*models: Any) -> bool:
    """Whether one of these models' prompts has a file-history section (gathering it costs a git
    call)."""
    return any(getattr(getattr(lm, "budget", None), "file_history_tokens", 0) > 0 for lm in models)


EMPTY_CHANGE = "the change is empty (nothing staged)"
BODY_SHARE = 0.3  # measured: see the README ("Subject line or body")
BODY_WINDOW = 10


def writes_bodies(history: list[str]) -> bool:
    """Whether the author writes message bodies: at least `BODY_SHARE` of their last `BODY_WINDOW`
    messages have one. Otherwise whole-message completions stop at the end of the subject line
    (measured on the test repositories: bodies the author does not write cost B-Norm)."""
    recent = history[-BODY_WINDOW:]
    return bool(recent) and sum("\n" in m.strip() for m in recent) >= BODY_SHARE * len(recent)


def context_from_row(row: dict, use_history: bool = True, memories: Any = None) -> Context:
    """A CommitChronicle-schema row: ``mods`` (raw hunks or processed) or ``diff``, ``history``;
    with ``memories`` (`cmc.memory.RowMemories`) and the row's ``repository`` and ``hash``, the
    recall of that repository's memory as of the commit's parent."""
    from cmc.diffs import process_diff
    from cmc.messages import history_message

    diff = process_diff(row["mods"]) if row.get("mods") is not None else row.get("diff") or ""

    def cleaned(messages: Any) -> list[str]:
        return [c for c in map(history_message, messages or []) if c] if use_history else []

    recall = memories.recall_for(row) if memories is not None and use_history else None
    return Context(diff, cleaned(row.get("history")), cleaned(row.get("file_history")), recall)


def complete_context(
    lm: Any,
    context: Context,
    typed: str,
    settings: DecodeSettings | None = None,
    cache: Any = None,
    cancelled: Any = None,
    decider: Any = None,
) -> Completion:
    """Up to ``settings.num_candidates`` distinct completions of ``typed`` for this context, in the
    stage's order: the context → the model's candidates and the memory's → the constraint → the
    choice between them.

    ``decider``: a second model (the keystroke model, where whole messages have their own) that,
    with nothing typed, makes the choice: its own candidates are weighed against the memory's by
    its own chooser, and each place it gives to a model's text holds ``lm``'s next candidate
    instead (measured in docs/training.md: ``lm``'s scores pick the memory less well there).
    ``cancelled()`` is asked between decoding steps; True abandons the work (`Cancelled`)."""
    settings = settings or DecodeSettings()
    if not context.diff.strip():  # a commit that changes nothing: any message would be made up
        return Completion(typed, [], lm.name, 0.0, note=EMPTY_CHANGE)
    if not settings.stop_at_newline and "\n" not in typed and not writes_bodies(context.history):
        settings = replace(settings, stop_at_newline=True)  # a subject line, as the author writes
    started = time.perf_counter()
    from cmc import specifics

    support = context.support(typed) if specifics.CONSTRAIN else None
    candidates = model_candidates(lm, context, typed, settings, cache, cancelled, support)
    offered = memory_candidates(context, typed, settings, support)
    if offered is not None:
        from cmc.recalled import choose

        n = settings.num_candidates
        if decider is not None and decider is not lm and offered and not typed.strip():
            own = model_candidates(decider, context, typed, settings, None, cancelled, support)
            ranked = choose(own, offered, typed, context.history, n, decider.chooser)
            candidates = written_by(ranked, candidates, n)
        else:
            candidates = choose(candidates, offered, typed, context.history, n, lm.chooser)
    from cmc.secrets import leaks

    # The last guard: nothing that looks like a secret reaches a user, whatever made it.
    candidates = [c for c in candidates if not leaks(c.continuation)]
    return Completion(typed, candidates, lm.name, (time.perf_counter() - started) * 1000)


def model_candidates(
    lm: Any, context: Context, typed: str, settings: DecodeSettings, cache: Any, cancelled: Any,
    support: Any,
) -> list[Candidate]:  # fmt: skip
    """What ``lm`` writes for this context, within the constraint (``support``; None: off)."""
    from cmc import knn, specifics
    from cmc.decoding.beam import generate_candidates

    head, _ = split_typed(typed)
    if getattr(lm.model, "kind", None) == "seq2seq":
        from cmc.prompt import build_seq2seq_prompt

        prompt = build_seq2seq_prompt(lm.tokenizer, context.diff, context.history, head)
    else:
        prompt = build_prompt(lm.tokenizer, context.diff, context.history, head, finished=False,
                              budget=lm.budget, file_history=context.file_history,
                              recalled=recall_section(context, lm.budget))  # fmt: skip
    candidates = generate_candidates(lm.model, lm.tokenizer, prompt, typed, settings, cache,
                                     cancelled, support, context.recall if knn.ON else None)  # fmt: skip
    if support is not None:  # what the search could not see coming (a whole word at once)
        candidates = specifics.without_problems(candidates, typed, support)
    return candidates


def memory_candidates(
    context: Context, typed: str, settings: DecodeSettings, support: Any
) -> list | None:
    """What the repository's memory offers for ``typed`` (`cmc.recalled.Recalled`), fitted to this
    change within the constraint; None without a memory."""
    if context.recall is None:
        return None
    from cmc.recalled import candidates, fitted

    offered = candidates(context.recall, typed)
    if support is not None:
        offered = fitted(offered, typed, support)
    if settings.stop_at_newline:  # one line at a time: the rest of the typed line only
        offered = [r for r in offered if "\n" not in r.continuation.rstrip()]
    return offered


def written_by(ranked: list[Candidate], model: list[Candidate], n: int) -> list[Candidate]:
    """``ranked`` (a decider's choice) with each model-written place holding the next of ``model``
    instead (the memory's keep theirs), then the rest of ``model``: at most ``n``, distinct."""
    rest = iter(model)
    out: list[Candidate] = []
    seen: set[str] = set()

    def add(c: Candidate) -> None:
        key = c.message.strip().lower()
        if key not in seen:
            seen.add(key)
            out.append(c)

    for c in ranked:
        if c.origin is not None:
            add(c)
        else:
            for m in rest:
                if m.message.strip().lower() not in seen:
                    add(m)
                    break
    for m in rest:
        add(m)
    return out[:n]


def load_models(settings: Any, whole: bool) -> tuple[Any, Any]:
    """The model of a request (`cmc.settings.Settings.model_for`) and, for a whole message where
    whole messages have their own model, the keystroke model as its decider (else None). A message
    model kept as a delta that is not built yet (`cmc base` builds it) is not built here, in a
    request: the keystroke model writes alone until then."""
    from cmc.model import load_model

    spec = settings.model_for(whole)
    if spec != settings.model and ready(spec):
        return load_model(spec), load_model(settings.model)
    return load_model(settings.model), None


def ready(spec: str) -> bool:
    """Whether the model ``spec`` loads without a minute's building first (`cmc.delta`)."""
    from pathlib import Path

    from cmc.delta import delta_model, is_delta_dir

    if not is_delta_dir(Path(spec).expanduser()):
        return True
    try:
        return delta_model(Path(spec).expanduser(), build=False) is not None
    except Exception:  # the base missing or unreadable: the status says why; the request goes on
        return False


def complete_rows(
    lm: Any, rows: Iterable[dict], use_history: bool = True, settings: DecodeSettings | None = None,
    decider: Any = None,
) -> Iterable[dict]:  # fmt: skip
    """``cmc complete --batch``: one output record per input row (see docs/hooks.md for the
    schema). A row with ``repository`` (a local clone) and ``hash`` also draws on that
    repository's memory as of the commit's parent. ``decider``: as `complete_context`'s."""
    memories = None
    for i, row in enumerate(rows):
        typed = row.get("prefix") or ""
        if row.get("repository") and memories is None:
            from cmc.memory import RowMemories

            memories = RowMemories()
        context = context_from_row(row, use_history, memories)
        result = complete_context(lm, context, typed, settings, decider=decider)
        best = result.candidates[0].continuation if result.candidates else ""
        yield {
            "id": row.get("id", row.get("hash", i)),
            "prefix": typed,
            "continuation": best,
            "candidates": [c.continuation for c in result.candidates],
            "latency_ms": round(result.latency_ms, 1),
        }
