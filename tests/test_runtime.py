"""The numpy runtime is pinned to transformers: same logits, same candidates, same token ids.

Real models: the bundled one, tiny random Llamas built here in the shapes the numpy runtime must
handle (grouped-query attention, biases, an untied head, bf16 and sharded weights), and a GPT-2 for
the transformers fallback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmc import CmcError
from cmc.decoding import KEYSTROKE, DecodeSettings
from cmc.decoding.beam import PromptCache, TokenTable, generate_candidates
from cmc.diffs import Mod, process_diff
from cmc.model import load_model, load_tokenizer
from cmc.prompt import build_prompt, split_typed
from cmc.runtime.tokenizer import LeanTokenizer
from cmc.settings import BUNDLED_MODEL

ROOT = Path(__file__).resolve().parent.parent


def real_diffs(n: int) -> list[str]:
    """Diffs of this project's own source files, as if each were added: real code, no fixture."""
    files = sorted((ROOT / "cmc").rglob("*.py"))[:n]
    out = []
    for f in files:
        lines = f.read_text().splitlines()[:60]
        raw = f"@@ -0,0 +1,{len(lines)} @@\n" + "".join(f"+{line}\n" for line in lines)
        out.append(process_diff([Mod("ADD", None, str(f.relative_to(ROOT)), raw)]))
    return out


def copy_files(source: Path, target: Path, *names: str) -> None:
    for name in names:
        (target / name).write_bytes((source / name).read_bytes())


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def random_llama(path: Path, tokenizer_from: Path, dtype=torch.float32, shard: bool = False, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = LeanTokenizer(tokenizer_from)
    cfg = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, rms_norm_eps=1e-5,
    )  # fmt: skip
    cfg.update(kw)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(dtype)
    with torch.no_grad():  # biases start at zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, max_shard_size="100KB" if shard else "5GB")
    copy_files(tokenizer_from, path, *TOKENIZER_FILES)
    return path


def both(spec: str, precision: str = "float32", engine: str | None = None):
    """The model on cmc's runtime (float32 unless asked) and on transformers."""
    from cmc.model import LoadedModel
    from cmc.runtime.llama import NumpyLlama

    ref = load_model(spec, "transformers")
    lean = NumpyLlama(spec, precision, engine)
    return LoadedModel(spec, lean, LeanTokenizer(spec), ref.budget), ref


def test_bundled_model_runs_without_torch_or_transformers(tmp_path):
    """A cold completion imports neither (they are most of the cold start)."""
    code = (
        "import sys; from cmc.model import load_model; from cmc.complete import Context, "
        "complete_context; lm = load_model(sys.argv[1]); "
        "r = complete_context(lm, Context('a.py\\n+print(1)', []), 'Add', "
        "__import__('cmc.decoding', fromlist=['x']).KEYSTROKE); "
        "print(lm.model.kind, 'torch' in sys.modules, 'transformers' in sys.modules, bool(r.candidates))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(BUNDLED_MODEL)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "False", "False", "True"]


def test_lean_tokenizer_gives_the_same_ids_as_transformers():
    from transformers import AutoTokenizer

    lean = LeanTokenizer(BUNDLED_MODEL)
    full = AutoTokenizer.from_pretrained(str(BUNDLED_MODEL))
    texts = [*real_diffs(6), "Fix ünïcödé 😀 <|msg|> and <|endoftext|>", "  spaces\t\n"]
    for text in texts:
        assert lean.encode(text, add_special_tokens=False) == full.encode(
            text, add_special_tokens=False
        )
        ids = full.encode(text, add_special_tokens=False)
        assert lean.decode(ids) == full.decode(ids)
    assert lean.eos_token_id == full.eos_token_id and len(lean) == len(full)
    assert sorted(lean.all_special_ids) == sorted(full.all_special_ids)
    assert TokenTable(lean).bytes == TokenTable(full).bytes
    for typed in ["", "Fix the bu", "Add support for"]:
        head, _ = split_typed(typed)
        a = build_prompt(lean, texts[0], ["Add tests"], head, finished=False)
        b = build_prompt(full, texts[0], ["Add tests"], head, finished=False)
        assert a == b


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"num_key_value_heads": 2},  # grouped-query attention
        {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True},
        {"tie_word_embeddings": False, "head_dim": 32},
        {"rope_theta": 500.0},
    ],
    ids=["plain", "gqa", "mqa-bias", "untied-headdim", "rope-theta"],
)
@pytest.mark.parametrize("engine", ["onnxruntime", "numpy"])
def test_numpy_logits_equal_transformers(tmp_path, shape, engine):
    """On both engines of the weight products (`cmc.runtime.linear`), float32."""
    path = random_llama(tmp_path / "m", BUNDLED_MODEL, **shape)
    lean, ref = both(str(path), engine=engine)
    ids = lean.tokenizer.encode("\n".join(real_diffs(6)), add_special_tokens=False)[:300]
    assert len(ids) == 300
    s1, l1 = lean.model.prefill(None, ids[:200])
    s1, l1 = lean.model.prefill(s1, ids[200:])  # extending a state = prefilling it all at once
    s2, l2 = ref.model.prefill(None, ids)
    _, l3 = lean.model.prefill(None, ids)
    np.testing.assert_allclose(l1, l2, atol=1e-4)
    np.testing.assert_allclose(l1, l3, atol=1e-5)
    b1, b2 = lean.model.beams(s1, 8), ref.model.beams(s2, 8)
    orders = [[0, 0, 0], [2, 0, 1], [1, 1, 2], [0, 2]]  # beams reordered, duplicated, dropped
    for step, order in enumerate(orders):
        tokens = np.arange(len(order)) + 10 * step + 5
        got = lean.model.step(b1, np.array(order), tokens)
        want = ref.model.step(b2, np.array(order), tokens)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_bf16_and_sharded_weights_load(tmp_path):
    path = random_llama(tmp_path / "bf16", BUNDLED_MODEL, dtype=torch.bfloat16, shard=True)
    assert (path / "model.safetensors.index.json").is_file()
    lean, ref = both(str(path))
    ids = list(range(50, 120))
    np.testing.assert_allclose(
        lean.model.prefill(None, ids)[1], ref.model.prefill(None, ids)[1], atol=1e-3
    )
    assert lean.model.num_parameters == ref.model.num_parameters


