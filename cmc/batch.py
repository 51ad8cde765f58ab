"""`cmc complete --batch`: CommitChronicle rows in, completions out, without losing data.

Arguments and every row are checked before the model loads (one ``FILE:LINE: reason`` per bad
row); the output is written to a temporary file beside it and renamed at the end, so a failure
leaves an existing output as it was, and the input can never be the output.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmc import CmcError

_MOD_FIELDS = ("change_type", "old_path", "new_path")


def row_problem(row: Any) -> str | None:
    """Why ``row`` cannot be completed, or None."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object, not {type(row).__name__}"
    prefix = row.get("prefix")
    if prefix is not None and not isinstance(prefix, str):
        return "prefix must be a string"
    mods, diff = row.get("mods"), row.get("diff")
    if mods is None and diff is None:
        return "a row needs mods (a list of file changes) or diff (a string)"
    if mods is not None:
        if not isinstance(mods, list):
            return "mods must be a list of objects"
        for i, mod in enumerate(mods):
            if not isinstance(mod, dict):
                return f"mods[{i}] must be an object"
            if not isinstance(mod.get("diff", ""), str):
                return f"mods[{i}].diff must be a string"
            for key in _MOD_FIELDS:
                if mod.get(key) is not None and not isinstance(mod[key], str):
                    return f"mods[{i}].{key} must be a string"
    elif not isinstance(diff, str):
        return "diff must be a string"
    repository = row.get("repository")
    if repository is not None:
        if not isinstance(repository, str) or not repository:
            return "repository must be the path of a local clone"
        if not isinstance(row.get("hash"), str) or not row["hash"]:
            return "a row with a repository needs the hash of its commit"
    for key in ("history", "file_history"):
        value = row.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(h, str) for h in value)
        ):
            return f"{key} must be a list of strings"
    return None


def read_rows(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, row, problem) for each non-empty line of a JSONL file."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; a generator)
    except OSError as exc:
        raise CmcError(f"cannot read {path}: {exc.strerror}") from exc
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, f"not UTF-8 (byte {exc.start})"
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"not a JSON line ({exc.msg})"
                continue
            yield lineno, row, row_problem(row)


def check_paths(batch: str, out: str | None) -> None:
    """Fail early, in one line, before any model loads."""
    if not out:
        raise CmcError("--batch needs --out FILE")
    target = Path(out)
    if not target.parent.is_dir():
        raise CmcError(f"--out {out}: folder {target.parent} does not exist")
    if target.is_dir():
        raise CmcError(f"--out {out} is a folder")
    if target.exists() and os.path.samefile(batch, target):
        raise CmcError(f"--out {out} is the input file; give another file")


def run_batch(
    batch: str, out: str, model: str, use_history: bool, decode: Any, skip_invalid: bool
) -> tuple[int, int]:
    """Complete every valid row of ``batch`` into ``out``; (rows written, rows skipped)."""
    check_paths(batch, out)
    total, bad = 0, []
    for lineno, _row, problem in read_rows(batch):
        total += 1
        if problem:
            if not skip_invalid:
                raise CmcError(f"{batch}:{lineno}: {problem} (--skip-invalid skips such rows)")
            bad.append(lineno)
    from cmc.complete import complete_rows
    from cmc.model import load_model

    lm = load_model(model)
    rows = (row for lineno, row, problem in read_rows(batch) if problem is None)
    target = Path(out)
    special = target.exists() and not stat.S_ISREG(target.stat().st_mode)  # /dev/stdout, a pipe
    written = 0
    tmp_name = None
    try:
        if special:
            f = open(target, "w", encoding="utf-8")  # noqa: SIM115
        else:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            f = os.fdopen(fd, "w", encoding="utf-8")
        with f:
            for record in complete_rows(lm, rows, use_history, decode):
                f.write(json.dumps(record) + "\n")
                written += 1
        if tmp_name:
            os.replace(tmp_name, target)
            tmp_name = None
    except OSError as exc:
        kept = "" if special else f"; {out} left as it was"
        raise CmcError(
            f"cannot write {out}: {exc.strerror or exc} ({written} of {total - len(bad)} rows done{kept})"
        ) from exc
    finally:
        if tmp_name:
            Path(tmp_name).unlink(missing_ok=True)
    return written, len(bad)
