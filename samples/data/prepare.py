"""Write the samples' data sets into samples/data/ (generated here: nothing is downloaded).

    python samples/data/prepare.py            # samples/data/dates/{train,heldout}.jsonl

See README.md beside this file for what each set is and its licence.
"""

import sys
from pathlib import Path

from edgetune.tasks.dates import write_splits

HERE = Path(__file__).resolve().parent
TRAIN, HELDOUT, SEED = 1200, 100, 0


def prepare(out: Path = HERE) -> dict[str, Path]:
    """The dates set: 1,200 training and 100 held-out prompt/completion pairs, the same on every machine."""
    return write_splits(out / "dates", TRAIN, HELDOUT, seed=SEED)


if __name__ == "__main__":
    for name, path in prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE).items():
        print(f"{name}: {path}")
