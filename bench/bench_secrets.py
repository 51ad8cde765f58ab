"""Secret masking: recall and false positives on the test corpus, on a corpus written by someone
else (detect-secrets' own plugin tests), what it touches in real diffs, and its speed.

    python bench/bench_secrets.py [--rows 5000] [--show 40] [--detect-secrets CHECKOUT]

With ``--detect-secrets`` (a checkout of Yelp/detect-secrets; its package and pytest installed),
every ``(payload, should_flag)`` case of its plugin tests and every ``*_TEST_CASES`` line of its
keyword tests is a case: recall = share of its secrets where cmc masked something. (Its negatives
are printed, not scored: they test detect-secrets' own regexes — a key of the wrong length, a
quote style — and masking them does no harm here.) Speed: a real 2,000-line diff masked whole,
and as the hook masks it (cut to the 24,000 characters of the prompt's budget first).

Corpus (tests/secret_corpus.py): recall = share of secrets no longer present after masking,
false positives = share of look-alikes changed. Real diffs: rows sampled from every repository of
../shared/data/commits (train, validation and test), raw hunks as git prints them; prints the share
of diffs and of added/removed lines in which anything was masked (an upper bound on the
false-positive rate: what was masked there is listed for review), and the throughput.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "commits"


def detect_secrets_cases(checkout: Path) -> list[tuple[str, str, bool]]:
    """(source, text, is a secret) from detect-secrets' plugin tests."""
    import importlib.util
    import inspect

    sys.path.insert(0, str(checkout))
    cases: list[tuple[str, str, bool]] = []
    for f in sorted((checkout / "tests" / "plugins").glob("*_test.py")):
        spec = importlib.util.spec_from_file_location(f.stem, f)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a test module needing what is not installed
            print(f"  (skipped {f.name}: {exc})")
            continue
        found = [
            o for _, o in inspect.getmembers(module) if inspect.isfunction(o) or inspect.isclass(o)
        ]
        found += [
            v
            for o in found
            if inspect.isclass(o)
            for _, v in inspect.getmembers(o, inspect.isfunction)
        ]
        for obj in found:
            for mark in getattr(obj, "pytestmark", []):
                if mark.name != "parametrize":
                    continue
                names = [
                    n.strip()
                    for n in (
                        mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0]
                    )
                ]
                for values in mark.args[1]:
                    values = getattr(values, "values", values)
                    row = dict(
                        zip(names, values if isinstance(values, (tuple, list)) else (values,))
                    )
                    text, flag = row.get("payload", row.get("line")), row.get("should_flag")
                    if isinstance(text, str) and isinstance(flag, bool):
                        cases.append((f.stem, text, flag))
        for name, value in inspect.getmembers(module):
            if name.endswith("_TEST_CASES") and isinstance(value, list):
                cases += [(f.stem, t, s is not None) for t, s in value if isinstance(t, str)]
    seen: set = set()
    return [c for c in cases if (c[1], c[2]) not in seen and not seen.add((c[1], c[2])) and len(c[1]) < 5000]  # fmt: skip


