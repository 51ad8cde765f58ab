"""The training side of cmc (mining, processing, training, evaluation), behind the ``[train]`` extra.

The hook, `cmc complete`, the daemon and the language server never import it.
"""

from __future__ import annotations

import importlib.util

from cmc import CmcError

# import name → distribution name, of what only the training side needs (tqdm is in the extra
# too, but transformers brings it anyway)
TRAIN_EXTRA = {
    "datasets": "datasets",
    "pyarrow": "pyarrow",
    "sacrebleu": "sacrebleu",
    "rapidfuzz": "rapidfuzz",
    "rouge_score": "rouge-score",
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
}


def require_train_extra(command: str) -> None:
    """One line naming the extra to install when a training dependency is missing."""
    missing = [dist for mod, dist in TRAIN_EXTRA.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise CmcError(
            f"`cmc {command}` needs the training extra: pip install 'cmc[train]' "
            f"(missing: {', '.join(missing)})"
        )
