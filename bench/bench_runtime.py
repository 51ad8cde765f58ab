"""The completion runtimes side by side, and what a user feels: cold start, hook, keystroke.

    python bench/bench_runtime.py [--reps 5] [--no-busy] [--no-ct2] [--model PATH]

Arms, in one run on this machine, 1 thread each:
* cmc's Llama runtime (`cmc.runtime.llama`) with its weight products on onnxruntime in int8 (the
  default for cmc's own models) and in float32, and on numpy ("numpy products": the runtime as it
  was before onnxruntime);
* ``transformers``: the same model through transformers on torch (cmc as shipped before);
* ``ctranslate2`` (when the package is installed: ``pip install ctranslate2``): the model converted
  to CTranslate2 (float32 and int8), its own search (it cannot run cmc's typed-tail constraint or
  message-only no-repeat rule inside its beam search; timing only).

Part 1 (in-process, real prompts of ~600 tokens built by cmc from this repository's files): load
time in a fresh process, prefill, per-token decode, beam-5 ≤ 24 tokens, greedy ≤ 8, CPU-seconds of a
beam-5 completion. Part 2 (subprocesses, a real repository and `git`, cmc installed as users have
it: `user_install`): cold `cmc complete` without a daemon; the installed hook with a warm daemon on
a new staged change each time; keystrokes typed one character at a time against the daemon (the
editor path); int8 also at 2 threads. Both parts idle and with both cores busy (two spinning
processes), unless --no-busy. Part 3: a ~40M-parameter random Llama on cmc's runtime against the
shipped 9M on transformers, beam 5, exactly 24 new tokens, the two arms' runs interleaved.
Every figure is printed with its ratio to the transformers arm measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# 1 thread for every arm, set before anything imports numpy (torch does): OpenBLAS reads it once.
os.environ.setdefault("CMC_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ["CMC_THREADS"])
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
MESSAGE = "Fix the parser crash when the configuration file is empty"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


@contextlib.contextmanager
def busy(on: bool):
    """Both cores busy with spinning processes (a build, tests, an IDE indexing)."""
    procs = []
    if on:
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def real_prompt_ids(tokenizer, budget, n_tokens: int = 600) -> tuple[list[int], int]:
    from cmc.diffs import Mod, process_diff
    from cmc.prompt import build_prompt

    mods = []
    for f in sorted((ROOT / "cmc").glob("*.py"))[:6]:
        lines = f.read_text().splitlines()[:80]
        raw = f"@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{x}\n" for x in lines)
        mods.append(Mod("ADD", None, str(f.relative_to(ROOT)), raw))
    diff = process_diff(mods)
    history = ["Add the daemon's socket checks", "Fix the hook on a detached HEAD"]
    prompt = build_prompt(tokenizer, diff, history, "Fix", finished=False, budget=budget)
    ids = prompt.input_ids
    return ids[-n_tokens:] if len(ids) > n_tokens else ids, prompt.message_start


# Part 1's arms: (runtime, environment of a fresh process, products engine, precision)
ARMS = {
    "numpy products (OpenBLAS)": ("numpy", {"CMC_MATMUL": "numpy"}, "numpy", "float32"),
    "onnxruntime float32": ("numpy", {"CMC_PRECISION": "float32"}, "onnxruntime", "float32"),
    "onnxruntime int8": ("numpy", {"CMC_PRECISION": "int8"}, "onnxruntime", "int8"),
    "transformers": ("transformers", {}, None, None),
}


def load_arm(model: str, arm: str):
    """The model as ``arm`` runs it, in this process."""
    from cmc.model import LoadedModel, load_model, read_budget
    from cmc.runtime.llama import NumpyLlama
    from cmc.runtime.tokenizer import LeanTokenizer

    runtime, _, engine, precision = ARMS[arm]
    if runtime == "transformers":
        return load_model(model, runtime)
    return LoadedModel(model, NumpyLlama(model, precision, engine), LeanTokenizer(model),
                       read_budget(model))  # fmt: skip


def load_seconds(model: str, arm: str) -> float:
    runtime, env, _, _ = ARMS[arm]
    code = (
        "import sys, time; t = time.perf_counter(); from cmc.model import load_model; "
        "load_model(sys.argv[1], sys.argv[2]); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code, model, runtime], capture_output=True,
                         text=True, check=True, cwd=tempfile.gettempdir(),
                         env={**os.environ, **env})  # fmt: skip
    return float(out.stdout.split()[-1])


def part1_row(lm, reps: int) -> dict:
    import numpy as np

    from cmc.decoding import DecodeSettings
    from cmc.decoding.beam import PromptCache, generate_candidates
    from cmc.prompt import Prompt

    ids, start = real_prompt_ids(lm.tokenizer, lm.budget)
    rt = lm.model
    pre, tok, b5, g8, cpu = [], [], [], [], []
    prompt = Prompt(ids, [0] * len(ids), start)
    for _ in range(reps):
        t = time.perf_counter()
        state, _ = rt.prefill(None, ids)
        pre.append(time.perf_counter() - t)
        beams = rt.beams(state, 32)
        t = time.perf_counter()
        for i in range(16):
            rt.step(beams, np.zeros(1, dtype=np.int64), np.array([100 + i]))
        tok.append((time.perf_counter() - t) / 16)
        for settings, out in ((DecodeSettings(num_beams=5, max_new_tokens=24), b5),
                              (DecodeSettings(num_beams=1, max_new_tokens=8), g8)):  # fmt: skip
            t, c = time.perf_counter(), time.process_time()
            generate_candidates(rt, lm.tokenizer, prompt, "Fix", settings, PromptCache())
            out.append(time.perf_counter() - t)
            if out is b5:
                cpu.append(time.process_time() - c)
    return {"prefill": med(pre), "token": med(tok), "beam5": med(b5), "greedy8": med(g8),
            "cpu": med(cpu), "prompt": len(ids)}  # fmt: skip


def ct2_rows(model: str, reps: int, tmp: Path) -> dict:
    """CTranslate2 timings (its own search; no cmc constraints)."""
    try:
        import ctranslate2
    except ImportError:
        return {}
    from ctranslate2.converters import TransformersConverter

    from cmc.model import load_model

    lm = load_model(model, "numpy")
    ids, _ = real_prompt_ids(lm.tokenizer, lm.budget)
    from tokenizers import Tokenizer

    table = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    tokens = [table.id_to_token(i) for i in ids]
    eos = lm.tokenizer.eos_token
    rows = {}
    for quant in ("float32", "int8"):
        out = tmp / f"ct2-{quant}"
        TransformersConverter(model, load_as_float16=False).convert(str(out), quantization=quant)
        code = (
            "import sys, time; t = time.perf_counter(); import ctranslate2; "
            "ctranslate2.Generator(sys.argv[1], intra_threads=1); print(time.perf_counter() - t)"
        )
        res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                             text=True, check=True)  # fmt: skip
        gen = ctranslate2.Generator(str(out), intra_threads=1, inter_threads=1)

        def run(beam: int, n: int, gen=gen) -> tuple[float, float]:
            t, c = time.perf_counter(), time.process_time()
            gen.generate_batch([tokens], beam_size=beam, max_length=n, min_length=n,
                               include_prompt_in_result=False, end_token=eos)  # fmt: skip
            return time.perf_counter() - t, time.process_time() - c

        pre, tok, b5, g8, cpu = [], [], [], [], []
        run(1, 1)
        for _ in range(reps):
            one, _ = run(1, 1)
            pre.append(one)
            seventeen, _ = run(1, 17)
            tok.append((seventeen - one) / 16)
            t5, c5 = run(5, 24)
            b5.append(t5)
            cpu.append(c5)
            g8.append(run(1, 8)[0])
        rows[f"ctranslate2 {quant}"] = {
            "load": float(res.stdout.split()[-1]), "prefill": med(pre), "token": med(tok),
            "beam5": med(b5), "greedy8": med(g8), "cpu": med(cpu), "prompt": len(ids),
        }  # fmt: skip
    return rows


def part1(model: str, reps: int, loaded: bool, use_ct2: bool, tmp: Path) -> None:
    rows = {}
    with busy(loaded):
        for arm in ARMS:
            row = part1_row(load_arm(model, arm), reps)
            row["load"] = med([load_seconds(model, arm) for _ in range(max(2, reps // 2))])
            rows[arm] = row
        if use_ct2:
            rows.update(ct2_rows(model, reps, tmp))
    base = rows["transformers"]
    print(f"\n## Part 1: runtimes side by side, {'both cores busy' if loaded else 'idle'} "
          f"(prompt {base['prompt']} tokens, 1 thread, median of {reps})")  # fmt: skip
    print("| runtime | load (fresh process) | prefill | per token | beam-5 ≤24 | greedy ≤8 | "
          "CPU-s / beam-5 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        cells = []
        for key, unit in (("load", "s"), ("prefill", "ms"), ("token", "ms"), ("beam5", "ms"),
                          ("greedy8", "ms"), ("cpu", "s")):  # fmt: skip
            v = r[key] if unit == "s" else r[key] * 1000
            ratio = base[key] / r[key] if r[key] else float("inf")
            cells.append(f"{v:.2f} {unit} ({ratio:.1f}x)" if unit == "s" else
                         f"{v:.1f} ms ({ratio:.1f}x)")  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(ratios: transformers ÷ this arm; > 1 is faster)")


# --- part 2: what the user feels ------------------------------------------------------------------


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_repo(path: Path, model: str) -> Path:
    git(path.parent, "init", "-q", "-b", "main", str(path))
    for k, v in (("user.name", "Ada"), ("user.email", "ada@example.com"), ("cmc.model", model),
                 ("cmc.timeout", "60")):  # fmt: skip
        git(path, "config", k, v)
    (path / "parser.py").write_text("def parse(text):\n    return text.split()\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "Add a parser for configuration files")
    return path


def stage_change(repo: Path, i: int) -> None:
    (repo / "parser.py").write_text(
        f"def parse(text):\n    if not text:\n        return []  # {i}\n    return text.split()\n"
    )
    git(repo, "add", "parser.py")


CMC: list[str] = [str(BIN / "cmc")]  # part 2's cmc: a user's install of this tree (user_install)


def user_install(tmp: Path) -> list[str]:
    """This tree installed as a user has it (a regular, not an editable, install) in a fresh
    virtualenv that takes its dependencies from this one: an editable install puts an import hook
    in every Python start (~28 ms here, measured), which users of `pip install`/pipx do not pay."""
    import sysconfig

    venv = tmp / "user-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    (site / "dev-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    import shutil

    shutil.rmtree(ROOT / "build", ignore_errors=True)  # an in-tree build reuses what it finds there
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(ROOT)], check=True,
                   capture_output=True)  # fmt: skip
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    # -P: never the source tree of the folder it runs from (cmc.training lives in training/ there)
    return [str(venv / "bin" / "python"), "-P", "-m", "cmc.cli"]


def cold_complete(repo: Path, env: dict, reps: int) -> list[float]:
    out = []
    for i in range(reps):
        stage_change(repo, i)
        t = time.perf_counter()
        subprocess.run([*CMC, "complete", "--prefix", "Fix"], cwd=repo, env=env,
                       check=True, capture_output=True)  # fmt: skip
        out.append(time.perf_counter() - t)
    return out


def with_daemon(env: dict, sock: Path):
    from cmc.client import request

    proc = subprocess.Popen([*CMC, "serve", "--idle-timeout", "600"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while request({"op": "ping"}, 0.5, sock) is None:
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit("the daemon did not start")
        time.sleep(0.1)
    return proc


def warm_hook(repo: Path, env: dict, reps: int, sock: Path | None = None) -> list[float]:
    """The hook on a new staged change each time; with ``sock``, only once the daemon has
    prefetched its answer (the user's pause between `git add` and `git commit`)."""
    from cmc.client import request

    hook = repo / ".git" / "hooks" / "prepare-commit-msg"
    msg = repo / ".git" / "COMMIT_EDITMSG"
    out = []
    for i in range(reps + 1):
        before = request({"op": "ping"}, 5, sock)["prefetched"] if sock and i else None
        stage_change(repo, (200 if sock else 100) + i)
        if before is not None:
            deadline = time.time() + 60
            while request({"op": "ping"}, 5, sock)["prefetched"] == before:
                if time.time() > deadline:
                    raise SystemExit("the daemon did not prefetch")
                time.sleep(0.05)
        msg.write_text("\n# Please enter the commit message for your changes.\n")
        t = time.perf_counter()
        subprocess.run([str(hook), str(msg)], cwd=repo, env={**env, "GIT_EDITOR": "vi"},
                       check=True, capture_output=True)  # fmt: skip
        if i:  # the first one loads the model into the daemon
            out.append(time.perf_counter() - t)
        assert msg.read_text().strip(), "the hook suggested nothing"
    return out


def keystrokes(repo: Path, sock: Path) -> tuple[list[float], list[float]]:
    """Latency of each keystroke's request; and of those the model had to run for."""
    from cmc.client import request
    from cmc.decoding import KEYSTROKE
    from cmc.protocol import CompleteRequest
    from cmc.settings import Settings

    stage_change(repo, 999)
    settings = Settings.load(repo, repo / ".git")
    all_ms, ran_ms = [], []
    for n in range(0, len(MESSAGE) + 1):
        req = CompleteRequest(str(repo), MESSAGE[:n], settings, KEYSTROKE).to_json()
        t = time.perf_counter()
        reply = request(req, 60, sock)
        dt = time.perf_counter() - t
        assert reply and reply.get("ok"), reply
        if n:  # the first builds the context of the staged change
            all_ms.append(dt)
            if reply["reused_tokens"] != -1:
                ran_ms.append(dt)
    return all_ms, ran_ms


def part2(model: str, reps: int, loads: list[bool], tmp: Path) -> None:
    CMC[:] = user_install(tmp)
    results: dict[tuple[str, bool], dict] = {}
    arms = {
        "numpy products (OpenBLAS)": ("numpy", "1", {"CMC_MATMUL": "numpy"}),
        "onnxruntime int8 (default)": ("numpy", "1", {}),
        "onnxruntime int8, 2 threads": ("numpy", "2", {}),
        "transformers": ("transformers", "1", {}),
    }
    for loaded in loads:
        for i, (name, (runtime, threads, extra)) in enumerate(arms.items()):
            work = tmp / f"p2-{i}-{int(loaded)}"
            work.mkdir()
            repo = make_repo(work / "repo", model)
            sock = work / "run" / "cmc.sock"
            env = {**os.environ, "CMC_RUNTIME": runtime, "CMC_SOCKET": str(sock),
                   "CMC_THREADS": threads, "PATH": f"{BIN}:{os.environ['PATH']}", **extra}  # fmt: skip
            env.pop("OPENBLAS_NUM_THREADS", None)
            env.pop("CMC_DISABLE", None)
            subprocess.run([*CMC, "hook", "install"], cwd=repo, env=env, check=True,
                           capture_output=True)  # fmt: skip
            with busy(loaded):
                cold = cold_complete(repo, {**env, "CMC_NO_DAEMON": "1"}, reps)
                env.pop("CMC_NO_DAEMON", None)
                daemon = with_daemon(env, sock)
                try:
                    hook = warm_hook(repo, env, reps)
                    ready = warm_hook(repo, env, reps, sock) if runtime == "numpy" else []
                    keys, ran = keystrokes(repo, sock)
                finally:
                    os.killpg(daemon.pid, signal.SIGKILL)
            results[(name, loaded)] = {"cold": med(cold), "hook": med(hook),
                                          "ready": med(ready) if ready else 0.0,
                                          "key_med": med(keys), "key_p95": p95(keys),
                                          "ran_med": med(ran) if ran else 0.0,
                                          "ran_n": len(ran), "keys_n": len(keys)}  # fmt: skip
    print(f"\n## Part 2: what the user feels ({reps} cold runs, {reps} hook runs, "
          f"{len(MESSAGE)} keystrokes typing a {len(MESSAGE)}-character message)")  # fmt: skip
    print("| runtime | load | cold `cmc complete` | warm hook | hook, answer prefetched | "
          "keystroke median | keystroke p95 | keystrokes that ran the model: median |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for (runtime, loaded), r in results.items():
        base = results[("transformers", loaded)]

        def cell(key: str, r=r, base=base) -> str:
            if not r[key]:
                return "–"
            ratio = (
                f" ({base[key] / r[key]:.1f}x)" if base[key] else f" ({base['hook'] / r[key]:.1f}x)"
            )
            return f"{r[key] * 1000:.0f} ms{ratio}"

        print(f"| {runtime} | {'busy' if loaded else 'idle'} | {cell('cold')} | {cell('hook')} | "
              f"{cell('ready')} | "
              f"{cell('key_med')} | {cell('key_p95')} | {cell('ran_med')} "
              f"({r['ran_n']}/{r['keys_n']}) |")  # fmt: skip
    if len(loads) == 2:
        for runtime in arms:
            idle, hot = results[(runtime, False)], results[(runtime, True)]
            print(f"{runtime}: busy ÷ idle: cold {hot['cold'] / idle['cold']:.2f}x, hook "
                  f"{hot['hook'] / idle['hook']:.2f}x, keystroke median "
                  f"{hot['key_med'] / idle['key_med']:.2f}x, p95 "
                  f"{hot['key_p95'] / idle['key_p95']:.2f}x")  # fmt: skip


# --- part 3: room for a larger model --------------------------------------------------------------


def part3(model: str, reps: int, tmp: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cmc.decoding.beam import PromptCache, beam_search
    from cmc.model import load_model

    small = load_model(model, "transformers")
    big_dir = tmp / "llama-40m"
    cfg = LlamaConfig(vocab_size=len(small.tokenizer), hidden_size=512, intermediate_size=1408,
                      num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=8,
                      max_position_embeddings=1024, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(big_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (big_dir / name).write_bytes((Path(model) / name).read_bytes())
    big = load_model(str(big_dir), "numpy")
    ids, start = real_prompt_ids(small.tokenizer, small.budget)
    never = -1  # no end token: exactly 24 new tokens on both

    def once(lm) -> float:
        t = time.perf_counter()
        beam_search(lm.model, ids, start, [], 5, 24, never, PromptCache())
        return time.perf_counter() - t

    # interleaved, so that a slow spell of this (shared, virtual) machine hits both arms alike
    once(small), once(big)
    pairs = [(once(small), once(big)) for _ in range(reps)]
    t_small, t_big = med([a for a, _ in pairs]), med([b for _, b in pairs])
    ratios = sorted(a / b for a, b in pairs)
    print(f"\n## Part 3: a {big.model.num_parameters / 1e6:.0f}M random Llama on numpy vs the "
          f"shipped {small.model.num_parameters / 1e6:.0f}M on transformers (beam 5, 24 tokens, "
          f"{len(ids)}-token prompt, prefill included)")  # fmt: skip
    print(f"numpy {big.model.num_parameters / 1e6:.0f}M: {t_big * 1000:.0f} ms; transformers "
          f"{small.model.num_parameters / 1e6:.0f}M: {t_small * 1000:.0f} ms; "
          f"ratio {t_small / t_big:.2f}x (> 1: the larger model is faster); "
          f"{reps} interleaved pairs, ratios {ratios[0]:.2f}–{ratios[-1]:.2f}x")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "cmc" / "default_model"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-busy", action="store_true")
    ap.add_argument("--no-ct2", action="store_true")
    ap.add_argument("--parts", default="123")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    loads = [False] if args.no_busy else [False, True]
    print(f"machine: {os.cpu_count()} cores; model {args.model}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "1" in args.parts:
            for loaded in loads:
                (tmp / f"p1-{int(loaded)}").mkdir()
                part1(args.model, args.reps, loaded, not args.no_ct2, tmp / f"p1-{int(loaded)}")
        if "2" in args.parts:
            part2(args.model, args.reps, loads, tmp)
        if "3" in args.parts:
            part3(args.model, max(4, args.reps), tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