def noseyparker(checkout: Path, mask) -> tuple[int, int, int, int]:
    """Recall on the ``examples`` of Nosey Parker's built-in rules (written by others, read from
    its checkout at bench time, never copied): the share where cmc masked something."""
    import yaml

    rules = []
    for f in sorted((checkout / "crates/noseyparker/data/default/builtin/rules").glob("*.yml")):
        rules += yaml.safe_load(f.read_text()).get("rules") or []
    examples = [e for r in rules for e in r.get("examples") or []]
    negatives = [e for r in rules for e in r.get("negative_examples") or []]
    return (sum(mask(e) != e for e in examples), len(examples),
            sum(mask(e) != e for e in negatives), len(negatives))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--show", type=int, default=40)
    ap.add_argument("--detect-secrets", type=Path, help="a checkout of Yelp/detect-secrets")
    ap.add_argument("--noseyparker", type=Path, help="a checkout of praetorian-inc/noseyparker")
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import pyarrow.parquet as pq
    import secret_families
    from secret_corpus import negatives, positives

    from cmc.secrets import MASK, mask_secrets

    fpos, fneg = secret_families.positives(), secret_families.negatives()
    fmissed = [(f, t) for f, t, s in fpos if s in mask_secrets(t)]
    print(f"second corpus (families): {len(fpos)} secrets, recall "
          f"{100 * (1 - len(fmissed) / len(fpos)):.1f}%; {len(fneg)} look-alikes, "
          f"{sum(mask_secrets(t) != t for _, t in fneg)} changed")  # fmt: skip
    if args.noseyparker:
        caught, total, neg_changed, negs = noseyparker(args.noseyparker, mask_secrets)
        print(f"Nosey Parker's rule examples: {total} secrets, recall {100 * caught / total:.1f}%; "
              f"of its {negs} negative examples (some are secrets its rules miss) cmc masks "
              f"{neg_changed}")  # fmt: skip
    pos, neg = positives(), negatives()
    missed = [(f, t) for f, t, s in pos if s in mask_secrets(t)]
    changed = [(f, t) for f, t in neg if mask_secrets(t) != t]
    families = len({f for f, _, _ in pos})
    print(f"corpus: {len(pos)} secrets in {families} families, recall {100 * (1 - len(missed) / len(pos)):.1f}%; "
          f"{len(neg)} look-alikes, false positives {100 * len(changed) / len(neg):.1f}%")  # fmt: skip
    for f, t in missed:
        print(f"  missed {f}: {t[:100]!r}")
    if args.detect_secrets:
        cases = detect_secrets_cases(args.detect_secrets)
        secrets = [(s, t) for s, t, flag in cases if flag]
        caught = [(s, t) for s, t in secrets if mask_secrets(t) != t]
        print(f"detect-secrets' plugin tests: {len(secrets)} secrets, recall "
              f"{100 * len(caught) / len(secrets):.1f}%; of its {len(cases) - len(secrets)} "
              f"non-secrets cmc masks {sum(mask_secrets(t) != t for _, t, f in cases if not f)}")  # fmt: skip
        for s, t in secrets:
            if mask_secrets(t) == t:
                print(f"  missed {s}: {t[:100]!r}")

    files = sorted(DATA.glob("*/*.parquet"))
    rng = random.Random(0)
    per_file = max(1, args.rows // len(files))
    diffs = []
    for f in files:
        table = pq.read_table(f, columns=["mods"]).to_pylist()
        for row in rng.sample(table, min(per_file, len(table))):
            diffs.append("\n".join(m["diff"] or "" for m in row["mods"]))
    started = time.perf_counter()
    masked = [mask_secrets(d) for d in diffs]
    elapsed = time.perf_counter() - started
    touched_diffs, lines, touched_lines, examples = 0, 0, 0, []
    for before, after in zip(diffs, masked):
        if before == after:
            lines += sum(1 for ln in before.split("\n") if ln[:1] in "+-")
            continue
        touched_diffs += 1
        for a, b in zip(before.split("\n"), after.split("\n")):
            if a[:1] in "+-":
                lines += 1
                if a != b:
                    touched_lines += 1
                    examples.append(b.strip()[:140])
    mb = sum(len(d) for d in diffs) / 1e6
    print(
        f"real diffs: {len(diffs)} from {len(files)} repositories, {mb:.1f} MB, {mb / elapsed:.1f} MB/s"
    )
    print(f"  diffs with anything masked: {touched_diffs} ({100 * touched_diffs / len(diffs):.2f}%); "
          f"changed lines {touched_lines} of {lines} ({100 * touched_lines / max(1, lines):.3f}%)")  # fmt: skip
    for line in rng.sample(examples, min(args.show, len(examples))):
        print("   ", line.replace(MASK, "▇"))
    big = max(diffs, key=lambda d: d.count("\n"))
    lines2000 = "\n".join(big.split("\n")[:2000])
    if lines2000.count("\n") >= 1999:
        times = []
        for _ in range(20):
            started = time.perf_counter()
            mask_secrets(lines2000)
            times.append(time.perf_counter() - started)
        budget = lines2000[:24_000]
        cut = []
        for _ in range(20):
            started = time.perf_counter()
            mask_secrets(budget)
            cut.append(time.perf_counter() - started)
        print(f"a 2,000-line real diff ({len(lines2000) / 1e3:.0f} KB): {1000 * sorted(times)[10]:.1f} ms "
              f"masked whole; {1000 * sorted(cut)[10]:.1f} ms as the hook masks it (its first 24,000 "
              f"characters, the prompt's budget)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
