"""cmc's own beam search (numpy runtime, transformers runtime) vs transformers' `generate`, on the
same model, prompts and processors.

    python bench/bench_decode.py [--rows 12] [--model PATH]

All arms start from the same prompt KV (own: `PromptCache`; generate: `past_key_values=` a deep
copy of the prefix cache, as transformers' docs recommend for prompt reuse, repeated per beam), run
the same logits processors (typed-tail constraint, message-only no-repeat-3-gram), beam 5, 24 new
tokens, 1 thread. Prints per-arm median milliseconds, the ratios, and how many best messages agree
(they must: a test pins the searches to the same hypotheses).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "commits" / "test"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--model", default=str(ROOT / "cmc" / "default_model"))
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import pyarrow.parquet as pq
    import torch
    from generate_adapter import HFProcessor
    from transformers import DynamicCache, LogitsProcessorList

    from cmc.complete import context_from_row
    from cmc.decoding.beam import (
        MessageNoRepeatNGram,
        PromptCache,
        TokenTable,
        TypedTailConstraint,
        beam_search,
    )
    from cmc.model import load_model
    from cmc.prompt import build_prompt, eos_token_id, split_typed

    torch.set_num_threads(1)
    lm = load_model(args.model, "transformers")
    lean = load_model(args.model, "numpy")
    hf_model = lm.model.hf
    files = sorted(DATA.glob("*.parquet"))
    rows = []
    for f in files:
        table = pq.read_table(f, columns=["mods", "message"]).slice(0, 2).to_pylist()
        rows += [r for r in table if r["message"].strip()]
        if len(rows) >= args.rows:
            break
    eos, table = eos_token_id(lm.tokenizer), TokenTable.of(lm.tokenizer)
    own_ms, np_ms, hf_ms, agree, agree_np = [], [], [], 0, 0
    for row in rows[: args.rows]:
        typed = row["message"][: len(row["message"]) // 4]
        head, tail = split_typed(typed)
        ctx = context_from_row({"mods": row["mods"]}, use_history=False)
        prompt = build_prompt(lm.tokenizer, ctx.diff, [], head, finished=False, budget=lm.budget)
        ids, max_new = prompt.input_ids, 24 + len(tail.encode())

        at = len(ids)

        def procs(tail=tail, at=at, start=prompt.message_start):
            return [TypedTailConstraint(table, tail, at), MessageNoRepeatNGram(3, start)]

        cache, np_cache = PromptCache(), PromptCache()
        with torch.inference_mode():  # warm: all arms reuse the prompt KV
            cache.prefill(lm.model, ids, prompt.message_start)
        np_cache.prefill(lean.model, ids, prompt.message_start)
        prefix = DynamicCache()
        with torch.no_grad():  # not inference_mode: its tensors cannot be deep-copied
            hf_model(input_ids=torch.tensor([ids[:-1]]), past_key_values=prefix, use_cache=True)
        for _ in range(2):  # warm-up, then measure
            t = time.perf_counter()
            ours = beam_search(lm.model, ids, prompt.message_start, procs(), 5, max_new, eos, cache)
            own = time.perf_counter() - t
            t = time.perf_counter()
            on_np = beam_search(
                lean.model, ids, prompt.message_start, procs(), 5, max_new, eos, np_cache
            )
            own_np = time.perf_counter() - t
            t = time.perf_counter()
            with torch.no_grad():
                kv = copy.deepcopy(prefix)
                kv.batch_repeat_interleave(5)  # generate wants the prompt's KV once per beam
                out = hf_model.generate(
                    torch.tensor([ids]), past_key_values=kv, num_beams=5,
                    num_return_sequences=1, max_new_tokens=max_new, do_sample=False,
                    logits_processor=LogitsProcessorList([HFProcessor(p) for p in procs()]),
                    eos_token_id=eos, pad_token_id=eos,
                    length_penalty=1.0, early_stopping=False,
                )  # fmt: skip
            hf = time.perf_counter() - t
        own_ms.append(own * 1000)
        np_ms.append(own_np * 1000)
        agree_np += on_np[0][0] == ours[0][0]
        hf_ms.append(hf * 1000)
        theirs = out[0, len(ids) :].tolist()
        theirs = theirs[: theirs.index(eos)] if eos in theirs else theirs
        agree += ours[0][0] == theirs
    own_med, hf_med = statistics.median(own_ms), statistics.median(hf_ms)
    np_med = statistics.median(np_ms)
    n = len(own_ms)
    print(f"prompts: {n} (test repositories, 25% typed), beam 5, ≤24 new tokens, 1 thread")
    print(f"own search, numpy runtime         median {np_med:7.1f} ms")
    print(f"own search, transformers runtime  median {own_med:7.1f} ms")
    print(f"generate(past_kv=…)               median {hf_med:7.1f} ms")
    print(f"ratio generate/own (transformers) {hf_med / own_med:.2f}x   same best: {agree}/{n}")
    print(f"ratio transformers/numpy runtime  {own_med / np_med:.2f}x   same best: {agree_np}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
