"""TabbyAPI (ExLlamaV2/V3): its command-line overrides of ``config.yml``, readiness
by ``GET /v1/model`` (answers once a model is loaded), and in-process load and
unload: ``POST /v1/model/unload``; ``POST /v1/model/load`` streams its progress as
server-sent events (``module`` of ``modules``, ``status``), relayed to clients.

The admin key (``admin_key_env``) is sent as ``x-admin-key``; without one the
engine is started with ``--disable-auth true`` (it listens on loopback only).
"""

from __future__ import annotations

from pathlib import PurePath

from swapyard.engines.base import (
    PORT,
    BaseAdapter,
    Control,
    EngineFields,
    FastSwap,
    FastSwapFailed,
    Launch,
    ProgressFn,
    flag,
)


def _dir_and_name(model: str) -> tuple[str, str]:
    p = PurePath(model)
    return (str(p.parent), p.name) if p.parent != PurePath(".") else ("models", p.name)


class TabbyInProcess:
    mode = "unload"
    gpu_kept = 512 * 2**20  # the process's CUDA context; measured after each unload
    host_held = 0.0

    async def sleep(self, ctl: Control) -> None:
        await ctl.call("POST", "/v1/model/unload")

    async def wake(self, ctl: Control, progress: ProgressFn) -> None:
        f = ctl.fields
        body: dict[str, object] = {"model_name": _dir_and_name(f.model or "")[1]}
        if f.context:
            body["max_seq_len"] = f.context
        if f.tensor_parallel > 1:
            body["tensor_parallel"] = True
        finished = False
        async for ev in ctl.events("POST", "/v1/model/load", body):
            if not isinstance(ev, dict):
                continue
            if "error" in ev:
                raise FastSwapFailed(f"/v1/model/load: {ev['error']}")
            module, modules = ev.get("module"), ev.get("modules")
            if isinstance(module, int) and isinstance(modules, int) and modules > 0:
                kind = ev.get("model_type", "model")
                progress(module / modules, f"loading {kind}: module {module} of {modules}")
            finished = finished or (ev.get("status") == "finished" and module == modules)
        if not finished:
            raise FastSwapFailed("/v1/model/load ended before the model was loaded")


class TabbyApi(BaseAdapter):
    kind = "tabbyapi"

    def launch(self, f: EngineFields) -> Launch:
        if not f.model:
            raise ValueError("engine tabbyapi needs `model:` (the model's folder)")
        if f.quantization is not None:
            raise ValueError("tabbyapi reads the quantization (EXL2/EXL3 bpw) from the folder")
        model_dir, name = _dir_and_name(f.model)
        args = [*(f.launcher or ("python3", "main.py"))]
        args += ["--host", "127.0.0.1", "--port", PORT]
        args += ["--model-dir", model_dir, "--model-name", name]
        flag(args, "--max-seq-len", f.context)
        if f.tensor_parallel > 1:
            args += ["--tensor-parallel", "true"]
            if "--gpu-split" not in f.extra_args:  # an explicit split wins
                args += ["--gpu-split-auto", "true"]
        headers: dict[str, str] = {}
        if f.admin_key:
            headers["x-admin-key"] = f.admin_key
        else:
            args += ["--disable-auth", "true"]
        return Launch(
            tuple(args + list(f.extra_args)),
            check_endpoint="/v1/model",
            check_headers=headers,
            upstream_headers={"x-api-key": f.admin_key} if f.admin_key else {},
            stream_usage=True,
            messages_api=False,  # no /v1/messages: translated
        )

    def fast(self, f: EngineFields) -> FastSwap | None:
        return TabbyInProcess() if f.fast_swap else None
