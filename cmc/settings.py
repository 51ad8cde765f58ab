"""Every setting cmc reads, in one place: git config (``cmc.*``, ``core.commentChar``,
``commit.cleanup``, ``user.*``), the environment (every ``CMC_*`` variable is read here and
nowhere else: `ENVIRONMENT` lists them), and which model to use.

The client side (hook, ``cmc complete``, the language server) resolves a `Settings` once per run and
sends the daemon everything it needs; the daemon never reads configuration itself.

Model resolution: ``--model`` flag > ``git config cmc.model`` > this repository's personalized model
(``$GIT_DIR/cmc/model``, written by ``cmc train``) > the default model bundled in the package.

Two models: ``git config cmc.messageModel`` names a second model that writes whole messages (the
hook, ``cmc complete``, editors' ghost text of the message box) while the model above keeps serving
keystrokes (the language server's one-line completions) and, with nothing typed, decides between
the memory and a model (`cmc.complete.complete_context`); a larger model whose per-token cost is too
high for a keystroke can then write the message the daemon computes after ``git add``. Unset, it is
the bundled message model unless ``cmc.model`` is set (`resolve_message_model`); ``none`` or a
``--model`` flag means one model for everything.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cmc import CmcError
from cmc.gitcmd import git_argv

ENV_DISABLE = "CMC_DISABLE"
DEFAULT_TIMEOUT_S = 10.0  # how long the hook may take (cmc.timeout)
DEFAULT_CANDIDATES = 3
DEFAULT_SOURCES = ("", "template")  # message sources the hook acts on unless `cmc.sources` says
DEFAULT_TICKET_PATTERN = r"[A-Z][A-Z0-9]{1,9}-\d+"  # cmc.ticketPattern
DEFAULT_WAIT_S = 30.0  # how long `cmc complete` and editors wait for a busy daemon
DEFAULT_IDLE_S = 900.0  # a daemon without requests for this long exits
DEFAULT_LEARN_STEPS = 200  # `cmc train`'s default

# Every environment variable cmc reads (`cmc hook status` and the README list them).
ENVIRONMENT = {
    "CMC_DISABLE": "1/true/yes/on: cmc does nothing (the hook, --respect-enabled, editors)",
    "CMC_NO_DAEMON": "1/true: never use or start the warm daemon; complete in this process",
    "CMC_SOCKET": "the daemon's socket path (its folder must be yours, mode 0700)",
    "CMC_PREFETCH": "0/false: the daemon does not compute the hook's answer after `git add`",
    "CMC_THREADS": "threads for completion (default 1)",
    "CMC_RUNTIME": "auto, numpy or transformers: what runs the model",
    "CMC_PRECISION": "int8, int8w (int8 weights in blocks, float32 activations) or float32: the weight products of cmc's runtime",
    "CMC_MATMUL": "numpy: weight products on numpy instead of onnxruntime",
    "CMC_DTYPE": "torch dtype of the transformers runtime on the CPU (default float32)",
    "CMC_LEARN": "0/false: the daemon does not learn repositories in the background",
}

BUNDLED_MODEL = Path(__file__).parent / "default_model"
# Whole messages' model where the bundled one serves keystrokes: a fine-tuned base kept as its delta
# (`cmc.delta`), built by `cmc base` (docs/training.md).
BUNDLED_MESSAGE_MODEL = Path(__file__).parent / "message_model"


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/cmc`` (``~/.cache/cmc``): where cmc keeps what it can make again."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmc"


NO_MODEL_HELP = (
    "no model available: pass --model PATH, or run `git config cmc.model PATH` "
    "(a transformers save_pretrained folder or hub id), or `cmc train` in this repository"
)

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _env(name: str) -> str:
    if name not in ENVIRONMENT:  # a variable read without being listed is a bug, not a setting
        raise KeyError(name)
    return os.environ.get(name, "").strip()


def env_flag(name: str, default: bool = False) -> bool:
    """The one reading of a boolean environment variable (``1``/``true``/``yes``/``on``, or
    ``0``/``false``/``no``/``off``; unset or anything else: ``default``)."""
    value = _env(name).lower()
    if value in _TRUE:
        return True
    return False if value in _FALSE else default


def env_choice(name: str, choices: tuple[str, ...], default: str = "") -> str:
    """A variable that names one of ``choices`` (lower-cased); anything else is a one-line error."""
    value = _env(name).lower() or default
    if value and value not in choices:
        raise CmcError(f"{name}={value!r}: use one of {', '.join(choices)}")
    return value


def disabled_by_env() -> bool:
    return env_flag(ENV_DISABLE)


def daemon_disabled_by_env() -> bool:
    """``CMC_NO_DAEMON``: complete in this process, never asking or starting a daemon."""
    return env_flag("CMC_NO_DAEMON")


def prefetch_enabled() -> bool:
    return env_flag("CMC_PREFETCH", default=True)


def socket_override() -> Path | None:
    value = _env("CMC_SOCKET")
    return Path(value) if value else None


RUNTIMES = ("auto", "numpy", "transformers")
PRECISIONS = ("float32", "int8", "int8w")


def runtime_env() -> str:
    """``CMC_RUNTIME``: what runs the model (`cmc.model.runtime_choice`)."""
    return env_choice("CMC_RUNTIME", RUNTIMES, "auto")


def precision_env() -> str:
    """``CMC_PRECISION``: "" when unset (the model's own record decides: `cmc.model.precision_for`)."""
    return env_choice("CMC_PRECISION", PRECISIONS)


def numpy_products() -> bool:
    """``CMC_MATMUL=numpy``: weight products on numpy even where onnxruntime is installed."""
    return env_choice("CMC_MATMUL", ("numpy", "onnxruntime")) == "numpy"


def torch_dtype_name() -> str:
    return _env("CMC_DTYPE") or "float32"


def limit_blas_threads() -> None:
    """numpy's OpenBLAS starts a thread per core: a 9M model's products gain little from a second
    thread and lose a lot when the cores are busy (`inference_threads`). Called by ``import cmc``
    before numpy is first imported, which is the only time OpenBLAS reads it."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(inference_threads()))


def personalized_model_dir(git_dir: str | os.PathLike) -> Path:
    return Path(git_dir) / "cmc" / "model"


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.json").is_file()


def resolve_message_model(flag: str | None, configured: str | None, model_set: bool) -> str:
    """The whole messages' model ("": the model writes everything): none with a --model flag or
    ``cmc.messageModel none``; else ``cmc.messageModel``; else the bundled message model unless
    ``cmc.model`` is set (a model you chose writes everything; one `cmc train` made for this
    repository serves keystrokes and decides, as the bundled one would)."""
    value = (configured or "").strip()
    if flag or value.lower() == "none":
        return ""
    if value:
        return value
    if not model_set and (BUNDLED_MESSAGE_MODEL / "delta.safetensors").is_file():
        return str(BUNDLED_MESSAGE_MODEL)
    return ""


def resolve_model(
    flag: str | None, configured: str | None, git_dir: str | os.PathLike | None
) -> str:
    """The model spec to load, by the resolution order in the module docstring."""
    for spec in (flag, configured):
        if spec:
            return spec
    if git_dir and is_model_dir(personalized_model_dir(git_dir)):
        return str(personalized_model_dir(git_dir))
    if is_model_dir(BUNDLED_MODEL):
        return str(BUNDLED_MODEL)
    raise CmcError(NO_MODEL_HELP)


def read_git_config(cwd: str | os.PathLike) -> dict[str, list[str]]:
    """All of git's configuration as seen from ``cwd`` (one process). A failing git is an error."""
    try:
        proc = subprocess.run(
            git_argv("config", "-z", "--list"),
            cwd=cwd,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CmcError("git is not installed or not on PATH") from exc
    except OSError as exc:
        raise CmcError(f"cannot run git config in {cwd}: {exc.strerror}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CmcError(f"git config failed in {cwd}: {err[-1] if err else proc.returncode}")
    values: dict[str, list[str]] = {}
    for item in proc.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if item:
            key, _, value = item.partition("\n")
            values.setdefault(key.lower(), []).append(value)
    return values


class _Config:
    def __init__(self, values: dict[str, list[str]]):
        self.values = values

    def get(self, key: str) -> str | None:
        found = self.values.get(key.lower())
        return found[-1] if found else None

    def all(self, key: str) -> list[str]:
        return [v for v in self.values.get(key.lower(), []) if v]

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        low = value.strip().lower()
        if low in (*_TRUE, ""):  # a key without a value is true in git
            return True
        if low in _FALSE:
            return False
        raise CmcError(f"{key}: {value!r} is not a boolean (use true or false)")

    def number(self, key: str, default: float, minimum: float, integer: bool = False) -> float:
        value = self.get(key)
        if value is None or not value.strip():
            return default
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < minimum:
            kind = "a whole number" if integer else "a number"
            raise CmcError(f"{key}: {value!r} is not {kind} of at least {minimum:g}")
        return number


def _regex(value: str | None) -> str | None:
    if not value:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise CmcError(f"cmc.ticketPattern: {value!r} is not a regular expression ({exc})") from exc
    return value


def _sources(value: str | None) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_SOURCES
    return tuple("" if s in ("empty", "none") else s for s in value.replace(",", " ").split())


@dataclass(frozen=True)
class Settings:
    """What cmc does in one repository, resolved from git config, the environment and flags."""

    model: str  # resolved spec; "" when none is available
    message_model: str = ""  # cmc.messageModel: whole messages; "" = `model` (see `model_for`)
    enabled: bool = True
    history: bool = True
    daemon: bool = True
    timeout: float = DEFAULT_TIMEOUT_S
    candidates: int = DEFAULT_CANDIDATES
    sources: tuple[str, ...] = DEFAULT_SOURCES
    comment_char: str = "#"  # core.commentChar as configured; "auto" is resolved per message file
    cleanup: str = "default"  # commit.cleanup
    exclude: tuple[str, ...] = field(default_factory=tuple)  # cmc.exclude patterns
    author_name: str | None = None
    author_email: str | None = None
    memory: bool = True  # the repository's memory: built in the background, used (cmc.memory)
    learn: bool = True  # the daemon learns the repository in the background (cmc.learn, CMC_LEARN)
    learn_steps: int = DEFAULT_LEARN_STEPS  # how long a background run trains (cmc.learnSteps)
    ticket: bool = True  # start an empty message with the branch's ticket (cmc.ticket)
    ticket_pattern: str = DEFAULT_TICKET_PATTERN

    @classmethod
    def load(
        cls,
        repo: str | os.PathLike,
        git_dir: str | os.PathLike | None = None,
        model: str | None = None,
        history: bool | None = None,
    ) -> Settings:
        """Settings of the repository at ``repo``; ``model``/``history`` are command-line flags."""
        cfg = _Config(read_git_config(repo))
        try:
            resolved = resolve_model(model, cfg.get("cmc.model"), git_dir)
        except CmcError:
            resolved = (
                ""  # reported when a model is needed, not by `cmc hook status` or a disabled hook
            )
        return cls(
            model=resolved,
            message_model=resolve_message_model(
                model, cfg.get("cmc.messageModel"), bool(cfg.get("cmc.model"))
            ),
            enabled=cfg.boolean("cmc.enabled", True) and not disabled_by_env(),
            history=cfg.boolean("cmc.history", True) if history is None else history,
            daemon=cfg.boolean("cmc.daemon", True),
            memory=cfg.boolean("cmc.memory", True),
            learn=cfg.boolean("cmc.learn", True) and env_flag("CMC_LEARN", default=True),
            learn_steps=int(cfg.number("cmc.learnSteps", DEFAULT_LEARN_STEPS, 1, integer=True)),
            timeout=cfg.number("cmc.timeout", DEFAULT_TIMEOUT_S, 0.001),
            candidates=int(cfg.number("cmc.candidates", DEFAULT_CANDIDATES, 1, integer=True)),
            sources=_sources(cfg.get("cmc.sources")),
            comment_char=cfg.get("core.commentChar") or "#",
            cleanup=(cfg.get("commit.cleanup") or "default").strip().lower(),
            exclude=tuple(cfg.all("cmc.exclude")),
            author_name=cfg.get("user.name"),
            author_email=cfg.get("user.email"),
            ticket=cfg.boolean("cmc.ticket", True),
            ticket_pattern=_regex(cfg.get("cmc.ticketPattern")) or DEFAULT_TICKET_PATTERN,
        )

    def model_for(self, whole: bool) -> str:
        """The model spec of a request: ``message_model`` writes whole messages (requests that are
        not one line at a time) where it is set, ``model`` everything else."""
        return (self.message_model or self.model) if whole else self.model

    def to_json(self) -> dict:
        """The settings as the daemon receives them (it reads no configuration itself)."""
        return {
            "model": self.model,
            "message_model": self.message_model,
            "history": self.history,
            "memory": self.memory,
            "learn": self.learn,
            "learn_steps": self.learn_steps,
            "exclude": list(self.exclude),
            "author_name": self.author_name,
            "author_email": self.author_email,
        }

    @classmethod
    def from_json(cls, data: object) -> Settings:
        """What the daemon needs of a client's settings (see `to_json`); bad types → ValueError."""
        if not isinstance(data, dict):
            raise ValueError("settings must be an object")
        model, history, exclude = data.get("model"), data.get("history"), data.get("exclude", [])
        if not isinstance(model, str) or not model:
            raise ValueError("settings.model must be a model path or hub id")
        message_model = data.get("message_model", "")
        if not isinstance(message_model, str):
            raise ValueError("settings.message_model must be a model path or hub id, or empty")
        if not isinstance(history, bool):
            raise ValueError("settings.history must be true or false")
        memory, learn = data.get("memory", True), data.get("learn", True)
        if not isinstance(memory, bool) or not isinstance(learn, bool):
            raise ValueError("settings.memory and settings.learn must be true or false")
        steps = data.get("learn_steps", DEFAULT_LEARN_STEPS)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError("settings.learn_steps must be a whole number of at least 1")
        if not isinstance(exclude, list) or not all(isinstance(p, str) for p in exclude):
            raise ValueError("settings.exclude must be a list of glob patterns")
        author = [data.get("author_name"), data.get("author_email")]
        if not all(a is None or isinstance(a, str) for a in author):
            raise ValueError("settings.author_name and author_email must be strings")
        return cls(model=model, message_model=message_model, history=history, memory=memory,
                   learn=learn, learn_steps=steps, exclude=tuple(exclude), author_name=author[0],
                   author_email=author[1])  # fmt: skip


def inference_threads() -> int:
    """Threads for completion: 1 unless CMC_THREADS says otherwise. A small model's decode step
    gains little from a second thread, and when the cores are busy (a build, tests, an IDE) torch's
    threads spin and wait: measured here, 2 threads were 7x slower than 1 under load."""
    try:
        return max(1, int(_env("CMC_THREADS") or 1))
    except ValueError:
        return 1
