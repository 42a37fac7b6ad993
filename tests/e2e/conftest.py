import pytest

from tests.conftest import PonderServer

KEY = "sk-ponder-test"


@pytest.fixture(scope="session")
def server():
    s = PonderServer("--max-n", "32", "--max-request-tokens", "40000", api_key=KEY)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=300) as c:
        yield c


@pytest.fixture
def aclient(server):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=300)
