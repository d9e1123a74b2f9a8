"""vLLM: ``vllm serve`` flags, ``/health``, and sleep mode.

Sleep mode (``--enable-sleep-mode`` with ``VLLM_SERVER_DEV_MODE=1``): ``POST
/sleep?level=1`` moves the weights to host RAM and drops the KV cache; level 2
drops the weights too. ``POST /wake_up`` brings level 1 back; level 2 needs
``/wake_up?tags=weights``, ``/collective_rpc`` ``reload_weights``, then
``/wake_up?tags=kv_cache``. ``GET /is_sleeping`` says where it is.
"""

from __future__ import annotations

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

SHARE_FLAG = "--gpu-memory-utilization"


# What a vLLM engine keeps on its GPU asleep: its CUDA context and the memory
# outside torch's allocator (seen on an H200: ~0.7 GiB, whatever the model's size).
# Measured after each sleep; this is only the figure before the first measurement.
SLEEP_KEPT = 2**30


class VllmSleep:
    mode = "sleep"
    gpu_kept = SLEEP_KEPT

    def __init__(self, level: int) -> None:
        self.level = level
        self.host_held = 1.0 if level == 1 else 0.0  # level 1 keeps the weights in RAM

    async def sleep(self, ctl: Control) -> None:
        await ctl.call("POST", "/sleep", params={"level": str(self.level)})
        await _expect_sleeping(ctl, True)

    async def wake(self, ctl: Control, progress: ProgressFn) -> None:
        if self.level == 1:
            progress(0.0, "waking up (sleep level 1)")
            await ctl.call("POST", "/wake_up")
        else:
            progress(0.0, "waking up: weights")
            await ctl.call("POST", "/wake_up", params={"tags": "weights"})
            progress(0.33, "reloading weights")
            await ctl.call("POST", "/collective_rpc", {"method": "reload_weights"})
            progress(0.66, "waking up: KV cache")
            await ctl.call("POST", "/wake_up", params={"tags": "kv_cache"})
        await _expect_sleeping(ctl, False)
        progress(1.0, "awake")


async def _expect_sleeping(ctl: Control, want: bool) -> None:
    got = await ctl.call("GET", "/is_sleeping")
    if not isinstance(got, dict) or got.get("is_sleeping") is not want:
        raise FastSwapFailed(f"/is_sleeping answered {got!r}, expected is_sleeping={want}")


class Vllm(BaseAdapter):
    kind = "vllm"

    def launch(self, f: EngineFields) -> Launch:
        if not f.model:
            raise ValueError("engine vllm needs `model:` (a Hugging Face id or a local folder)")
        args = [*(f.launcher or ("vllm",)), "serve", f.model]
        args += ["--host", "127.0.0.1", "--port", PORT, "--served-model-name", f.served_name]
        flag(args, "--max-model-len", f.context)
        flag(args, "--quantization", f.quantization)
        if f.tensor_parallel > 1:
            flag(args, "--tensor-parallel-size", f.tensor_parallel)
        flag(args, SHARE_FLAG, f.gpu_memory_fraction)
        env = {}
        if f.fast_swap:
            args.append("--enable-sleep-mode")
            env["VLLM_SERVER_DEV_MODE"] = "1"  # the /sleep and /wake_up routes
        # Without a declared share, swapyard passes the share of the need it placed
        # (vLLM's default, 0.9 of the device, defeats any packing).
        share = MemoryShare(SHARE_FLAG, declared=declared_share(f, SHARE_FLAG))
        return Launch(
            tuple(args + list(f.extra_args)), env=env, stream_usage=True, share=share,
            messages_api=False,  # /v1/messages only in recent versions: translated
        )  # fmt: skip

    def fast(self, f: EngineFields) -> FastSwap | None:
        return VllmSleep(f.sleep_level) if f.fast_swap else None
