"""Config loading and validation (house style 7): text in, frozen values or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from swapyard.config import (
    AuthSpec,
    DeviceSpec,
    ModelSpec,
    SchedulerSpec,
    ServerSpec,
    UsageSpec,
    config_json_schema,
    load_config,
    load_config_file,
    parse_size,
    render,
)
from swapyard.engines import EngineFields
from swapyard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_loads() -> None:
    """The annotated config.example.yaml shipped in the repo is valid."""
    path = ROOT / "config.example.yaml"
    env = {"TABBY_ADMIN_KEY": "admin", "EXAMPLE_API_KEY": "sk-example"}
    cfg = load_config(path.read_text(), source=str(path), environ=env)
    assert "smollm2" in cfg.models
    assert cfg.models["big-tp"].gpus == 2 and cfg.models["big-tp"].fast
    assert dict(cfg.models["hosted"].upstream_headers) == {"Authorization": "Bearer sk-example"}
    assert cfg.resolve("default-chat") is not None
    assert cfg.resolve("creative") == "smollm2" and cfg.params("creative").defaults["min_p"]


def test_minimum_config_is_three_lines() -> None:
    """A model needs nothing but a command; everything else has a default."""
    text = "models:\n  m:\n    cmd: llama-server --port ${PORT} -m m.gguf\n"
    assert len(text.splitlines()) == 3
    m = load_config(text).models["m"]
    assert m.cmd == ("llama-server", "--port", "${PORT}", "-m", "m.gguf")
    assert m.proxy == "http://127.0.0.1:${PORT}"
    assert m.check_endpoint == "/health"
    assert m.needs_port


def test_keys_left_out_take_the_value_objects_defaults() -> None:
    """Each default lives on its value object; the file's schema reads it from there."""
    cfg = load_config(
        "models:\n  m: {cmd: 'x ${PORT}'}\n  v: {engine: vllm, model: org/v}\n"
        "devices: {g: {memory: 1GiB}}\n"
    )
    assert cfg.server == ServerSpec()
    assert cfg.scheduler == SchedulerSpec()
    assert cfg.usage == UsageSpec()
    assert cfg.auth == AuthSpec()
    assert cfg.devices == (DeviceSpec(id="g", memory=2**30),)
    assert cfg.models["m"] == ModelSpec(id="m", cmd=("x", "${PORT}"))
    assert cfg.models["v"].fields == EngineFields(kind="vllm", model_id="v", model="org/v")


def test_unknown_model_key_names_key_and_model() -> None:
    with pytest.raises(ConfigError) as e:
        load_config("models:\n  m:\n    cmd: x ${PORT}\n    ttll: 5\n", source="cfg.yaml")
    assert "cfg.yaml" in e.value.message
    assert "'ttll'" in e.value.message
    assert "model 'm'" in e.value.message


def test_unknown_top_level_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown key 'modles'"):
        load_config("modles: {}\nmodels: {}\n")


def test_bad_value_says_what_was_expected() -> None:
    with pytest.raises(ConfigError) as e:
        load_config("models:\n  m:\n    cmd: x ${PORT}\n    ttl: soon\n")
    assert "models.m.ttl" in e.value.message
    assert "expected a duration" in e.value.message


def test_loading_status_must_be_a_known_mode() -> None:
    with pytest.raises(ConfigError, match=r"server\.loading_status"):
        load_config("server: {loading_status: banner}\nmodels: {}\n")


def test_durations_and_sizes_parse() -> None:
    cfg = load_config(
        "server: {max_body_bytes: 2MiB, shutdown_timeout: 500ms}\n"
        "models:\n  m: {cmd: 'x ${PORT}', ttl: 5m, start_timeout: 1.5, stop_timeout: 2s}\n"
    )
    assert cfg.server.max_body_bytes == 2 * 2**20
    assert cfg.server.shutdown_timeout == 0.5
    m = cfg.models["m"]
    assert (m.ttl, m.start_timeout, m.stop_timeout) == (300.0, 1.5, 2.0)
    assert parse_size("1GB") == 10**9


def test_a_duration_must_be_finite() -> None:
    """``ttl: .inf`` (YAML's infinity) is refused at load (issue 14 review: an
    infinite TTL broke every computation of when a model expires)."""
    with pytest.raises(ConfigError, match=r"models\.m\.ttl: expected a finite duration"):
        load_config("models:\n  m: {cmd: 'x ${PORT}', ttl: .inf}\n")


def test_macros_expand_user_env_and_model_id() -> None:
    cfg = load_config(
        "macros:\n  dir: /models\n  common: -c 2048 --port ${PORT}\n"
        "models:\n  smol:\n    cmd: server ${common} -m ${dir}/${MODEL_ID}.gguf --key ${env.KEY}\n"
        "    env: {HOME_DIR: '${dir}'}\n",
        environ={"KEY": "s3cret"},
    )
    m = cfg.models["smol"]
    assert m.cmd == (
        "server", "-c", "2048", "--port", "${PORT}", "-m", "/models/smol.gguf", "--key", "s3cret",
    )  # fmt: skip
    assert m.env["HOME_DIR"] == "/models"
    assert render(m.proxy, {"PORT": "1234"}) == "http://127.0.0.1:1234"


