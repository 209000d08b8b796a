"""The encoder tasks' metrics against cases computed by hand."""

import pytest

from edgetune.runtime.task_metrics import accuracy, entities, entity_f1, macro_f1, normalize_answer, squad_scores


def test_accuracy_and_macro_f1():
    predictions, references = [0, 0, 1, 1, 2], [0, 1, 1, 1, 2]
    assert accuracy(predictions, references) == pytest.approx(0.8)
    # F1 per label: 0 -> 2·1/(2+1) = 2/3; 1 -> 2·2/(2+3) = 4/5; 2 -> 1
    assert macro_f1(predictions, references) == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert macro_f1([1, 1], [0, 0]) == 0.0  # labels 0 and 1 both F1 0


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 1), ("LOC", 3, 3)}),
        (["I-PER", "I-PER", "B-PER"], {("PER", 0, 1), ("PER", 2, 2)}),  # I- after O starts an entity
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 0), ("LOC", 1, 2)}),  # a type change ends one
        (["B-ORG", "B-ORG", "O", "O"], {("ORG", 0, 0), ("ORG", 1, 1)}),
        (["O", "O"], set()),
        (["O", "B-MISC"], {("MISC", 1, 1)}),  # an entity running to the end
    ],
)
def test_entities_as_conlleval_reads_them(tags, expected):
    assert entities(tags) == expected


def test_entity_f1_by_hand():
    references = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predictions = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-PER"]]
    # predicted: PER(0,0) LOC(3,3) ORG(0,0) PER(1,1); reference: PER(0,1) LOC(3,3) ORG(0,0)
    # right: LOC and ORG -> precision 2/4, recall 2/3, F1 = 2·(1/2·2/3)/(1/2+2/3) = 4/7
    result = entity_f1(predictions, references)
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(4 / 7)
    assert entity_f1([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_squad_scores_by_hand():
    assert normalize_answer("  The Eiffel-Tower! ") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"
    predictions = ["Eiffel Tower", "in Paris France", "Berlin"]
    references = [["the Eiffel Tower", "Tower"], ["Paris"], ["Rome"]]
    # EM: 1, 0, 0. F1: 1; pred [in, paris, france] vs [paris]: P 1/3, R 1 -> 1/2; 0
    scores = squad_scores(predictions, references)
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * 1.5 / 3)
    assert squad_scores([""], [[]]) == {"exact_match": 100.0, "f1": 100.0}  # no answer, none given
