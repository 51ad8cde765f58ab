"""The git command line every cmc call starts with: a repository's settings never run a program.

cmc reads repositories it was not asked to trust (the daemon serves every repository a user commits
in; mining reads fetched snapshots). Some of git's settings make a read-only command run a program
named by the repository's own config: ``core.fsmonitor`` (a hook script, run by ``git diff`` and
``git status``), ``log.showSignature`` (``gpg.program`` on every signed commit ``git log`` shows),
external diff drivers and textconv filters (``git diff`` / ``git log -p``, named in
``.gitattributes``). The first two are turned off here, on every git call cmc makes; every call
that shows a diff also passes ``--no-ext-diff --no-textconv`` (`NO_DIFF_PROGRAMS`: git has no
setting that turns an external diff off, ``-c diff.external=`` makes it try to run ""). cmc never runs a command that
fetches, commits or checks out, so credential helpers, hooks and filters are never reached.
"""

from __future__ import annotations

# `-c` settings given to every git call (they win over any config file).
SAFE_CONFIG = (
    "core.fsmonitor=false",
    "log.showSignature=false",
)
NO_DIFF_PROGRAMS = ("--no-ext-diff", "--no-textconv")

GIT = ("git", "--no-pager", *(arg for setting in SAFE_CONFIG for arg in ("-c", setting)))


def git_argv(*args: str) -> list[str]:
    """``git ARGS`` with the settings above: what every subprocess cmc starts for git is."""
    return [*GIT, *args]
