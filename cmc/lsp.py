"""`cmc lsp`: a language server (pygls, stdio) completing git commit messages in any LSP editor.

In a commit message buffer (a file named ``COMMIT_EDITMSG``/``MERGE_MSG``/``TAG_EDITMSG``-like, or
languageId ``gitcommit``) it answers ``textDocument/completion`` with whole-message candidates that
extend what is typed, and ``textDocument/inlineCompletion`` (LSP 3.18) with ghost text. The context
is the repository the file belongs to: its staged diff and the author's history. The server keeps
the model warm and reuses the prompt's KV states between keystrokes (`cmc.service`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from cmc import CmcError, __version__

MESSAGE_FILES = ("COMMIT_EDITMSG", "MERGE_MSG", "SQUASH_MSG", "TAG_EDITMSG", "EDIT_DESCRIPTION")

server = LanguageServer("cmc", __version__)
_service = None


def _get_service():
    global _service
    if _service is None:
        from cmc.service import CompletionService

        _service = CompletionService()
    return _service


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
    return str(git_dir)  # let gitpython search upwards (e.g. a message file inside a work tree)


def typed_before(text: str, line: int, character: int, comment: str = "#") -> str:
    """The message typed before the cursor, without comment lines."""
    lines = text.split("\n")
    before = [*lines[:line], lines[line][:character] if line < len(lines) else ""]
    kept = [ln for ln in before if not ln.startswith(comment)]
    return "\n".join(kept).lstrip("\n")


def _complete(uri: str, position: lsp.Position, n: int):
    doc = server.workspace.get_text_document(uri)
    if not is_commit_message(uri, doc.language_id):
        return None, ""
    typed = typed_before(doc.source, position.line, position.character)
    from dataclasses import replace

    from cmc.complete import KEYSTROKE

    # Keystroke completions: one line, a short greedy (or small beam) decode keeps them interactive.
    settings = replace(KEYSTROKE, num_beams=max(1, n))
    try:
        result, _ = _get_service().complete(
            repo_of_message_file(path_of(uri)), typed, n=n, settings=settings
        )
    except CmcError as exc:
        server.window_log_message(lsp.LogMessageParams(lsp.MessageType.Warning, f"cmc: {exc}"))
        return None, typed
    return result, typed


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[" "]))
def completion(params: lsp.CompletionParams) -> lsp.CompletionList:
    result, typed = _complete(params.text_document.uri, params.position, 3)
    if result is None:
        return lsp.CompletionList(is_incomplete=False, items=[])
    line_typed = typed.split("\n")[-1]
    word_start = len(line_typed) - len(line_typed.split(" ")[-1])
    word = line_typed[word_start:]
    edit_range = lsp.Range(
        lsp.Position(params.position.line, params.position.character - len(word)),
        params.position,
    )
    items = []
    for rank, cand in enumerate(result.candidates):
        first_line = (word + cand.continuation).split("\n")[0]
        items.append(
            lsp.CompletionItem(
                label=first_line.strip() or cand.message.split("\n")[0],
                kind=lsp.CompletionItemKind.Text,
                detail=f"cmc · {Path(result.model).name}",
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
    result, _ = _complete(params.text_document.uri, params.position, 1)
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