def real_prompt_candidates(lm, decodes=None):
    """The candidates of ``lm`` on 24 real prompts (8 diffs x typed "", "Add the", "Fix ha")."""
    history = ["Add the daemon's socket checks", "Fix the hook on a detached HEAD"]
    out = []
    for diff in real_diffs(8):
        for typed, decode in [
            ("", DecodeSettings(num_candidates=3)),
            ("Add the", DecodeSettings(num_candidates=3)),
            ("Fix ha", KEYSTROKE),
        ]:
            head, _ = split_typed(typed)
            prompt = build_prompt(lm.tokenizer, diff, history, head, finished=False,
                                  budget=lm.budget)  # fmt: skip
            found = generate_candidates(lm.model, lm.tokenizer, prompt, typed, decode,
                                        PromptCache())  # fmt: skip
            out.append(found)
    return out


@pytest.mark.slow
def test_bundled_model_candidates_equal_on_real_prompts():
    """Same candidates (text and order), scores within float noise, on the product's settings."""
    lean, ref = both(str(BUNDLED_MODEL))
    got, want = real_prompt_candidates(lean), real_prompt_candidates(ref)
    assert len(got) == 24
    for a, b in zip(got, want, strict=True):
        assert [c.message for c in a] == [c.message for c in b]
        assert [c.score for c in a] == pytest.approx([c.score for c in b], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8", "int8w"])
def test_int8_products_keep_float32s_next_tokens(precision):
    """int8 products change some words, and which ones depends on the CPU's int8 kernels (x86
    without VNNI quantizes weights to 7 bits; suggestions can differ slightly between CPUs). What
    does not: on 48 real prompts, teacher-forced through three messages (336 positions), the most
    likely next token agrees with float32's (measured 97.6% on an AVX2-only CPU, the 7-bit case;
    8 bits only come closer) and the logits correlate (min 0.9991 there). A broken quantization
    (scales, layout) fails both. int8w (int8 weights and activations per block of 32 inputs, the
    embedding int8 per row) holds to the same bounds."""
    from cmc.model import read_budget
    from cmc.runtime.llama import NumpyLlama

    f32 = NumpyLlama(str(BUNDLED_MODEL), "float32", "onnxruntime")
    i8 = NumpyLlama(str(BUNDLED_MODEL), precision, "onnxruntime")
    tok, budget = LeanTokenizer(BUNDLED_MODEL), read_budget(BUNDLED_MODEL)
    history = ["Add the daemon's socket checks", "Fix the hook on a detached HEAD"]
    messages = ["Add the runtime's int8 products", "Fix the parser on empty files",
                "Remove the old client"]  # fmt: skip
    agree, total, correlations = 0, 0, []
    for diff in real_diffs(16):
        for message in messages:
            prompt = build_prompt(tok, diff, history, message, finished=True, budget=budget)
            ids, start = prompt.input_ids, prompt.message_start
            (sa, la), (sb, lb) = f32.prefill(None, ids[:start]), i8.prefill(None, ids[:start])
            for token in ids[start:]:
                agree += int(np.argmax(la) == np.argmax(lb))
                total += 1
                correlations.append(np.corrcoef(la, lb)[0, 1])
                (sa, la), (sb, lb) = f32.prefill(sa, [token]), i8.prefill(sb, [token])
    assert total > 300
    assert agree / total >= 0.93, (agree, total)
    assert min(correlations) >= 0.995, min(correlations)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("precision", ["float32", "int8", "int8w"])
def test_a_loaded_model_keeps_no_map_of_its_weights_file(precision):
    """What the model keeps must be its own arrays, not views of its weights file, or the whole
    file stays resident (the base: 540 MB of a daemon's memory). In a fresh process: other
    tests' torch loads map the same file."""
    code = f"""
import gc
from pathlib import Path
import numpy as np
from cmc.runtime.llama import NumpyLlama
model = NumpyLlama({str(BUNDLED_MODEL)!r}, {precision!r}, "onnxruntime")
gc.collect()
assert "model.safetensors" not in Path("/proc/self/maps").read_text()
if {precision!r} == "int8w":  # the embedding table too is int8, a scale per row
    assert model.embed is None and model._embed_q.dtype == np.int8
assert model.prefill(None, [1, 2, 3])[1].shape == (model.vocab_size,)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_int8_candidates_keep_the_typed_text():
    fast, _ = both(str(BUNDLED_MODEL), "int8", "onnxruntime")
    typed = ["", "Add the", "Fix ha"] * 8
    found = real_prompt_candidates(fast)
    assert all(
        c.message.startswith(t) for t, cands in zip(typed, found, strict=True) for c in cands
    )
    assert all(found)


def tiny_gpt2(path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = LeanTokenizer(BUNDLED_MODEL)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=1024,
                     eos_token_id=tok.eos_token_id)  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(path)
    copy_files(BUNDLED_MODEL, path, *TOKENIZER_FILES)
    return path


def test_other_architectures_fall_back_to_transformers(tmp_path):
    path = tiny_gpt2(tmp_path / "gpt2")
    lm = load_model(str(path))
    assert lm.model.kind == "transformers"
    from cmc.complete import Context, complete_context

    result = complete_context(lm, Context("a.py\n+x = 1", []), "Add", KEYSTROKE)
    assert result.typed == "Add" and all(c.message.startswith("Add") for c in result.candidates)
    with pytest.raises(CmcError, match="cannot run on the numpy runtime: architecture GPT2"):
        load_model(str(path), "numpy")


def test_runtime_choice_and_broken_weights_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("CMC_RUNTIME", "tensorflow")
    with pytest.raises(CmcError, match="CMC_RUNTIME='tensorflow'"):
        load_model(str(BUNDLED_MODEL))
    monkeypatch.delenv("CMC_RUNTIME")
    from cmc.model import runtime_for

    assert runtime_for(str(BUNDLED_MODEL)).endswith("on onnxruntime, int8)")  # the default
    monkeypatch.setenv("CMC_PRECISION", "int4")
    with pytest.raises(CmcError, match="CMC_PRECISION='int4': use one of float32, int8, int8w"):
        load_model(str(BUNDLED_MODEL))
    monkeypatch.setenv("CMC_PRECISION", "float32")
    assert runtime_for(str(BUNDLED_MODEL)).endswith("on onnxruntime, float32)")
    assert load_model(str(BUNDLED_MODEL)).model.precision == "float32"
    monkeypatch.delenv("CMC_PRECISION")
    assert load_model(str(BUNDLED_MODEL)).model.precision == "int8"
    broken = tmp_path / "broken"
    broken.mkdir()
    copy_files(BUNDLED_MODEL, broken, "config.json", *TOKENIZER_FILES)
    header = b"{not json"
    (broken / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CmcError, match=r"cannot load model .*corrupt header") as exc:
        load_model(str(broken))
    assert "\n" not in str(exc.value)
    tok, budget = load_tokenizer(str(BUNDLED_MODEL))
    assert isinstance(tok, LeanTokenizer) and budget.diff_tokens > 0
    assert json.loads((BUNDLED_MODEL / "config.json").read_text())["model_type"] == "llama"


def test_without_torch_installed_cmc_completes_and_says_what_other_models_need(tmp_path):
    """The core install has no torch: the bundled model completes; a GPT-2 says which extra."""
    from conftest import cmc_env, init_repo

    repo = init_repo(tmp_path / "repo")
    (repo / "parser.py").write_text("def parse(text):\n    return text.split()\n")
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    gpt2 = tiny_gpt2(tmp_path / "gpt2")
    no_torch = (
        "import sys; sys.modules['torch'] = sys.modules['transformers'] = None; "
        "from cmc.cli import main; sys.argv = ['cmc', *sys.argv[1:]]; main()"
    )

    def cmc(*args):
        return subprocess.run([sys.executable, "-c", no_torch, *args], cwd=repo, env=cmc_env(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    ok = cmc("complete", "--prefix", "Add", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["candidates"][0]["message"].startswith("Add")
    other = cmc("complete", "--prefix", "Add", "--model", str(gpt2))
    assert other.returncode == 1 and other.stdout == ""
    assert other.stderr.count("\n") == 1 and "needs torch and transformers" in other.stderr
    assert "architecture GPT2LMHeadModel" in other.stderr and "cmc[transformers]" in other.stderr


def test_an_export_check_that_failed_keeps_the_model_on_transformers(tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL, model)
    meta = json.loads((model / "cmc.json").read_text())
    meta["runtime"] = {"name": "transformers", "why": "numpy logits differ by 0.5"}
    (model / "cmc.json").write_text(json.dumps(meta))
    lm = load_model(str(model))
    assert lm.model.kind == "transformers"
    del meta["runtime"]
    (model / "cmc.json").write_text(json.dumps(meta))
    assert load_model(str(model) + "/").model.kind == "numpy"
