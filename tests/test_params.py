"""Per-model request parameters and variants (issue 14): what an engine gets, seen
by fake engines that answer with the body they got, and one engine under two ids."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from helpers import config, load_counts
from swapyard.config import Params, load_config
from swapyard.testing import running_server
from swapyard.testing.server import fake_engine_cmd

THINK = {"chat_template_kwargs": {"enable_thinking": False}}
PARAMS: dict[str, Any] = {
    "defaults": {"temperature": 0.7, "top_p": 0.9, **THINK},
    "override": {"max_tokens": 64, "cache_prompt": True},
    "strip": ["logit_bias", "n_probs"],
}  # fmt: skip
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_params_strip_then_fill_defaults_then_override() -> None:
    """Stripped keys go, defaults fill only what the request leaves out, overrides
    always win; objects merge key by key, the request's keys over the defaults'."""
    p = Params(defaults=PARAMS["defaults"], override=PARAMS["override"], strip=("logit_bias",))
    doc = {"model": "m", "temperature": 0.1, "max_tokens": 4000, "logit_bias": {"1": 5},
           "chat_template_kwargs": {"reasoning": "low"}}  # fmt: skip
    assert p.apply(doc) == {
        "model": "m", "temperature": 0.1, "top_p": 0.9, "max_tokens": 64, "cache_prompt": True,
        "chat_template_kwargs": {"enable_thinking": False, "reasoning": "low"},
    }  # fmt: skip
    assert doc["max_tokens"] == 4000, "the request's own body is not changed"
    assert not Params() and Params(strip=("x",))


def test_a_variants_params_take_the_keys_they_name_from_the_models() -> None:
    """A variant's defaults, overrides and strips each take their key out of all
    three of its model's lists; the model's other keys stay."""
    base = Params(defaults={"temperature": 0.7, "top_k": 20}, override={"max_tokens": 64},
                  strip=("seed",))  # fmt: skip
    mine = Params(override={"temperature": 0.0}, defaults={"max_tokens": 256, "seed": 1})
    both = mine.over(base)
    assert dict(both.defaults) == {"top_k": 20, "max_tokens": 256, "seed": 1}
    assert dict(both.override) == {"temperature": 0.0}
    assert both.strip == ()


def model(model_id: str, **more: Any) -> dict[str, Any]:
    return {"cmd": fake_engine_cmd(model_id, echo_body=True), **more}


async def sent(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the engine got for a chat completion sent through swapyard."""
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = (await r.json())["json"]
        return doc


async def test_engine_gets_the_models_params_applied(http: aiohttp.ClientSession) -> None:
    """A model's ``params`` change every JSON body its engine gets (the OpenAI
    routes and llama.cpp's); a model without them gets the body as sent."""
    cfg = config({"m": model("m", params=PARAMS), "plain": model("plain")})
    async with running_server(cfg) as srv:
        body = {"model": "m", **CHAT, "temperature": 0.2, "max_tokens": 9000, "n_probs": 3,
                "logit_bias": {"5": 1}, "chat_template_kwargs": {"foo": 1}}  # fmt: skip
        assert await sent(http, srv.url, body) == {
            "model": "m", **CHAT, "temperature": 0.2, "top_p": 0.9, "max_tokens": 64,
            "cache_prompt": True, "chat_template_kwargs": {"enable_thinking": False, "foo": 1},
        }  # fmt: skip
        async with http.post(srv.url + "/completion?model=m", json={"prompt": "x"}) as r:
            got = (await r.json())["json"]
        assert (got["prompt"], got["temperature"], got["max_tokens"]) == ("x", 0.7, 64)
        assert await sent(http, srv.url, {"model": "plain", **CHAT, "n_probs": 3}) == {
            "model": "plain", **CHAT, "n_probs": 3,
        }  # fmt: skip


VARIANTS = {
    "base": model(
        "base",
        params={"defaults": {"temperature": 0.7}, "override": {"top_k": 40}},
        variants={
            "base-precise": {"params": {"override": {"temperature": 0}}, "name": "Precise",
                             "aliases": ["precise"]},
            "base-creative": {"params": {"defaults": {"temperature": 1.2, "min_p": 0.1}}},
        },
    ),
    "other": model("other"),
}  # fmt: skip


async def test_variants_share_one_engine_each_with_its_params(http: aiohttp.ClientSession) -> None:
    """Two variant ids and the model's own id run on one engine, started once; each
    request gets its variant's params over the model's, and the engine sees the
    model's id (the one name it knows)."""
    async with running_server(config(VARIANTS)) as srv:
        precise = await sent(http, srv.url, {"model": "precise", **CHAT, "temperature": 0.9})
        creative = await sent(http, srv.url, {"model": "base-creative", **CHAT})
        own = await sent(http, srv.url, {"model": "base", **CHAT})
        assert {k: precise[k] for k in ("model", "temperature", "top_k")} == {
            "model": "base", "temperature": 0, "top_k": 40,
        }  # fmt: skip
        assert {k: creative[k] for k in ("model", "temperature", "min_p", "top_k")} == {
            "model": "base", "temperature": 1.2, "min_p": 0.1, "top_k": 40,
        }  # fmt: skip
        assert (own["temperature"], own["top_k"]) == (0.7, 40)
        assert await load_counts(http, srv.url, "base") == {"cold": 1.0}
        async with http.get(srv.url + "/health") as r:
            assert list((await r.json())["models"]) == ["base", "other"]


async def test_variants_are_listed_with_the_model_they_run_on(http: aiohttp.ClientSession) -> None:
    """``/v1/models`` lists each variant after its model with ``variant_of``;
    ``/v1/models/{variant}`` says the same; the admin view shows the params."""
    async with running_server(config(VARIANTS)) as srv:
        async with http.get(srv.url + "/v1/models") as r:
            data = (await r.json())["data"]
        assert [(m["id"], m.get("variant_of")) for m in data] == [
            ("base", None), ("base-precise", "base"), ("base-creative", "base"), ("other", None),
        ]  # fmt: skip
        assert data[1]["name"] == "Precise" and data[1]["status"] == {"value": "unloaded"}
        async with http.get(srv.url + "/v1/models/precise") as r:  # an alias of a variant
            assert await r.json() == data[1]
        async with http.get(srv.url + "/api/models") as r:
            base = (await r.json())["models"]["base"]
        assert base["params"]["override"] == {"top_k": 40}
        assert base["variants"]["base-precise"]["params"]["override"] == {
            "top_k": 40, "temperature": 0,
        }  # fmt: skip


async def test_a_key_may_be_allowed_one_variant_only(http: aiohttp.ClientSession) -> None:
    """A key whose allow-list names a variant uses that variant (and sees only it
    listed), not its model under another name; a key naming the model uses all."""
    keys = [{"name": "one", "key": "k-one", "models": ["precise"]},
            {"name": "all", "key": "k-all", "models": ["base"]}]  # fmt: skip
    text = json.dumps({"scheduler": {"learn_memory": False}, "models": VARIANTS,
                       "auth": {"keys": keys}})  # fmt: skip
    async with running_server(load_config(text)) as srv:

        async def ask(key: str, name: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            body = {"model": name, **CHAT}
            async with http.post(srv.url + "/v1/chat/completions", json=body, headers=headers) as r:
                return r.status

        assert [await ask("k-one", n) for n in ("base-precise", "base", "base-creative")] == [
            200, 403, 403,
        ]  # fmt: skip
        assert [await ask("k-all", n) for n in ("base-precise", "base", "other")] == [200, 200, 403]
        async with http.get(srv.url + "/v1/models", headers={"Authorization": "Bearer k-one"}) as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["base-precise"]
