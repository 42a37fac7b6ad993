import pytest

from ponder.server.config import DEFAULT_MODEL, parse_args


def test_defaults_and_flags():
    cfg = parse_args([])
    assert cfg.model[0] == DEFAULT_MODEL and cfg.port == 8000 and cfg.enforce_eager
    cfg = parse_args(["--model", "a", "--model", "b", "--no-enforce-eager", "--max-n", "4", "--api-key", "k"])
    assert cfg.model == ["a", "b"] and not cfg.enforce_eager and cfg.max_n == 4
    assert cfg.public()["api_key"] == "***"


def test_env_vars_and_precedence(monkeypatch):
    monkeypatch.setenv("PONDER_MODEL", "x,y")
    monkeypatch.setenv("PONDER_PORT", "9000")
    monkeypatch.setenv("PONDER_ENFORCE_EAGER", "false")
    monkeypatch.setenv("PONDER_DEFAULT_STRATEGY", '{"name": "tournament", "n": 4}')
    cfg = parse_args([])
    assert cfg.model == ["x", "y"] and cfg.port == 9000 and not cfg.enforce_eager
    assert cfg.default_strategy.startswith("{")
    assert parse_args(["--port", "1"]).port == 1  # the flag wins


def test_engine_args_and_bad_input():
    cfg = parse_args(["--engine-arg", "max_num_seqs=8", "--engine-arg", "kv_cache_dtype=auto"])
    assert cfg.engine_kwargs() == {"max_num_seqs": 8, "kv_cache_dtype": "auto"}
    with pytest.raises(SystemExit):
        parse_args(["--lora", "no-equals-sign"])
    with pytest.raises(SystemExit):
        parse_args(["--upstream", "http://a", "--model", "m1", "--model", "m2"])
