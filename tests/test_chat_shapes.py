"""Issue 14: what the Ollama and Anthropic fronts read out of an engine's
OpenAI-style answer, read once for both (``swapyard.api.chat_shapes``)."""

from __future__ import annotations

from typing import Any

import pytest

from swapyard.api.chat_shapes import engine_message, first_choice, tool_arguments
from swapyard.errors import UpstreamError


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [('{"city": "Oslo"}', {"city": "Oslo"}), ({"city": "Oslo"}, {"city": "Oslo"}),
     ("", {}), ("  ", {}), (None, {}), (5, {}), (["a"], {}),
     ('{"city": ', {"arguments": '{"city": '}), ("[1, 2]", {"arguments": "[1, 2]"}),
     ('"Oslo"', {"arguments": '"Oslo"'})],
)  # fmt: skip
def test_tool_arguments_are_an_object_and_keep_what_the_model_wrote(
    raw: Any, parsed: dict[str, Any]
) -> None:
    assert tool_arguments(raw) == parsed


@pytest.mark.parametrize(
    ("body", "said"),
    [(b'{"error": {"message": "too long", "type": "x"}}', "too long"),
     (b'{"error": "no such model"}', "no such model"),
     (b'{"detail": "Not Found"}', "Not Found"),
     (b'{"message": "bad"}', "bad"),
     (b'{"error": {"message": ""}, "detail": [{"msg": "x"}]}',
      'HTTP 422: {"error": {"message": ""}, "detail": [{"msg": "x"}]}'),
     (b"upstream broke\n", "HTTP 422: upstream broke"),
     (b"", "HTTP 422"),
     (b"\xff" * 600, "HTTP 422: " + "\ufffd" * 490 + "…")],
)  # fmt: skip
def test_an_engines_error_message_is_read_from_any_shape(body: bytes, said: str) -> None:
    assert engine_message(422, body) == said


@pytest.mark.parametrize("doc", [None, [1], {"usage": 5}, {"choices": []}, {"choices": [1]},
                                 {"choices": {"0": {}}}])  # fmt: skip
def test_an_answer_without_a_choice_is_an_upstream_error(doc: Any) -> None:
    with pytest.raises(UpstreamError) as err:
        first_choice(doc, "m")
    assert err.value.status == 502 and err.value.model == "m"
