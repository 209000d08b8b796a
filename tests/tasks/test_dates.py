"""The dates task: distinct, checkable, split without overlap, written atomically."""

import datetime as dt
import json

import pytest

from edgetune.common.errors import EdgetuneError
from edgetune.runtime.evaluate import exact_match
from edgetune.tasks import dates


def _iso(example):
    return example["completion"].strip()


def test_examples_are_deterministic_distinct_and_well_formed():
    a, b = dates.make_examples(500, seed=3), dates.make_examples(500, seed=3)
    assert a == b != dates.make_examples(500, seed=4)
    assert len({_iso(e) for e in a}) == 500
    for e in a:
        assert e["prompt"].startswith("Convert to ISO date: ") and e["prompt"].endswith("\nISO:")
        assert e["completion"] == " " + dt.date.fromisoformat(_iso(e)).isoformat()


def test_every_style_reads_back_to_the_same_date():
    d = dt.date(2021, 3, 5)
    texts = [dates.make_example(d, s)["prompt"].split(": ", 1)[1].split("\n")[0] for s in range(len(dates.STYLES))]
    assert texts == [
        "5 March 2021",
        "March 5, 2021",
        "Mar 5th 2021",
        "Mar. 5, 2021",
        "5th of March, 2021",
        "Friday, March 5, 2021",
        "5-Mar-2021",
        "05/03/2021 (day first)",
        "03/05/2021 (month first)",
    ]
    assert {dates.make_example(d, s)["completion"] for s in range(len(dates.STYLES))} == {" 2021-03-05"}


@pytest.mark.parametrize(
    "day, text",
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (4, "4th"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (21, "21st"),
        (22, "22nd"),
        (31, "31st"),
    ],
)
def test_ordinals(day, text):
    assert dates._ordinal(day) == text


def test_splits_do_not_share_dates(tmp_path):
    paths = dates.write_splits(tmp_path / "data", n_train=300, n_eval=100, seed=1)
    assert paths == {"train": tmp_path / "data" / "train.jsonl", "heldout": tmp_path / "data" / "heldout.jsonl"}
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    heldout = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    assert (len(train), len(heldout)) == (300, 100)
    assert not {_iso(e) for e in train} & {_iso(e) for e in heldout}
    assert [p.name for p in sorted((tmp_path / "data").iterdir())] == ["heldout.jsonl", "train.jsonl"]  # no temp left


def test_write_replaces_existing_files(tmp_path):
    (tmp_path / "train.jsonl").write_text("old\n")
    dates.write_splits(tmp_path, n_train=2, n_eval=1, seed=0)
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 2


def test_bad_sizes():
    with pytest.raises(EdgetuneError, match="distinct dates"):
        dates.make_examples(dates.N_DAYS + 1, seed=0)
    with pytest.raises(EdgetuneError, match="at least one"):
        dates.write_splits("unused", n_train=0, n_eval=5)


@pytest.mark.parametrize(
    "prediction, ok",
    [
        (" 2021-03-05", True),
        ("2021-03-05\n", True),
        ("\n 2021-03-05 \nConvert to ISO date: x", True),
        ("2021-03-05.", False),
        ("2021-3-5", False),
        ("", False),
        ("ISO: 2021-03-05", False),
    ],
)
def test_exact_match(prediction, ok):
    assert exact_match(prediction, " 2021-03-05") is ok
