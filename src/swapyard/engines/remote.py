"""Another OpenAI-compatible server, with no process: ``base_url`` (with or
without the trailing ``/v1``) and an API key from the environment. Ready when
``GET /v1/models`` answers; memory and scheduling do not apply."""

from __future__ import annotations

from swapyard.engines.base import BaseAdapter, EngineFields, Launch


class OpenAiRemote(BaseAdapter):
    kind = "openai"

    def launch(self, f: EngineFields) -> Launch:
        if not f.base_url:
            raise ValueError("engine openai needs `base_url:` (e.g. https://host/v1)")
        base = f.base_url.rstrip("/").removesuffix("/v1")
        auth = {"Authorization": f"Bearer {f.api_key}"} if f.api_key else {}
        return Launch(
            (),
            proxy=base,
            check_endpoint="/v1/models",
            check_headers=auth,
            upstream_headers=auth,
            upstream_model=f.model,
            stream_usage=True,
            messages_api=False,  # an OpenAI-compatible server: /v1/messages translated
        )
