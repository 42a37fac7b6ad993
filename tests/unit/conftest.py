import pytest

from ponder.trainers.tokenizer import build_tokenizer


@pytest.fixture(scope="session")
def tok():
    return build_tokenizer(vocab_size=512, n_problems=200)
