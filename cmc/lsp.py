"""`cmc lsp`: a language server (pygls, stdio) completing git commit messages in any LSP editor.

In a commit message buffer (a file named ``COMMIT_EDITMSG``/``MERGE_MSG``/``TAG_EDITMSG``-like, or
languageId ``gitcommit``) it answers ``textDocument/completion`` with whole-message candidates that
extend what is typed, and ``textDocument/inlineCompletion`` (LSP 3.18) with ghost text. The context
is the repository the file belongs to: its staged diff and the author's history.

It holds no model: completions come from this user's warm daemon through `cmc.client` (started
when none runs), which keeps the model loaded and the prompt's KV states between keystrokes. Only
where no daemon may run (``cmc.daemon false``, ``CMC_NO_DAEMON``) does it complete in its own
process. A keystroke starts no git process while the repository's index and config are unchanged:
the repository's identity, its settings and its context are cached and checked by ``stat``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from cmc import CmcError, __version__

MESSAGE_FILES = ("COMMIT_EDITMSG", "MERGE_MSG", "SQUASH_MSG", "TAG_EDITMSG", "EDIT_DESCRIPTION")

server = LanguageServer("cmc", __version__)


class _LocalService:
    """The in-process service, made only where no daemon may run."""

    def __init__(self):
        self._service = None

    def complete(self, request):
        if self._service is None:
            from cmc.service import CompletionService

            self._service = CompletionService()
        return self._service.complete(request)


_local = _LocalService()


def path_of(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def is_commit_message(uri: str, language_id: str | None) -> bool:
    return language_id == "gitcommit" or path_of(uri).name in MESSAGE_FILES


def repo_of_message_file(path: Path) -> str:
    """The work tree a message file belongs to (``.git/COMMIT_EDITMSG``, worktrees, submodules)."""
    git_dir = path.parent
    gitdir_file = git_dir / "gitdir"  # .git/worktrees/NAME/gitdir → the worktree's .git file
    if gitdir_file.is_file():
        return str(Path(gitdir_file.read_text().strip()).parent)
    if git_dir.name == ".git":
        return str(git_dir.parent)
    return str(git_dir)  # git searches upwards (e.g. a message file inside a work tree)


def typed_at(doc, position: lsp.Position, comment_char: str = "#") -> str:
    """The message typed before ``position`` in a pygls document (positions count the editor's
    units, UTF-16 by default: pygls converts them to a string index)."""
    from cmc import msgfile

    return msgfile.typed_before(doc.source, doc.offset_at_position(position), comment_char)


def replace_range(doc, position: lsp.Position, word: str) -> lsp.Range:
    """The range of ``word``, which ends at ``position`` (its width in the editor's units)."""
    width = doc.position_codec.client_num_units(word)
    return lsp.Range(lsp.Position(position.line, position.character - width), position)


class _SettingsCache:
    """Settings per repository, read again only when a git config file changes (no git process
    per keystroke)."""

    def __init__(self):
        self.entries: dict[str, tuple[tuple, Any]] = {}

    @staticmethod
    def _fingerprint(repo) -> tuple:
        home = Path.home()
        xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        files = (repo.common_dir / "config", repo.git_dir / "config.worktree", home / ".gitconfig",
                 xdg / "git" / "config", Path("/etc/gitconfig"))  # fmt: skip
        stamp = []
        for f in files:
            try:
                st = f.stat()
                stamp.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        from cmc.settings import disabled_by_env

        return (*stamp, disabled_by_env())

    def get(self, repo):
        from cmc.settings import Settings

        key = str(repo.git_dir)
        fingerprint = self._fingerprint(repo)
        cached = self.entries.get(key)
        if cached is None or cached[0] != fingerprint:
            cached = (fingerprint, Settings.load(repo.cwd, repo.common_dir))
            self.entries[key] = cached
        return cached[1]


_settings = _SettingsCache()
_last: dict[str, Any] = {}  # the previous keystroke's answer: both completion kinds share it


def _complete(uri: str, position: lsp.Position):
    """The continuations at ``position``: computed once per document version and position."""
    doc = server.workspace.get_text_document(uri)
    if not is_commit_message(uri, doc.language_id):
        return None, ""
    key = (uri, doc.version, position.line, position.character)
    if _last.get("key") == key:
        return _last["value"]
    from cmc import client
    from cmc.decoding import KEYSTROKE
    from cmc.gitctx import repo_at

    try:
        repo = repo_at(repo_of_message_file(path_of(uri)))
        settings = _settings.get(repo)
        if not settings.enabled:
            return None, ""
        typed = typed_at(doc, position, settings.comment_char)
        # One line, a small beam: the list shows 3 candidates, ghost text the best of them.
        decode = replace(KEYSTROKE.with_candidates(3), num_beams=3)
        result = client.complete(repo, settings, typed, decode, local=_local)
    except CmcError as exc:
        server.window_log_message(lsp.LogMessageParams(lsp.MessageType.Warning, f"cmc: {exc}"))
        return None, ""
    _last.update(key=key, value=(result, typed))
    return result, typed


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[" "]))
def completion(params: lsp.CompletionParams) -> lsp.CompletionList:
    result, typed = _complete(params.text_document.uri, params.position)
    if result is None:
        return lsp.CompletionList(is_incomplete=False, items=[])
    line_typed = typed.split("\n")[-1]
    word_start = len(line_typed) - len(line_typed.split(" ")[-1])
    word = line_typed[word_start:]
    doc = server.workspace.get_text_document(params.text_document.uri)
    edit_range = replace_range(doc, params.position, word)
    items = []
    for rank, cand in enumerate(result.candidates):
        first_line = (word + cand.continuation).split("\n")[0]
        items.append(
            lsp.CompletionItem(
                label=first_line.strip() or cand.message.split("\n")[0],
                kind=lsp.CompletionItemKind.Text,
                detail=f"cmc · {Path(result.model).name}"
                if cand.origin is None
                else f"cmc · memory: {cand.origin.describe()}",
                documentation=cand.message,
                sort_text=f"{rank:02d}",
                filter_text=first_line,
                text_edit=lsp.TextEdit(edit_range, first_line),
            )
        )
    # Every keystroke changes the best continuation: ask the editor to come back.
    return lsp.CompletionList(is_incomplete=True, items=items)


@server.feature(lsp.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.InlineCompletionOptions())
def inline_completion(params: lsp.InlineCompletionParams) -> lsp.InlineCompletionList | None:
    result, _ = _complete(params.text_document.uri, params.position)
    if result is None or not result.candidates:
        return None
    text = result.candidates[0].continuation.split("\n")[0]
    return lsp.InlineCompletionList(
        items=[
            lsp.InlineCompletionItem(
                insert_text=text, range=lsp.Range(params.position, params.position)
            )
        ]
    )


def run() -> None:
    server.start_io()
