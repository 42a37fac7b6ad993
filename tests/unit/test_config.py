import pytest

from ponder.models import DEFAULT_MODEL
from ponder.server.config import parse_args


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


def test_flags_follow_the_field_types():
    cfg = parse_args(["--drain-grace", "2.5", "--max-body-bytes", "1000", "--max-model-len", "512"])
    assert cfg.drain_grace == 2.5 and cfg.max_body_bytes == 1000 and cfg.max_model_len == 512
    assert cfg.upstream_api_key is None
    defaults = parse_args([])
    assert defaults.drain_grace == 6.0 and defaults.max_body_bytes == 4 * 1024 * 1024 and defaults.effort == []


@pytest.mark.parametrize("var,value,field,want", [
    ("PONDER_DRAIN_GRACE", "0.5", "drain_grace", 0.5),
    ("PONDER_MAX_BODY_BYTES", "4096", "max_body_bytes", 4096),
    ("PONDER_MAX_MODEL_LEN", "2048", "max_model_len", 2048),
    ("PONDER_ENFORCE_EAGER", "0", "enforce_eager", False),
    ("PONDER_ENFORCE_EAGER", "off", "enforce_eager", False),
    ("PONDER_ENFORCE_EAGER", "Yes", "enforce_eager", True),
    ("PONDER_API_KEY", "", "api_key", None),  # set but empty: unset, never an empty key
    ("PONDER_UPSTREAM", "http://a, http://b", "upstream", ["http://a", "http://b"]),
])
def test_env_values_are_typed(monkeypatch, var, value, field, want):
    monkeypatch.setenv(var, value)
    if var == "PONDER_UPSTREAM":
        monkeypatch.setenv("PONDER_MODEL", "m")
    assert getattr(parse_args([]), field) == want


@pytest.mark.parametrize("argv,env,says", [
    (["--drain-grace", "soon"], {}, "--drain-grace"),
    (["--drain-grace", "nan"], {}, "--drain-grace"),
    (["--drain-grace", "-1"], {}, "--drain-grace"),
    (["--max-body-bytes", "4MB"], {}, "--max-body-bytes"),
    (["--max-body-bytes", "0"], {}, "--max-body-bytes"),
    (["--api-key", ""], {}, "--api-key"),
    ([], {"PONDER_PORT": "eighty"}, "PONDER_PORT"),
    ([], {"PONDER_DRAIN_GRACE": "inf"}, "--drain-grace"),
    ([], {"PONDER_ENFORCE_EAGER": "maybe"}, "PONDER_ENFORCE_EAGER"),
])
def test_bad_values_are_usage_errors(monkeypatch, capsys, argv, env, says):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_effort_flags_and_env():
    cfg = parse_args(["--effort", 'high={"name": "tournament", "n": 16, "k": 2}', "--effort", "low = direct"])
    assert cfg.efforts() == {"high": {"name": "tournament", "n": 16, "k": 2}, "low": "direct"}


def test_effort_env_is_semicolon_separated(monkeypatch):
    monkeypatch.setenv("PONDER_EFFORT", 'high={"name": "tournament", "n": 16, "k": 2}; minimal=self_consistency')
    assert parse_args([]).efforts() == {"high": {"name": "tournament", "n": 16, "k": 2},
                                        "minimal": "self_consistency"}


@pytest.mark.parametrize("spec", ["extreme=direct", "high", "=direct", "high=", 'high={"name": ', "high=[1, 2]",
                                  "high=tournament n=4", 'high="direct"'])
def test_bad_effort_is_a_startup_error(spec):
    with pytest.raises(SystemExit):
        parse_args(["--effort", spec])


def test_effort_table_merges_defaults_and_checks_strategies():
    from ponder.server.cli import strategy_flags
    from ponder.server.serving import EFFORTS

    default, efforts = strategy_flags(parse_args(["--effort", "high=self_consistency"]))
    assert default == "direct" and efforts == {**EFFORTS, "high": "self_consistency"}
    for argv in (["--effort", "low=nope"], ["--effort", 'low={"name": "tournament", "n": "many"}'],
                 ["--default-strategy", "{oops"]):
        with pytest.raises(SystemExit, match="ponder: bad --"):
            strategy_flags(parse_args(argv))
