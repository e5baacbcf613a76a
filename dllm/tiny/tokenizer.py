"""The embedded model's tokenizer: a small byte-level BPE trained on the task corpus.

Byte-level so any text round-trips (no unknown tokens); numbers are split into chunks of at most two digits
(see ``PIECES``), so every value below 100 is one token and longer numbers are spelled in two-digit pieces,
which keeps arithmetic and sorting learnable for a tiny model. Special tokens use LLaDA's strings, so the same loader rules find them as in a real checkpoint.
The tokenizer is rebuilt deterministically from the task generators (same seed, same vocabulary).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from . import tasks

BOS, EOS, MASK, PAD = "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, MASK, PAD)  # ids 0..3, in this order
VOCAB_SIZE = 1024
CORPUS_SEED = 2024
CORPUS_SIZE = 30_000
# Pre-tokenization: letter runs, numbers in chunks of at most two digits, and runs of everything else
# (spaces, punctuation). Words and numbers never absorb a neighbouring space, so "Gus" or "41" is the same
# token in a sentence, a JSON string or a list, and copying it is an identity the model learns once.
PIECES = r"\p{L}+| ?\p{N}{1,2}| ?[^\p{L}\p{N}\s]+|\s+"


@lru_cache(maxsize=4)
def train_tokenizer(vocab_size: int = VOCAB_SIZE, seed: int = CORPUS_SEED, size: int = CORPUS_SIZE,
                    task_names: tuple[str, ...] = tasks.TASKS, task_options: str = ""):
    """A :class:`tokenizers.Tokenizer` trained on ``size`` training problems (prompt + answer) of ``task_names``
    (``task_options``: a recipe's JSON generator overrides, see ``train.Recipe.task_options``).

    Cached: the result is a pure function of the arguments (callers must not modify it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PIECES), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # prompts and answers are encoded separately in training and decoding: no merges across the boundary
    examples = tasks.train_examples(seed, size, task_names, json.loads(task_options or "{}"))
    corpus = [text for ex in examples for text in (ex.prompt, ex.target)]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def as_transformers(tokenizer, max_length: int):
    """Wrap for ``transformers`` with the special-token roles declared (no BOS/EOS added on encode)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        mask_token=MASK,
        pad_token=PAD,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


def save_tokenizer(tokenizer, directory: str | Path, max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``directory``."""
    directory = Path(directory)
    as_transformers(tokenizer, max_length).save_pretrained(str(directory))
    special = {"bos_token": BOS, "eos_token": EOS, "mask_token": MASK, "pad_token": PAD}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