def test_cmd_as_list_keeps_each_argument_whole() -> None:
    m = load_config("models:\n  m:\n    cmd: ['/opt/my engine', '--port', '${PORT}']\n").models["m"]
    assert m.cmd == ("/opt/my engine", "--port", "${PORT}")


def test_command_and_engine_arguments_split_alike() -> None:
    """cmd and extra_args split one way: quotes group words, an unquoted # starts a comment."""
    cfg = load_config(
        "models:\n  m: {cmd: \"x ${PORT} 'y z' # the rest is a note\"}\n"
        "  v: {engine: vllm, model: org/v, extra_args: \"--a 'b c' # a note\"}\n"
    )
    assert cfg.models["m"].cmd == ("x", "${PORT}", "y z")
    fields = cfg.models["v"].fields
    assert fields is not None and fields.extra_args == ("--a", "b c")
    with pytest.raises(ConfigError, match=r"models\.m\.cmd: expected a command"):
        load_config("models:\n  m: {cmd: '# only a note'}\n")


def test_empty_secret_variable_is_an_error_for_auth_and_engines() -> None:
    """A variable named for a secret but set to '' is refused, as if it were unset."""
    env = {"EMPTY": ""}
    with pytest.raises(ConfigError, match=r"auth\.keys\[0\]: environment variable 'EMPTY'"):
        load_config("models: {}\nauth: {keys: [{key_env: EMPTY}]}\n", environ=env)
    with pytest.raises(ConfigError, match=r"models\.o\.api_key_env: environment variable 'EMPTY'"):
        load_config(
            "models:\n  o: {engine: openai, base_url: 'http://h/v1', api_key_env: EMPTY}\n",
            environ=env,
        )


def test_missing_env_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="environment variable 'NOPE' is not set"):
        load_config("models:\n  m:\n    cmd: x ${PORT} ${env.NOPE}\n", environ={})


def test_unknown_macro_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"models\.m\.cmd: unknown macro \$\{nope\}"):
        load_config("models:\n  m:\n    cmd: x ${PORT} ${nope}\n")


def test_pid_macro_only_in_cmd_stop() -> None:
    with pytest.raises(ConfigError, match=r"\$\{PID\} cannot be used here"):
        load_config("models:\n  m:\n    cmd: x ${PORT} ${PID}\n")
    m = load_config("models:\n  m:\n    cmd: x ${PORT}\n    cmd_stop: kill ${PID}\n").models["m"]
    assert m.cmd_stop == ("kill", "${PID}")


def test_proxy_port_macro_needs_cmd_to_take_the_port() -> None:
    with pytest.raises(ConfigError, match="never passes"):
        load_config("models:\n  m:\n    cmd: engine --port 9000\n")
    m = load_config(
        "models:\n  m:\n    cmd: engine --port 9000\n    proxy: http://127.0.0.1:9000\n"
    ).models["m"]
    assert not m.needs_port


def test_alias_collisions_are_errors() -> None:
    with pytest.raises(ConfigError, match="already a model id"):
        load_config("models:\n  a: {cmd: 'x ${PORT}', aliases: [b]}\n  b: {cmd: 'x ${PORT}'}\n")
    with pytest.raises(ConfigError, match="also an alias of 'a'"):
        load_config(
            "models:\n  a: {cmd: 'x ${PORT}', aliases: [c]}\n"
            "  b: {cmd: 'x ${PORT}', aliases: [c]}\n"
        )


def test_aliases_resolve_to_their_model() -> None:
    cfg = load_config("models:\n  a: {cmd: 'x ${PORT}', aliases: [alpha, first]}\n")
    assert cfg.resolve("alpha") == "a"
    assert cfg.resolve("a") == "a"
    assert cfg.resolve("zeta") is None


