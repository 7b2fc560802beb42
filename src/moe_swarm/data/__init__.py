"""Byte-level tokenizer, corpora and exact-match reasoning tasks: plain Python + PyTorch, no framework.

The Lightning DataModules that serve them to a Trainer live in :mod:`moe_swarm.training.datamodules`.
"""

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
    "decode_answer",
    "encode_problem",
    "encode_prompt",
    "get_task",
    "load_corpus",
    "read_bin",
    "split_train_val",
    "write_bin",
]
