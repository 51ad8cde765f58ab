"""What finishing the half-typed word from the change's names (`cmc.copying`) costs a completion.

    python bench/bench_copying.py [--rows 24]

The bundled model, whole completions (`cmc.complete.complete_context`, the constraint on as it
ships, no memory) of test-repository commits typed up to the middle of a word at 25 and 50% of
their message, each run twice with the names off and on, alternating. Prints the
median milliseconds of each arm and their ratio, and how many suggestions the names changed.
Quality: bench/bench_trust.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "commits" / "test"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=24)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import pyarrow.parquet as pq

    from cmc import copying
    from cmc.complete import complete_context, context_from_row
    from cmc.decoding import DecodeSettings
    from cmc.model import load_model
    from cmc.settings import BUNDLED_MODEL

    lm = load_model(str(BUNDLED_MODEL))
    settings = DecodeSettings()
    on_lambda = copying.TYPED_LAMBDA
    cases = []
    for f in sorted(DATA.glob("*.parquet")):
        for row in pq.read_table(f, columns=["mods", "message"]).slice(0, 4).to_pylist():
            message = row["message"].split("\n", 1)[0]
            for share in (0.25, 0.5):
                typed = message[: int(len(message) * share)]
                if typed[-1:].isalnum() and message[len(typed) : len(typed) + 1].isalnum():
                    cases.append((row, typed))
        if len(cases) >= args.rows:
            break
    cases = cases[: args.rows]
    times: dict[str, list[float]] = {"off": [], "on": []}
    changed = 0
    for row, typed in cases:
        best = {}
        for arm in ("off", "on", "off", "on"):  # alternating: a busy moment hits both
            copying.TYPED_LAMBDA = on_lambda if arm == "on" else 0.0
            context = context_from_row({"mods": row["mods"]}, use_history=False)
            started = time.perf_counter()
            result = complete_context(lm, context, typed, settings)
            times[arm].append((time.perf_counter() - started) * 1000)
            best[arm] = result.candidates[0].message if result.candidates else ""
        changed += best["off"] != best["on"]
    copying.TYPED_LAMBDA = on_lambda
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"{len(cases)} completions typed to the middle of a word (test repositories), beam 5")
    print(f"names off  median {off:7.1f} ms")
    print(f"names on   median {on:7.1f} ms")
    print(f"ratio on/off {on / off:.3f}x; suggestions changed by the names: {changed}/{len(cases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
