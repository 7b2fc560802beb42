"""Byte-level corpora, exact-match reasoning tasks and the Lightning DataModules that serve them.

The DataModules are imported lazily, so ``model/`` and ``swarm/`` code can use the tokenizer,
corpora and tasks without importing Lightning.
"""

from typing import TYPE_CHECKING

from moe_swarm.data.corpora import CORPUS_NAMES, load_corpus, read_bin, split_train_val, write_bin
from moe_swarm.data.tasks import (
    IGNORE_INDEX,
    SPLITS,
    TASKS,
    ArithmeticTask,
    MultiplicationTask,
    Problem,
    ReachabilityTask,
    Task,
    decode_answer,
    encode_problem,
    encode_prompt,
    get_task,
)
from moe_swarm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer

__all__ = [
    "BOS_ID",
    "CORPUS_NAMES",
    "EOS_ID",
    "IGNORE_INDEX",
    "PAD_ID",
    "SPLITS",
    "TASKS",
    "VOCAB_SIZE",
    "ArithmeticTask",
    "ByteTokenizer",
    "MultiplicationTask",
    "Problem",
    "ReachabilityTask",
    "Task",
    "TaskDataModule",
    "TextDataModule",
    "decode_answer",
    "encode_problem",
    "encode_prompt",
    "get_task",
    "load_corpus",
    "pad_collate",
    "read_bin",
    "split_train_val",
    "write_bin",
]

_LAZY = {"TaskDataModule", "TextDataModule", "pad_collate"}

if TYPE_CHECKING:
    from moe_swarm.data.datamodules import TaskDataModule, TextDataModule, pad_collate


def __getattr__(name: str):
    if name in _LAZY:
        from moe_swarm.data import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module 'moe_swarm.data' has no attribute {name!r}")
