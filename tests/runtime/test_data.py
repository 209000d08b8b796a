import json

import pytest

from edgetune.common.errors import DataError
from edgetune.runtime.data import read_examples

GOOD = [
    {"text": "hello world"},
    {"prompt": "Q: 2+2?\nA:", "completion": " 4"},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
    },
]


def write(tmp_path, lines, name="train.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines))
    return path


def test_three_shapes_blank_lines_and_sources(tmp_path):
    lines = [json.dumps(GOOD[0]), "", "   ", json.dumps({**GOOD[1], "id": 7}), json.dumps(GOOD[2]), ""]
    path = write(tmp_path, lines)
    examples, skipped = read_examples(path)
    assert skipped == 0
    assert [{k: v for k, v in e.items() if k != "source"} for e in examples] == GOOD  # extra "id" dropped
    assert [e["source"] for e in examples] == [f"{path}:1", f"{path}:4", f"{path}:5"]


def test_crlf_and_bom(tmp_path):
    path = write(tmp_path, [b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode() + b"\r", json.dumps(GOOD[1]).encode()])
    examples, _ = read_examples(path)
    assert examples[0]["text"] == "hello world" and len(examples) == 2


def test_txt_paragraphs(tmp_path):
    path = write(
        tmp_path, ["First line", "second line.", "", "", "  Another\tparagraph.  ", " ", "Last"], name="notes.TXT"
    )
    examples, skipped = read_examples(path)
    assert [e["text"] for e in examples] == ["First line\nsecond line.", "Another\tparagraph.", "Last"]
    assert [e["source"].rsplit(":", 1)[1] for e in examples] == ["1", "5", "7"]
    assert skipped == 0


BAD = [
    ('{"text": "a"', "malformed JSON"),
    ('["text", "a"]', "expected a JSON object, got an array"),
    ('{"prompt": "a"}', 'missing field "completion"'),
    ('{"completion": "a"}', 'missing field "prompt"'),
    ('{"input": "a"}', "unknown shape"),
    ('{"text": "a", "prompt": "b", "completion": "c"}', "ambiguous shape"),
    ('{"text": 3}', 'field "text" must be a string, got a number'),
    ('{"text": "  "}', 'field "text" is empty'),
    ('{"prompt": "a", "completion": null}', 'field "completion" must be a string, got null'),
    ('{"prompt": "a", "completion": ""}', 'field "completion" is empty'),
    ('{"messages": "hi"}', 'field "messages" must be a list'),
    ('{"messages": []}', 'field "messages" is empty'),
    ('{"messages": ["hi"]}', "messages[0] must be an object"),
    ('{"messages": [{"role": "user"}]}', 'messages[0]: missing field "content"'),
    ('{"messages": [{"role": "user", "content": 1}]}', 'messages[0]: field "content" must be a string'),
    (
        '{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}',
        'messages[1]: unknown role "bot"',
    ),
    ('{"messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]}', "no assistant turn"),
]


@pytest.mark.parametrize("line,message", BAD, ids=[m for _, m in BAD])
def test_bad_line_names_file_and_line(tmp_path, line, message):
    path = write(tmp_path, [json.dumps(GOOD[0]), "", line, json.dumps(GOOD[0])])
    with pytest.raises(DataError) as err:
        read_examples(path)
    text = str(err.value)
    assert text.startswith(f"{path}:3: ") and message in text and "\n" not in text


def test_non_utf8_names_the_line(tmp_path):
    path = write(tmp_path, [json.dumps(GOOD[0]), b'{"text": "caf\xe9"}'])
    with pytest.raises(DataError, match=r"train\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 14\)"):
        read_examples(path)
    txt = write(tmp_path, [b"fine", b"", b"bad \xff byte"], name="a.txt")
    with pytest.raises(DataError, match=r"a\.txt:3: not valid UTF-8"):
        read_examples(txt)


def test_skip_bad_lines_counts(tmp_path):
    lines = [json.dumps(GOOD[0]), "{oops", b"\xff\xfe", json.dumps(GOOD[1]), '{"messages": []}', "7"]
    examples, skipped = read_examples(write(tmp_path, lines), skip_bad_lines=True)
    assert len(examples) == 2 and skipped == 4


def test_no_examples(tmp_path):
    empty = write(tmp_path, ["", "  "])
    with pytest.raises(DataError, match=r"^.*train\.jsonl: no examples$"):
        read_examples(empty)
    bad = write(tmp_path, ["{oops", "[]"], name="bad.jsonl")
    with pytest.raises(DataError, match=r"bad\.jsonl: no examples \(2 bad lines skipped\)$"):
        read_examples(bad, skip_bad_lines=True)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file$"):
        read_examples(tmp_path / "nope.jsonl")
