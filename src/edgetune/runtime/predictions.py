"""From an encoder's outputs to predictions per example, and their scores against the references.

text-classification   {"label", "index", "probabilities"}: the argmax of the logits
token-classification  {"tags"}: each word's tag, from its first sub-token (a word cut off by
                      --seq-len gets O)
question-answering    {"answer", "start"}: the best span over the example's windows, its
                      score start_logit + end_logit, at most MAX_ANSWER_TOKENS long, inside
                      the context ("" when no span qualifies)
"""

import numpy as np

from edgetune.runtime.task_metrics import accuracy, entity_f1, macro_f1, squad_scores

MAX_ANSWER_TOKENS = 30
TOP_K = 20  # start and end candidates per window


def decode_outputs(task: str, examples: list[dict], features: list, outputs: list[tuple], labels: list[str]) -> list:
    """One prediction per example; features[i] produced outputs[i] (one array per graph output, batch dim dropped)."""
    per_example: dict[int, list] = {}
    for feature, output in zip(features, outputs):
        per_example.setdefault(feature.example, []).append((feature, output))
    return [DECODERS[task](per_example.get(i, []), example, labels) for i, example in enumerate(examples)]


def _label(rows: list, example: dict, labels: list[str]) -> dict:
    (_, (logits,)) = rows[0]  # (C,)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    index = int(np.argmax(logits))
    return {"label": labels[index], "index": index, "probabilities": [round(float(x), 6) for x in p]}


def _tags(rows: list, example: dict, labels: list[str]) -> dict:
    (feature, (logits,)) = rows[0]  # (S, C)
    tags = ["O" if "O" in labels else labels[0]] * len(example["tokens"])
    seen = set()
    for t, word in enumerate(feature.offsets):
        if word is not None and word not in seen:
            seen.add(word)
            tags[word] = labels[int(np.argmax(logits[t]))]
    return {"tags": tags}


def _answer(rows: list, example: dict, labels: list[str]) -> dict:
    best, answer = -np.inf, {"answer": "", "start": -1}
    for feature, (start_logits, end_logits) in rows:  # (S,) each
        offsets = feature.offsets
        n = len(offsets)
        starts = np.argsort(start_logits[:n])[::-1][:TOP_K]
        ends = np.argsort(end_logits[:n])[::-1][:TOP_K]
        for s in starts:
            for e in ends:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > MAX_ANSWER_TOKENS:
                    continue
                value = start_logits[s] + end_logits[e]
                if value > best:
                    first, last = offsets[s][0], offsets[e][1]
                    best, answer = value, {"answer": example["context"][first:last], "start": first}
    return answer


DECODERS = {"text-classification": _label, "token-classification": _tags, "question-answering": _answer}


def score(task: str, examples: list[dict], predictions: list[dict], labels: list[str]) -> dict:
    """The task's metrics over the examples that carry references ({} if none does)."""
    if task == "text-classification":
        pairs = [(p["index"], e["label"]) for p, e in zip(predictions, examples) if e.get("label") is not None]
        if not pairs:
            return {}
        pred, ref = (list(x) for x in zip(*pairs))
        return {"accuracy": accuracy(pred, ref), "macro_f1": macro_f1(pred, ref)}
    if task == "token-classification":
        pairs = [(p["tags"], [labels[t] for t in e["tags"]]) for p, e in zip(predictions, examples) if e.get("tags")]
        if not pairs:
            return {}
        result = entity_f1([p for p, _ in pairs], [r for _, r in pairs])
        return {f"entity_{k}": v for k, v in result.items()}
    pairs = [
        (p["answer"], [t for t, _ in e["answers"]])
        for p, e in zip(predictions, examples)
        if e.get("answers") is not None
    ]
    if not pairs:
        return {}
    return squad_scores([p for p, _ in pairs], [r for _, r in pairs])
