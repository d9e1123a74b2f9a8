"""The ``peers:`` section (issue 15): validated at load, keys from the environment,
never shown."""

from __future__ import annotations

import pytest

from swapyard.config import load_config
from swapyard.errors import ConfigError

ENGINE = "python -m swapyard.testing.fake_engine --port ${PORT}"


def test_peers_load_with_keys_from_the_environment() -> None:
    """A peer's url loses its trailing slash; its keys are read from the named variables."""
    config = load_config(
        "models: {}\npeers:\n  b: {url: 'http://127.0.0.2:8080/', key_env: K, admin_key_env: A}\n",
        environ={"K": "data-key", "A": "admin-key"},
    )
    peer = config.peers["b"]
    assert peer.url == "http://127.0.0.2:8080"
    assert peer.data_headers() == {"Authorization": "Bearer data-key"}
    assert peer.admin_headers() == {"Authorization": "Bearer admin-key"}


def test_peer_keys_are_never_shown() -> None:
    """A peer's repr (logs, errors) carries neither of its keys."""
    config = load_config(
        "models: {}\npeers:\n  b: {url: 'http://h:1', key_env: K, admin_key_env: A}\n",
        environ={"K": "data-key", "A": "admin-key"},
    )
    assert "data-key" not in repr(config) and "admin-key" not in repr(config)


def test_peer_without_keys_sends_none() -> None:
    """A loopback peer without keys gets no Authorization header."""
    config = load_config("models: {}\npeers:\n  b: {url: 'http://127.0.0.2:1'}\n")
    assert config.peers["b"].data_headers() == {} and config.peers["b"].admin_headers() == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("b: {url: 'http://h:1', key_env: UNSET}", "peers.b.key_env: environment variable"),
        ("b: {url: 'http://h:1/v1'}", "peers.b.url: expected http://host:port"),
        ("b: {url: 'h:1'}", "peers.b.url"),
        ("local: {url: 'http://h:1'}", "not 'local'"),
        ("b: {url: 'http://h:1', keys: x}", "unknown key 'keys'"),
        ("b: {url: 'http://h:1', timeout: 0}", "peers.b.timeout"),
        ("b: {url: 'http://user:pw@h:1'}", "peers.b.url: credentials in the URL"),
        ("b: {url: 'http://tok@h:1'}", "peers.b.url: credentials in the URL"),
    ],
)
def test_bad_peer_is_refused_naming_the_key(text: str, says: str) -> None:
    """A wrong peer entry is a ConfigError naming the key and why."""
    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        load_config(f"models: {{}}\npeers:\n  {text}\n", environ={})


def test_engines_do_not_inherit_peer_keys() -> None:
    """The variables holding peers' keys are dropped from every engine's environment."""
    config = load_config(
        f"models:\n  m: {{cmd: '{ENGINE}'}}\npeers:\n  b: {{url: 'http://h:1', key_env: K}}\n",
        environ={"K": "data-key"},
    )
    assert "K" in config.models["m"].env_drop
