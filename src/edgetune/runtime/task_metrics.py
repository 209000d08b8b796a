"""The encoder tasks' metrics, written here (no torch, no evaluate/seqeval on the device).

accuracy, macro_f1      classification (macro: the unweighted mean of each label's F1
                        over the labels that occur in the references or predictions)
entity_f1               entity-level precision/recall/F1 over IOB tags, as seqeval's default
                        (conlleval) mode counts them: an entity starts at B-X, or at I-X after
                        O or another type, and must match a reference entity's type and span
squad_em, squad_f1      the SQuAD v1.1 script's exact match and token F1 after its
                        normalisation (lower case, no punctuation, no a/an/the, single spaces),
                        the best over each question's reference answers
"""

import re
import string
from collections import Counter


def accuracy(predictions: list[int], references: list[int]) -> float:
    """The share of predictions equal to their reference."""
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def macro_f1(predictions: list[int], references: list[int]) -> float:
    """The mean over labels of each label's F1 (labels seen in either list)."""
    scores = []
    for label in sorted(set(predictions) | set(references)):
        tp = sum(p == r == label for p, r in zip(predictions, references))
        predicted, actual = predictions.count(label), references.count(label)
        scores.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return sum(scores) / len(scores)


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """The (type, first, last) token spans of one sentence's IOB tags, as conlleval reads them."""
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if tag != "O" else ("O", "", "")
        ends = kind is not None and (prefix in ("O", "B") or label != kind)
        if ends:
            found.add((kind, start, i - 1))
            start, kind = None, None
        if prefix in ("B", "I") and kind is None:
            start, kind = i, label
    return found


def entity_f1(predictions: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over the entities of every sentence."""
    tp = n_pred = n_ref = 0
    for pred, ref in zip(predictions, references):
        p, r = entities(pred), entities(ref)
        tp, n_pred, n_ref = tp + len(p & r), n_pred + len(p), n_ref + len(r)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the best over a question's references, averaged over questions."""
    em = f1 = 0.0
    for pred, refs in zip(predictions, references):
        refs = refs or [""]  # no answer: only an empty prediction is right
        em += max(float(normalize_answer(pred) == normalize_answer(r)) for r in refs)
        f1 += max(_token_f1(pred, r) if r else float(not normalize_answer(pred)) for r in refs)
    return {"exact_match": 100 * em / len(predictions), "f1": 100 * f1 / len(predictions)}
