"""Streaming commits with their patches out of one ``git log --no-walk --stdin -p`` process.

Shared by mining (`cmc.training.mine`) and the repository memory (`cmc.memory`): per-commit object
access is orders of magnitude slower than one streamed log. Big chunks are read by a thread, so git
never waits on a full pipe while Python parses; a commit printing more than ``max_bytes`` is not
held in memory (its patch comes back as None); and a commit git cannot show (a snapshot that lacks
some blobs) is skipped and counted while the log goes on after it.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cmc.gitcmd import GIT, NO_DIFF_PROGRAMS

MAX_COMMIT_BYTES = 64 << 20  # a commit printing more than this is skipped unread
_MARK = "\x00\x01cmc-commit\x00"
_END = b"\x00\x01cmc-end"  # with its NUL: a message can hold any byte but NUL
_FORMAT = "%x00%x01cmc-commit%x00%H%x00%an%x00%ae%x00%at%x00%B%x00%x01cmc-end"
_MISSING = ("unable to read", "bad object", "missing blob", "could not read", "is corrupt")


@dataclass
class LoggedCommit:
    sha: str
    author_name: str
    author_email: str
    time: int  # author date, seconds since the epoch
    message: str
    patch: str | None  # None: the commit printed more than max_bytes


def _read_ahead(stream, chunk: int = 1 << 20, depth: int = 32) -> Iterator[bytes]:
    """Chunks of ``stream`` read by a thread, so git never waits on a full pipe while we parse."""
    import queue

    q: queue.Queue = queue.Queue(maxsize=depth)

    def pump() -> None:
        try:
            while data := stream.read(chunk):
                q.put(data)
        finally:
            q.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    while data := q.get():
        yield data


def _records(stream, max_bytes: int) -> Iterator[tuple[list[str], str | None]]:
    """Split the log's output into (header fields, patch text) per commit, reading big chunks."""
    mark = _MARK.encode()
    buf = b""
    current: bytearray | None = None
    oversize = False

    def finish(block: bytes | bytearray, too_big: bool):
        end = block.find(_END)
        header = bytes(block[:end]).decode("utf-8", "replace").split("\x00")
        patch = None if too_big else bytes(block[end + len(_END) :]).decode("utf-8", "replace")
        return header, patch

    for chunk in _read_ahead(stream):
        buf += chunk
        pos = 0
        while True:
            at = buf.find(mark, pos)
            if at < 0:
                keep = max(pos, len(buf) - (len(mark) - 1))  # a mark may straddle two chunks
                if current is not None and not oversize:
                    current += buf[pos:keep]
                    oversize = len(current) > max_bytes
                    if oversize:
                        current = bytearray(current[: current.find(_END) + 16])
                buf = buf[keep:]
                break
            if current is not None:
                if not oversize:
                    current += buf[pos:at]
                yield finish(current, oversize or len(current) > max_bytes)
            current, oversize, pos = bytearray(), False, at + len(mark)
    if current is not None:
        if not oversize:
            current += buf
        yield finish(current, oversize or len(current) > max_bytes)


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass  # git died early: its error says why


class GitLogError(RuntimeError):
    """git log failed for another reason than an object it cannot read."""


def log_commits(
    cwd: str | Path,
    shas: Sequence[str],
    diff_args: Sequence[str] = ("-M",),
    pathspec: Sequence[str] = (),
    max_bytes: int = MAX_COMMIT_BYTES,
    skipped: Counter | None = None,
) -> Iterator[LoggedCommit]:
    """The commits ``shas`` (in that order) with their patches, from as few ``git log`` processes
    as possible; ``diff_args`` shape the patch (``-U0``, ``-M``), ``pathspec`` limits it. A commit
    git cannot show is counted in ``skipped["missing object (snapshot)"]`` and left out."""
    skipped = skipped if skipped is not None else Counter()
    position = {sha: i for i, sha in enumerate(shas)}
    args = [*GIT, "-c", "core.quotePath=false", "log", "--no-walk=unsorted", "--stdin", "-p",
            *diff_args, "--no-color", *NO_DIFF_PROGRAMS, "--submodule=short",
            "--src-prefix=a/", "--dst-prefix=b/", f"--format={_FORMAT}"]  # fmt: skip
    if pathspec:
        args += ["--", *pathspec]
    begin, proc = 0, None
    try:
        while begin < len(shas):
            proc = subprocess.Popen(args, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, bufsize=1 << 20)  # fmt: skip
            feed = "".join(sha + "\n" for sha in shas[begin:]).encode()
            threading.Thread(target=_feed, args=(proc.stdin, feed), daemon=True).start()
            # Each commit is given out once the next one starts (or git ends well): when git dies
            # on a commit, its output may be cut short, and that commit is the one skipped.
            last: tuple[list[str], str | None] | None = None
            for record in _records(proc.stdout, max_bytes):
                if last is not None and len(last[0]) >= 5:
                    yield _commit(*last)
                elif last is not None:
                    skipped["unparsable header"] += 1
                last = record
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.wait()
            if proc.returncode == 0:
                if last is not None and len(last[0]) >= 5:
                    yield _commit(*last)
                return
            if not any(word in err.lower() for word in _MISSING):
                raise GitLogError((err.splitlines() or ["?"])[-1])
            failed = position.get(last[0][0], begin) if last is not None and last[0] else begin
            skipped["missing object (snapshot)"] += 1
            begin = max(failed, begin) + 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()


def _commit(header: list[str], patch: str | None) -> LoggedCommit:
    sha, name, email, ts, message = header[:5]
    try:
        when = int(ts)
    except ValueError:
        when = 0
    return LoggedCommit(sha, name, email, when, message, patch)
