"""Suggestions a user can accept without checking: how many state what the change does not
support, or degenerate text, with and without `cmc.specifics`' decoder constraint.

    python bench/bench_trust.py --data DATA --repos SNAPSHOTS [--limit 600] [--model M [--decider K]]

`cmc eval` on the test repositories, history on, 0 / 25 / 50% typed, per arm (each resumes from
its own predictions): the bundled model with the constraint off (cmc before it), with it on, and
with it on and the typed word finished from the diff's names (`cmc.copying`), with it on and the
repository memory: its votes while decoding (`cmc.knn`), its messages chosen beside the model's
(`cmc.recalled`), both, and both with the copying (shipped); for a model with the prompt's recall
section (``--model``), also the memory in the prompt alone; with ``--decider`` (the keystroke
model beside ``--model`` as the message model) the two-model stage as the hook runs it; with
``--judge FOLDER``, also the bundled model as shipped (resumed from FOLDER) and the one rule's
verdict (`cmc.training.evaluate.not_better`) on the shipped arm. Prints B-Norm and EM@1 and the shares
(%) of suggestions with an unsupported specific, a repeated word, a doubled suffix or path, a CI
marker the author does not use; and of the real messages with an unsupported specific.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL = frozenset({"prefix", "nearest", "infix"})
THREE = {"nearest": 3, "prefix": 3, "infix": 2}  # cmc.recalled.PER_KIND
EIGHT = {"nearest": 8, "prefix": 8, "infix": 2}
SHIPPED = {"nearest": 3, "prefix": 8, "infix": 2}
ARMS = {  # name: (folder, constraint on, what the memory offers (cmc.recalled.OFFERED) or None
    #       for no memory, the memory's votes while decoding (cmc.knn) on, the typed word finished
    #       from the diff's names (cmc.copying) on, the memory's suggestions per kind the chooser
    #       weighs (cmc.recalled.PER_KIND))
    "model, no constraint (before)": ("model-no-constraint", False, None, False, False, THREE),
    "model + constraint": ("model+constraint", True, None, False, False, THREE),
    "+ the diff's names for the typed word only (copying)": (
        "model+constraint+copy", True, None, False, True, THREE
    ),
    "+ the memory's votes only (kNN)": ("model+constraint+votes", True, frozenset(), True, False, THREE),
    "+ the memory's messages, chosen (before the votes)": (
        "model+constraint+memory", True, ALL, False, False, THREE
    ),
    "+ the memory in the prompt only (a model with the recall section)": (
        "model+constraint+prompt", True, frozenset(), False, False, THREE
    ),
    "+ the memory's messages and votes (before copying)": (
        "model+constraint+memory+votes", True, ALL, True, False, THREE
    ),
    "+ the memory's messages and votes + copying (three of each kind chosen from)": (
        "model+constraint+memory+votes+copy", True, ALL, True, True, THREE
    ),
    "+ the memory's messages and votes + copying, eight of each kind": (
        "model+constraint+memory8+votes+copy", True, ALL, True, True, EIGHT
    ),
    "+ the memory's messages and votes + copying, eight continuing the typed text (shipped)": (
        "model+constraint+memory+votes+copy+prefix8", True, ALL, True, True, SHIPPED
    ),
}  # fmt: skip
SHIPPED_ARM = (
    "+ the memory's messages and votes + copying, eight continuing the typed text (shipped)"
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="processed data with a test split")
    ap.add_argument("--repos", required=True, help="the test repositories' clones or snapshots")
    ap.add_argument("--limit", type=int, default=600)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-trust")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument(
        "--decider",
        default=None,
        help="keystroke model deciding memory or model with nothing typed",
    )
    ap.add_argument(
        "--judge",
        type=Path,
        default=None,
        help="the bundled model's run folder: judge the shipped arm against it",
    )
    ap.add_argument("--arms", nargs="*", default=None, help="the arms' folder names (default: all)")
    args = ap.parse_args()
    from cmc import copying, knn, recalled, specifics
    from cmc.decoding import DecodeSettings
    from cmc.model import read_budget
    from cmc.settings import BUNDLED_MODEL
    from cmc.training.evaluate import run_eval

    model = args.model or str(BUNDLED_MODEL)
    has_section = read_budget(model).recall_tokens > 0

    settings = DecodeSettings(num_beams=5, max_new_tokens=15)
    rows = []
    real = None
    typed_lambda = copying.TYPED_LAMBDA  # as shipped
    shipped = None
    for name, (folder, constrain, offered, votes, copy, per_kind) in ARMS.items():
        if (args.arms and folder not in args.arms) or (
            folder.endswith("prompt") and not has_section
        ):
            continue
        specifics.CONSTRAIN, knn.ON = constrain, votes
        copying.TYPED_LAMBDA = typed_lambda if copy else 0.0
        recalled.OFFERED = offered or frozenset()
        recalled.PER_KIND = per_kind
        memory = offered is not None
        folder = args.out / folder
        result = run_eval(args.data, model, [0.0, 0.25, 0.5], [True], args.limit,
                          folder, settings=settings, progress=False, resume=True,
                          repos=args.repos if memory else None, decider=args.decider)  # fmt: skip
        shipped = result if name == SHIPPED_ARM else shipped
        s = [result["scores"][f"history@{r:g}"] for r in (0.0, 0.25, 0.5)]
        real = real or " / ".join(f"{x['Unsupported-real']:.1f}" for x in s)

        def cells(metric: str, fmt: str = ".1f", s=s) -> str:
            return " / ".join(f"{x[metric]:{fmt}}" for x in s)

        rows.append(f"| {name} | {cells('B-Norm', '.2f')} | {cells('EM@1')} | {cells('Unsupported')} "
                    f"| {cells('Repeated')} | {cells('Doubled')} | {cells('CI-marker')} |")  # fmt: skip
        print(rows[-1], flush=True)
    print(f"\n{args.limit} test commits, history on; each cell 0 / 25 / 50% typed; shares in %")
    print("| arm | B-Norm | EM@1 | unsupported specific | repeated word | doubled suffix | "
          "CI marker |\n|---|---|---|---|---|---|---|")  # fmt: skip
    print("\n".join(rows))
    print(f"| the real messages | | | {real} | | | |")
    if args.judge and shipped is not None:
        judge(args, settings, shipped, typed_lambda)
    return 0


def judge(args: argparse.Namespace, settings: object, candidate: dict, typed_lambda: float) -> None:
    """The bundled model as shipped on the same commits, and whether ``candidate`` (this run's
    shipped arm) beats it."""
    from cmc import copying, knn, recalled, specifics
    from cmc.settings import BUNDLED_MODEL
    from cmc.training.evaluate import not_better, run_eval

    specifics.CONSTRAIN, knn.ON, recalled.OFFERED = True, True, ALL
    copying.TYPED_LAMBDA, recalled.PER_KIND = typed_lambda, SHIPPED
    folder = args.judge / ARMS[SHIPPED_ARM][0]
    base = run_eval(args.data, str(BUNDLED_MODEL), [0.0, 0.25, 0.5], [True], args.limit, folder,
                    settings=settings, progress=False, resume=True, repos=args.repos)  # fmt: skip
    for name, result in (("bundled model, as shipped", base), ("this run, as shipped", candidate)):
        s = [result["scores"][f"history@{r:g}"] for r in (0.0, 0.25, 0.5)]
        b_norm = " / ".join(format(x["B-Norm"], ".2f") for x in s)
        em = " / ".join(format(x["EM@1"], ".1f") for x in s)
        print(f"{name}: B-Norm {b_norm}, EM@1 {em}")
    reasons = not_better(candidate["scores"], base["scores"])
    print(f"the one rule: {'not better (' + '; '.join(reasons) + ')' if reasons else 'better'}")


if __name__ == "__main__":
    sys.exit(main())
