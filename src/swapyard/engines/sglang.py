"""SGLang: ``python -m sglang.launch_server`` flags, ``/health``, and the memory
saver (``--enable-memory-saver --enable-weights-cpu-backup``): ``POST
/release_memory_occupation`` frees the weights (kept in host RAM) and the KV
cache; it is refused while requests run, so swapyard only releases an idle
engine (and retries once); ``POST /resume_memory_occupation`` takes them back.
"""

from __future__ import annotations

import asyncio

from swapyard.engines.base import (
    PORT,
    BaseAdapter,
    Control,
    EngineFields,
    FastSwap,
    FastSwapFailed,
    Launch,
    MemoryShare,
    ProgressFn,
    declared_share,
    flag,
)

SHARE_FLAG = "--mem-fraction-static"

RETRY_AFTER = 0.5


class SglangMemorySaver:
    mode = "memory-saver"
    gpu_kept = 2**30  # CUDA context and graphs; measured after each release
    host_held = 1.0  # the weights' CPU backup

    async def sleep(self, ctl: Control) -> None:
        try:
            await ctl.call("POST", "/release_memory_occupation", {})
        except FastSwapFailed:
            await asyncio.sleep(RETRY_AFTER)  # a request may still be finishing
            await ctl.call("POST", "/release_memory_occupation", {})

    async def wake(self, ctl: Control, progress: ProgressFn) -> None:
        progress(0.0, "resuming memory occupation")
        await ctl.call("POST", "/resume_memory_occupation", {})
        progress(1.0, "resumed")


class Sglang(BaseAdapter):
    kind = "sglang"

    def launch(self, f: EngineFields) -> Launch:
        if not f.model:
            raise ValueError("engine sglang needs `model:` (a Hugging Face id or a local folder)")
        args = [*(f.launcher or ("python3", "-m", "sglang.launch_server"))]
        args += ["--model-path", f.model, "--host", "127.0.0.1", "--port", PORT]
        args += ["--served-model-name", f.served_name]
        flag(args, "--context-length", f.context)
        flag(args, "--quantization", f.quantization)
        if f.tensor_parallel > 1:
            flag(args, "--tp-size", f.tensor_parallel)
        flag(args, SHARE_FLAG, f.gpu_memory_fraction)
        if f.fast_swap:
            # Without the CPU backup, released weights would come back as garbage.
            args += ["--enable-memory-saver", "--enable-weights-cpu-backup"]
        share = MemoryShare(SHARE_FLAG, of_free=True, declared=declared_share(f, SHARE_FLAG))
        return Launch(
            tuple(args + list(f.extra_args)), stream_usage=True, share=share, messages_api=False
        )

    def fast(self, f: EngineFields) -> FastSwap | None:
        return SglangMemorySaver() if f.fast_swap else None
