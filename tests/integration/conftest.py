import pytest

from tests.conftest import MODEL


@pytest.fixture(scope="session")
async def engine():
    """One real vLLM engine (CPU build) on the committed model, for the whole session."""
    from ponder.engine.vllm_engine import VllmConfig, VllmEngine

    eng = VllmEngine(VllmConfig(model=str(MODEL), max_logprobs=64))
    yield eng
    await eng.aclose()


@pytest.fixture(scope="session")
def render(engine):
    def render(text: str) -> list[int]:
        t = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return engine.tokenizer.encode(t, add_special_tokens=False)

    return render