def test_invalid_yaml_and_wrong_shape() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("models: [\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config("- a\n- b\n")
    with pytest.raises(ConfigError, match="required key 'models' is missing"):
        load_config("server: {}\n")


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config_file(tmp_path / "nope.yaml")


def test_bad_proxy_and_check_endpoint() -> None:
    with pytest.raises(ConfigError, match="expected an http"):
        load_config("models:\n  m: {cmd: 'x ${PORT}', proxy: 'tcp://x:${PORT}'}\n")
    with pytest.raises(ConfigError, match="starting with '/'"):
        load_config("models:\n  m: {cmd: 'x ${PORT}', check_endpoint: health}\n")


def test_json_schema_lists_model_keys() -> None:
    schema = config_json_schema()
    assert "models" in schema["properties"]
    assert "ttl" in schema["$defs"]["ModelIn"]["properties"]


def test_scheduler_retry_after_is_a_duration() -> None:
    """scheduler.retry_after, the Retry-After of a 429 for a full queue, takes a duration."""
    cfg = load_config("models: {}\nscheduler: {max_queue: 5, retry_after: 2500ms}\n")
    assert cfg.scheduler.retry_after == 2.5
    with pytest.raises(ConfigError, match=r"scheduler\.retry_after: expected a duration"):
        load_config("models: {}\nscheduler: {retry_after: later}\n")


def test_scheduler_devices_and_preload_are_validated() -> None:
    base = "models:\n  m: {cmd: 'x ${PORT}', gpus: 3}\n"
    with pytest.raises(ConfigError, match="asks for 3 devices, 1 are declared"):
        load_config(base + "devices: {g: {memory: 8GiB}}\n")
    with pytest.raises(ConfigError, match="reserve: must be less than its memory"):
        load_config("models: {}\ndevices: {g: {memory: 1GiB, reserve: 2GiB}}\n")
    with pytest.raises(ConfigError, match=r"preload\[0\]: 'nope' is not a model id"):
        load_config("models:\n  m: {cmd: 'x ${PORT}'}\npreload: [nope]\n")
    with pytest.raises(ConfigError, match=r"scheduler\.policy"):
        load_config("models: {}\nscheduler: {policy: lifo}\n")


VARIANTS = """
models:
  a:
    cmd: x ${PORT}
    aliases: [alpha]
    params: {defaults: {temperature: 0.5}, override: {top_k: 40}, strip: [seed]}
    variants:
      a-greedy: {params: {override: {temperature: 0}}, aliases: [greedy]}
      a-plain: {}
  b: {cmd: 'x ${PORT}'}
"""


def test_variants_resolve_to_their_model_with_params_over_its_own() -> None:
    """A variant id or alias resolves to its model (one engine); its params are its
    own over the model's; the listing shows variants after their model."""
    cfg = load_config(VARIANTS)
    assert [cfg.resolve(n) for n in ("a-greedy", "greedy", "a-plain", "alpha", "b")] == [
        "a", "a", "a", "a", "b",
    ]  # fmt: skip
    greedy = cfg.params("greedy")
    assert (dict(greedy.defaults), dict(greedy.override), greedy.strip) == (
        {}, {"top_k": 40, "temperature": 0}, ("seed",),
    )  # fmt: skip
    assert cfg.params("a-plain") == cfg.params("alpha") == cfg.models["a"].params
    assert not cfg.params("b")
    assert [(i.id, i.model, i.variant_of) for i in cfg.listing()] == [
        ("a", "a", None), ("a-greedy", "a", "a"), ("a-plain", "a", "a"), ("b", "b", None),
    ]  # fmt: skip
    assert list(cfg.models) == ["a", "b"], "the scheduler sees one model"


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ("{b: {}}", r"models.a.variants.b: 'b' is already a model id"),
        ("{alpha: {}}", r"models.a.variants.alpha: 'alpha' is also an alias of 'a'"),
        ("{v: {aliases: [b]}}", r"models.a.variants.v.aliases: 'b' is already a model id"),
        ("{v: {aliases: [w]}, w: {}}", r"models.a.variants.w: 'w' is also an alias of variant 'v'"),
        ("{'a v': {}}", r"a variant id cannot contain spaces"),
        ("{v: {params: {override: {model: x}}}}", r"variants.v.params: 'model' cannot be"),
        ("{v: {params: {temperature: 0}}}", r"unknown key 'temperature'"),
    ],
)
def test_variant_name_clashes_and_bad_params_are_errors(variants: str, message: str) -> None:
    """Every name a client sends means one thing; params cannot touch ``model``."""
    text = f"models:\n  a: {{cmd: 'x ${{PORT}}', aliases: [alpha], variants: {variants}}}\n"
    text += "  b: {cmd: 'x ${PORT}'}\n"
    with pytest.raises(ConfigError, match=message):
        load_config(text)


def test_params_cannot_strip_the_model() -> None:
    with pytest.raises(ConfigError, match=r"models.m.params: 'model' cannot be a parameter"):
        load_config("models:\n  m: {cmd: 'x ${PORT}', params: {strip: [model]}}\n")


def test_key_allow_lists_may_name_variants() -> None:
    """An allow-list keeps a variant's id (that variant only) and a model's id (the
    model and its variants); an unknown name is an error."""
    keys = "auth: {keys: [{key: k, models: [greedy, b]}]}\n"
    cfg = load_config(VARIANTS + keys)
    assert cfg.auth.keys[0].models == frozenset({"a-greedy", "b"})
    assert [i.id for i in cfg.listing(cfg.auth.keys[0].models)] == ["a-greedy", "b"]
    with pytest.raises(ConfigError, match="'nope' is not a model or a variant"):
        load_config(VARIANTS + "auth: {keys: [{key: k, models: [nope]}]}\n")


def test_schema_documents_params_and_variants() -> None:
    model = config_json_schema()["$defs"]["ModelIn"]["properties"]
    assert {"params", "variants"} <= set(model)
