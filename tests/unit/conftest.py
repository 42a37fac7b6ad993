import pytest

from trainers.tokenizer import build_tokenizer


@pytest.fixture(scope="session")
def tok():
    return build_tokenizer(vocab_size=512, n_problems=200)
