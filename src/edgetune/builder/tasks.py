"""The tasks a bundle is built for, as a table: what differs between a causal LM and an encoder task.

The build pipeline knows no task by name: it asks the bundle's `Task` which transformers
class loads the model, which Optimum task exports each graph (a causal LM exports a
no-past graph to train and a with-past graph to serve; an encoder needs one export for
both), which loss the training graph gets, whether the method's LM-head rewrite applies,
and the PEFT task type written in adapter_config.json.
"""

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from edgetune.builder.rewrites.loss import add_causal_lm_loss
from edgetune.builder.rewrites.task_loss import (
    add_question_answering_loss,
    add_sequence_classification_loss,
    add_token_classification_loss,
)


@dataclass(frozen=True)
class Task:
    """One `--task`: its loader, its exports, its loss and its PEFT task type."""

    name: str
    auto_class: str  # transformers' AutoModelFor... class
    exports: tuple[str, str]  # Optimum's task for the (training, inference) graph
    add_loss: Callable[[onnx.ModelProto], object]
    peft_task_type: str
    lm_head: bool = False  # a causal LM's head, which a method may rewrite (QLoRA's int8 chunks)
    labelled: bool = False  # the head's width is the number of --labels

    @property
    def encoder(self) -> bool:
        """An encoder task: a trainable head saved under PEFT's modules_to_save, one export for both graphs."""
        return not self.lm_head


TASKS = {
    t.name: t
    for t in (
        Task(
            "causal-lm",
            "AutoModelForCausalLM",
            ("text-generation", "text-generation-with-past"),
            add_causal_lm_loss,
            "CAUSAL_LM",
            lm_head=True,
        ),
        Task(
            "text-classification",
            "AutoModelForSequenceClassification",
            ("text-classification", "text-classification"),
            add_sequence_classification_loss,
            "SEQ_CLS",
            labelled=True,
        ),
        Task(
            "token-classification",
            "AutoModelForTokenClassification",
            ("token-classification", "token-classification"),
            add_token_classification_loss,
            "TOKEN_CLS",
            labelled=True,
        ),
        Task(
            "question-answering",
            "AutoModelForQuestionAnswering",
            ("question-answering", "question-answering"),
            add_question_answering_loss,
            "QUESTION_ANS",
        ),
    )
}
