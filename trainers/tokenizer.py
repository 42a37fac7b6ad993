"""A byte-level BPE tokenizer for ponder's tiny models, with a chat template.

Each digit is its own token (arithmetic is learned digit by digit); every
byte is in the alphabet, so any text a user sends round-trips exactly. The
result is an ordinary Hugging Face fast tokenizer that vLLM loads from the
model folder.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ponder.tasks import arith

ROLES = ("system", "user", "assistant")
END, PAD = "<|end|>", "<|pad|>"
SPECIAL = [PAD, END, *(f"<|{r}|>" for r in ROLES)]
# Each message is "<|role|>\n{content}<|end|>\n"; generation stops at <|end|>.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def corpus(n_problems: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for p in arith.dataset("train", n_problems, seed=seed):
        for fmt in arith.FORMATS:
            for m in arith.example(p, fmt, rng):
                yield m["content"]


def build_tokenizer(vocab_size: int = 512, n_problems: int = 2000, seed: int = 0) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # One digit per token; a leading space may join the first digit (" 1").
        pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(n_problems, seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=SPECIAL[2:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def encode_example(tok: PreTrainedTokenizerFast, messages: list[dict[str, str]]) -> tuple[list[int], int]:
    """Token ids of a chat example and where the final assistant reply starts.

    The prompt is rendered exactly as at serving time (template with generation
    prompt), so the loss is taken on the same tokens the model will produce.
    """
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    reply_ids = tok.encode(messages[-1]["content"], add_special_tokens=False)
    return prompt_ids + reply_ids + [tok.convert_tokens_to_ids(END)], len(prompt_ids)
