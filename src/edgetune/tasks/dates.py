"""A skill with exactly checkable answers: rewrite a written date as ISO 8601.

    prompt:     "Convert to ISO date: Mar 5th 2021\nISO:"
    completion: " 2021-03-05"

The completion starts with a space and the prompt ends without one, so that a
byte-level BPE tokenizer gives the same tokens for prompt + completion as for the
two halves apart (the space joins the answer's first token, as in lm-eval). No
newline or EOS is part of the completion: the trainer appends EOS, and at
evaluation `edgetune.runtime.evaluate.exact_match` ignores anything after the first newline.

Every input style names the month in words or says which number is the day, so
each date has one correct answer. stdlib only.
"""

import datetime as dt
import os
import random
from pathlib import Path

from edgetune.common.atomic import write_jsonl_atomic
from edgetune.common.errors import EdgetuneError

TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"
PROMPT_TEMPLATE = "Convert to ISO date: {text}\nISO:"
FIRST_DAY = dt.date(1950, 1, 1)
LAST_DAY = dt.date(2049, 12, 31)
N_DAYS = (LAST_DAY - FIRST_DAY).days + 1  # 36,525 distinct dates

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordinal(day: int) -> str:
    """1 -> '1st', 12 -> '12th', 22 -> '22nd'."""
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


# One function per written style; each is unambiguous.
STYLES = (
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",  # 5 March 2021
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",  # March 5, 2021
    lambda d: f"{MONTHS[d.month - 1][:3]} {_ordinal(d.day)} {d.year}",  # Mar 5th 2021
    lambda d: f"{MONTHS[d.month - 1][:3]}. {d.day}, {d.year}",  # Mar. 5, 2021
    lambda d: f"{_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",  # 5th of March, 2021
    lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",  # Friday, March 5, 2021
    lambda d: f"{d.day}-{MONTHS[d.month - 1][:3]}-{d.year}",  # 5-Mar-2021
    lambda d: f"{d.day:02d}/{d.month:02d}/{d.year} (day first)",  # 05/03/2021 (day first)
    lambda d: f"{d.month:02d}/{d.day:02d}/{d.year} (month first)",  # 03/05/2021 (month first)
)


def make_example(date: dt.date, style: int) -> dict:
    """The prompt/completion pair for one date written in one of `STYLES`."""
    text = STYLES[style](date)
    return {"prompt": PROMPT_TEMPLATE.format(text=text), "completion": " " + date.isoformat()}


def make_examples(n: int, seed: int) -> list[dict]:
    """`n` examples on `n` distinct dates (1950-2049), styles drawn at random; deterministic in `seed`."""
    if not 0 <= n <= N_DAYS:
        raise EdgetuneError(f"dates: n must be between 0 and {N_DAYS} (distinct dates), got {n}")
    rng = random.Random(seed)
    offsets = rng.sample(range(N_DAYS), n)
    return [make_example(FIRST_DAY + dt.timedelta(days=k), rng.randrange(len(STYLES))) for k in offsets]


def write_splits(out_dir: str | os.PathLike, n_train: int, n_eval: int, seed: int = 0) -> dict[str, Path]:
    """Write `train.jsonl` and `heldout.jsonl` to `out_dir`, no date shared between them.

    Returns {"train": path, "heldout": path}.
    """
    if n_train < 1 or n_eval < 1:
        raise EdgetuneError(f"dates: need at least one train and one held-out example, got {n_train} and {n_eval}")
    examples = make_examples(n_train + n_eval, seed)  # distinct dates, so the split cannot overlap
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / TRAIN_FILE, "heldout": out / HELDOUT_FILE}
    write_jsonl_atomic(paths["train"], examples[:n_train])
    write_jsonl_atomic(paths["heldout"], examples[n_train:])
    return paths


def write_client_parts(
    out_dir: str | os.PathLike, clients: int, per_client: int, n_eval: int, seed: int = 0, styles_per_client: int = 3
) -> dict[str, Path]:
    """Non-IID parts for a fleet: `client-NN.jsonl` per client, each in only `styles_per_client` of the
    written styles (client c: styles c·k .. c·k+k-1, modulo the 9 styles), plus `heldout.jsonl` in every style.

    No date appears twice across all the files. Returns {"client-00": path, ..., "heldout": path}.
    """
    if clients < 1 or per_client < 1 or n_eval < 1 or not 1 <= styles_per_client <= len(STYLES):
        raise EdgetuneError(
            f"dates: need clients, per_client, heldout >= 1 and 1..{len(STYLES)} styles per client, "
            f"got {clients}, {per_client}, {n_eval}, {styles_per_client}"
        )
    total = clients * per_client + n_eval
    if total > N_DAYS:
        raise EdgetuneError(f"dates: {total} examples need more than the {N_DAYS} distinct dates")
    rng = random.Random(seed)
    days = [FIRST_DAY + dt.timedelta(days=k) for k in rng.sample(range(N_DAYS), total)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for c in range(clients):
        styles = [(c * styles_per_client + i) % len(STYLES) for i in range(styles_per_client)]
        mine = days[c * per_client : (c + 1) * per_client]
        paths[f"client-{c:02d}"] = out / f"client-{c:02d}.jsonl"
        write_jsonl_atomic(paths[f"client-{c:02d}"], [make_example(d, rng.choice(styles)) for d in mine])
    heldout = [make_example(d, rng.randrange(len(STYLES))) for d in days[clients * per_client :]]
    paths["heldout"] = out / HELDOUT_FILE
    write_jsonl_atomic(paths["heldout"], heldout)
    return paths
