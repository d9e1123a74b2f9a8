"""llama-server's flags as ``xllamacpp.CommonParams`` fields: one table, one parser.

Each row names the flags (every spelling llama-server accepts), the field path it
sets (``sampling.temp``) and how the text becomes the field's value. A flag not in
the table is refused by name: the compiled ``llama-server`` takes it (issue 14).
``tests/test_xllamacpp_launcher.py`` walks the table against a real CommonParams,
so a row naming a field the wheel lacks fails there, not at a user's start.

Where llama-server and this launcher differ: ``-c`` defaults to 2048 (not the
model's training context) and ``-np`` to 1 (not 4 sharing one KV cache), so an
engine started without them stays small; ``--mlock`` and ``--no-mmap`` (removed
from llama-server in favour of ``--load-mode``) are still taken.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import xllamacpp as x

Convert = Callable[[str], Any]


class FlagError(ValueError):
    """A flag this launcher does not take, or a value it cannot read: one line."""


@dataclass(frozen=True, slots=True)
class Option:
    """A flag followed by a value, written to every field in ``paths``."""

    names: tuple[str, ...]
    paths: tuple[str, ...]
    convert: Convert
    merge: bool = False  # several uses add up (aliases, keys, LoRAs)
    secret: bool = False  # its value never appears in a message


@dataclass(frozen=True, slots=True)
class Switch:
    """A flag alone, setting fixed values."""

    names: tuple[str, ...]
    sets: tuple[tuple[str, Any], ...]


Flag = Option | Switch


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("is not a number") from None


def _opt(*names: str, to: str | tuple[str, ...], conv: Convert = _int, **kw: bool) -> Option:
    return Option(names, (to,) if isinstance(to, str) else to, conv, **kw)


def _sw(*names: str, to: str, value: Any = True) -> Switch:
    return Switch(names, ((to, value),))


def _pair(on: tuple[str, ...], off: tuple[str, ...], to: str, negated: bool = False) -> list[Flag]:
    """``--x`` / ``--no-x``; ``negated`` for fields that say the opposite (``no_perf``)."""
    return [_sw(*on, to=to, value=not negated), _sw(*off, to=to, value=negated)]


def _choice(enum: Any, values: Mapping[str, str]) -> Convert:
    def convert(text: str) -> Any:
        if text not in values:
            raise ValueError(f"is not one of {', '.join(values)}")
        return enum[values[text]]

    return convert


_TRUE, _FALSE, _AUTO = ("on", "enabled", "true", "1"), ("off", "disabled", "false", "0"), "auto"


def _onoff(text: str) -> bool:
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError("is not on or off")


def _tristate(on: Any, off: Any, auto: Any) -> Convert:
    """llama.cpp's on/off/auto (``-fa``, ``--reasoning``)."""

    def convert(text: str) -> Any:
        if text in (_AUTO, "-1"):
            return auto
        return on if _onoff(text) else off

    return convert


def _names(text: str) -> set[str]:
    return {n.strip() for n in text.split(",") if n.strip()}


def _list(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from exc


def _key_file(path: str) -> list[str]:
    """One key a line; ``#`` starts a comment line (llama-server's format)."""
    lines = (line.strip() for line in _file(path).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _template_kwargs(text: str) -> dict[str, str]:
    """A JSON object; llama.cpp keeps each value as JSON text."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not JSON: {exc.msg}") from exc
    if not isinstance(doc, dict):
        raise ValueError("is not a JSON object")
    return {k: json.dumps(v) for k, v in doc.items()}


def _layers(text: str) -> int:
    return {"auto": -1, "all": -2}.get(text) or _int(text)


def _seed(text: str) -> int:
    n = _int(text)
    return int(x.LLAMA_DEFAULT_SEED) if n == -1 else n


def _split(text: str) -> list[float]:
    """``3,1`` → the 128 proportions CommonParams holds."""
    parts = [_float(p) for p in text.replace("/", ",").split(",")]
    if len(parts) > 128:
        raise ValueError("names more than 128 devices")
    return parts + [0.0] * (128 - len(parts))


def _loras(text: str) -> list[Any]:
    return [x.CommonAdapterLoraInfo(p, 1.0) for p in _list(text)]


def _loras_scaled(text: str) -> list[Any]:
    out = []
    for item in _list(text):
        path, sep, scale = item.rpartition(":")
        if not sep:
            raise ValueError("is not FNAME:SCALE,...")
        out.append(x.CommonAdapterLoraInfo(path, _float(scale)))
    return out


def _samplers(text: str) -> str:
    """``top_k;temperature``: llama.cpp drops a name it does not know; we refuse it."""
    names = [n for n in text.split(";") if n]
    scratch = x.CommonParams().sampling
    scratch.samplers = text
    if not names or len(scratch.samplers.split(";")) != len(names):
        raise ValueError("names a sampler llama.cpp does not know")
    return str(scratch.samplers)


def _scale(text: str) -> float:
    n = _float(text)
    if n == 0:
        raise ValueError("is not a scale factor")
    return 1.0 / n


def _enum(enum: Any, prefix: str, names: str, **spelled: str) -> Convert:
    """llama.cpp's names for an enum's members: ``mean`` → ``PREFIX_MEAN``."""
    members = {n: prefix + n.upper().replace("-", "_").replace("+", "_") for n in names.split()}
    return _choice(enum, {**members, **{n: prefix + m for n, m in spelled.items()}})


_POOLING = _enum(x.llama_pooling_type, "LLAMA_POOLING_TYPE_", "none mean cls last rank")
_CACHE = _enum(x.ggml_type, "GGML_TYPE_", "f32 f16 bf16 q8_0 q4_0 q4_1 iq4_nl q5_0 q5_1")
_SPLIT = _enum(x.llama_split_mode, "LLAMA_SPLIT_MODE_", "none layer row tensor")
_ROPE = _enum(x.llama_rope_scaling_type, "LLAMA_ROPE_SCALING_TYPE_", "none linear yarn")
_NUMA = _enum(x.ggml_numa_strategy, "GGML_NUMA_STRATEGY_", "distribute isolate numactl")
_REASONING_FORMAT = _enum(
    x.common_reasoning_format, "COMMON_REASONING_FORMAT_", "none deepseek deepseek-legacy auto"
)
_LOAD = _enum(
    x.llama_load_mode, "LLAMA_LOAD_MODE_", "auto none mmap mlock mmap+mlock", dio="DIRECT_IO"
)
_FA = x.llama_flash_attn_type
_FLASH = _tristate(
    _FA.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    _FA.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    _FA.LLAMA_FLASH_ATTN_TYPE_AUTO,
)
_PRIORITY = x.ggml_sched_priority


def _cpu(prefix: str, batch: str = "") -> list[Flag]:
    """The CPU flags of ``cpuparams`` (``-t``…) or ``cpuparams_batch`` (``-tb``…)."""
    return [
        _opt(f"--cpu-strict{batch}", to=f"{prefix}.strict_cpu", conv=lambda t: bool(_int(t))),
        _opt(f"--prio{batch}", to=f"{prefix}.priority", conv=lambda t: _PRIORITY(_int(t))),
        _opt(f"--poll{batch}", to=f"{prefix}.poll"),
    ]


S = "sampling"
FLAGS: tuple[Flag, ...] = (
    # where it listens, what it serves
    _opt("-m", "--model", to="model.path", conv=str),
    _opt("--host", to="hostnames", conv=_list),
    _opt("--port", to="port"),
    _opt("-a", "--alias", to="model_alias", conv=_names, merge=True),
    _opt("--tags", to="model_tags", conv=_names, merge=True),
    _opt("--api-key", to="api_keys", conv=_list, merge=True, secret=True),
    _opt("--api-key-file", to="api_keys", conv=_key_file, merge=True),
    _opt("--api-prefix", to="api_prefix", conv=str),
    _opt("--path", to="public_path", conv=str),
    _opt("--ssl-key-file", to="ssl_file_key", conv=str),
    _opt("--ssl-cert-file", to="ssl_file_cert", conv=str),
    _opt("--cors-origins", to="cors_origins", conv=str),
    _opt("--cors-methods", to="cors_methods", conv=str),
    _opt("--cors-headers", to="cors_headers", conv=str),
    *_pair(("--cors-credentials",), ("--no-cors-credentials",), "cors_credentials"),
    _sw("--reuse-port", to="reuse_port"),
    _opt("-to", "--timeout", to=("timeout_read", "timeout_write")),
    _opt("--threads-http", to="n_threads_http"),
    _opt("--sse-ping-interval", to="sse_ping_interval"),
    _sw("--metrics", to="endpoint_metrics"),
    _sw("--props", to="endpoint_props"),
    *_pair(("--slots",), ("--no-slots",), "endpoint_slots"),
    *_pair(("--ui", "--webui"), ("--no-ui", "--no-webui"), "ui"),
    _opt("--slot-save-path", to="slot_save_path", conv=str),
    _opt("--media-path", to="media_path", conv=str),
    _opt("--sleep-idle-seconds", to="sleep_idle_seconds"),
    _sw("--offline", to="offline"),
    # context, slots, batching, KV cache
    _opt("-c", "--ctx-size", to="n_ctx"),
    _opt("-np", "--parallel", to="n_parallel"),
    *_pair(("-kvu", "--kv-unified"), ("-no-kvu", "--no-kv-unified"), "kv_unified"),
    _opt("--kv-unified-per-slot", to="kv_unified_per_slot"),
    *_pair(("-cb", "--cont-batching"), ("-nocb", "--no-cont-batching"), "cont_batching"),
    _opt("-b", "--batch-size", to="n_batch"),
    _opt("-ub", "--ubatch-size", to="n_ubatch"),
    _opt("-n", "--predict", "--n-predict", to="n_predict"),
    _opt("--keep", to="n_keep"),
    _sw("--swa-full", to="swa_full"),
    _opt("-fa", "--flash-attn", to="flash_attn_type", conv=_FLASH),
    _opt("-ctk", "--cache-type-k", to="cache_type_k", conv=_CACHE),
    _opt("-ctv", "--cache-type-v", to="cache_type_v", conv=_CACHE),
    *_pair(("-kvo", "--kv-offload"), ("-nkvo", "--no-kv-offload"), "no_kv_offload", True),
    *_pair(("--context-shift",), ("--no-context-shift",), "ctx_shift"),
    *_pair(("--cache-prompt",), ("--no-cache-prompt",), "cache_prompt"),
    _opt("--cache-reuse", to="n_cache_reuse"),
    _opt("-cram", "--cache-ram", to="cache_ram_mib"),
    *_pair(("--cache-idle-slots",), ("--no-cache-idle-slots",), "cache_idle_slots"),
    _opt("-ctxcp", "--ctx-checkpoints", "--swa-checkpoints", to="n_ctx_checkpoints"),
    _opt("-cms", "--checkpoint-min-step", to="checkpoint_min_step"),
    _opt("-sps", "--slot-prompt-similarity", to="slot_prompt_similarity", conv=_float),
    # embeddings and reranking
    _sw("--embedding", "--embeddings", to="embedding"),
    _opt("--pooling", to="pooling_type", conv=_POOLING),
    Switch(
        ("--rerank", "--reranking"),
        (("embedding", True), ("pooling_type", x.llama_pooling_type.LLAMA_POOLING_TYPE_RANK)),
    ),
    _opt("--embd-normalize", to="embd_normalize"),
    # chat template and reasoning
    *_pair(("--jinja",), ("--no-jinja",), "use_jinja"),
    _opt("--chat-template", to="chat_template", conv=str),
    _opt("--chat-template-file", to="chat_template", conv=_file),
    _opt("--chat-template-kwargs", to="default_template_kwargs", conv=_template_kwargs, merge=True),
    _opt("--reasoning-format", to="reasoning_format", conv=_REASONING_FORMAT),
    _opt("-rea", "--reasoning", to="enable_reasoning", conv=_tristate(1, 0, -1)),
    _opt("--reasoning-budget", to=f"{S}.reasoning_budget_tokens"),
    _opt("--reasoning-budget-message", to=f"{S}.reasoning_budget_message", conv=str),
    _sw("--skip-chat-parsing", to="force_pure_content_parser"),
    _sw("--no-skip-chat-parsing", to="force_pure_content_parser", value=False),
    *_pair(("--prefill-assistant",), ("--no-prefill-assistant",), "prefill_assistant"),
    _sw("-sp", "--special", to="special"),
    # the model: devices, memory, LoRA, multimodal, RoPE
    _opt("-ngl", "--gpu-layers", "--n-gpu-layers", to="n_gpu_layers", conv=_layers),
    _opt("-sm", "--split-mode", to="split_mode", conv=_SPLIT),
    _opt("-ts", "--tensor-split", to="tensor_split", conv=_split),
    _opt("-mg", "--main-gpu", to="main_gpu"),
    _opt("-fit", "--fit", to="fit_params", conv=_onoff),
    _opt("-fitc", "--fit-ctx", to="fit_params_min_ctx"),
    _opt("-lm", "--load-mode", to="load_mode", conv=_LOAD),
    _sw("--mlock", to="load_mode", value=x.llama_load_mode.LLAMA_LOAD_MODE_MMAP_MLOCK),
    _sw("--no-mmap", to="load_mode", value=x.llama_load_mode.LLAMA_LOAD_MODE_NONE),
    _opt("--numa", to="numa", conv=_NUMA),
    _sw("--no-host", to="no_host"),
    *_pair(("--op-offload",), ("--no-op-offload",), "no_op_offload", True),
    _sw("--check-tensors", to="check_tensors"),
    *_pair(("--warmup",), ("--no-warmup",), "warmup"),
    _opt("--lora", to="lora_adapters", conv=_loras, merge=True),
    _opt("--lora-scaled", to="lora_adapters", conv=_loras_scaled, merge=True),
    _sw("--lora-init-without-apply", to="lora_init_without_apply"),
    _opt("-mm", "--mmproj", to="mmproj.path", conv=str),
    _sw("--no-mmproj", to="no_mmproj"),
    *_pair(("--mmproj-offload",), ("--no-mmproj-offload",), "mmproj_use_gpu"),
    _opt("--image-min-tokens", to="image_min_tokens"),
    _opt("--image-max-tokens", to="image_max_tokens"),
    _opt("--rope-scaling", to="rope_scaling_type", conv=_ROPE),
    _opt("--rope-scale", to="rope_freq_scale", conv=_scale),
    _opt("--rope-freq-base", to="rope_freq_base", conv=_float),
    _opt("--rope-freq-scale", to="rope_freq_scale", conv=_float),
    _opt("--yarn-orig-ctx", to="yarn_orig_ctx"),
    *(
        _opt(f"--yarn-{n}", to=f"yarn_{n.replace('-', '_')}", conv=_float)
        for n in ("ext-factor", "attn-factor", "beta-slow", "beta-fast")
    ),
    # threads
    _opt("-t", "--threads", to="cpuparams.n_threads"),
    _opt("-tb", "--threads-batch", to="cpuparams_batch.n_threads"),
    *_cpu("cpuparams"),
    *_cpu("cpuparams_batch", "-batch"),
    # logging
    _sw("-v", "--verbose", "--log-verbose", to="verbosity", value=2**31 - 1),
    _opt("-lv", "--verbosity", "--log-verbosity", to="verbosity"),
    _sw("--log-disable", to="verbosity", value=-1),
    *_pair(("--log-jsonl",), ("--no-log-jsonl",), "log_json"),
    *_pair(("--perf",), ("--no-perf",), "no_perf", True),
    *_pair(("-e", "--escape"), ("--no-escape",), "escape"),
    # sampling defaults (a request's own fields win)
    _opt("-s", "--seed", to=f"{S}.seed", conv=_seed),
    _opt("--samplers", to=f"{S}.samplers", conv=_samplers),
    _opt("--temp", "--temperature", to=f"{S}.temp", conv=_float),
    _opt("--top-k", to=f"{S}.top_k"),
    _opt("--top-p", to=f"{S}.top_p", conv=_float),
    _opt("--min-p", to=f"{S}.min_p", conv=_float),
    _opt("--typical", "--typical-p", to=f"{S}.typ_p", conv=_float),
    _opt("--xtc-probability", to=f"{S}.xtc_probability", conv=_float),
    _opt("--xtc-threshold", to=f"{S}.xtc_threshold", conv=_float),
    _opt("--repeat-last-n", to=f"{S}.penalty_last_n"),
    _opt("--repeat-penalty", to=f"{S}.penalty_repeat", conv=_float),
    _opt("--presence-penalty", to=f"{S}.penalty_present", conv=_float),
    _opt("--frequency-penalty", to=f"{S}.penalty_freq", conv=_float),
    _opt("--dry-multiplier", to=f"{S}.dry_multiplier", conv=_float),
    _opt("--dry-base", to=f"{S}.dry_base", conv=_float),
    _opt("--dry-allowed-length", to=f"{S}.dry_allowed_length"),
    _opt("--dry-penalty-last-n", to=f"{S}.dry_penalty_last_n"),
    _opt("--dynatemp-range", to=f"{S}.dynatemp_range", conv=_float),
    _opt("--dynatemp-exp", to=f"{S}.dynatemp_exponent", conv=_float),
    _opt("--mirostat", to=f"{S}.mirostat"),
    _opt("--mirostat-lr", to=f"{S}.mirostat_eta", conv=_float),
    _opt("--mirostat-ent", to=f"{S}.mirostat_tau", conv=_float),
    _opt("--adaptive-target", to=f"{S}.adaptive_target", conv=_float),
    _opt("--adaptive-decay", to=f"{S}.adaptive_decay", conv=_float),
    _sw("--ignore-eos", to=f"{S}.ignore_eos"),
    _sw("-bs", "--backend-sampling", to=f"{S}.backend_sampling"),
)

BY_NAME: dict[str, Flag] = {name: f for f in FLAGS for name in f.names}
assert len(BY_NAME) == sum(len(f.names) for f in FLAGS), "a flag name is in two rows"

COMPILED_HINT = (
    "the xllamacpp launcher does not take it; run the compiled llama-server for it "
    "($SWAPYARD_LLAMA_SERVER, or `launcher:` in the model's config)"
)


def parse(argv: Iterable[str]) -> list[tuple[Flag, Any]]:
    """Each flag of ``argv`` with its converted value (None for a switch), in order.

    Raises ``FlagError`` naming the first flag not in the table, a missing value
    or one that does not convert. A value is never named where it may be a key:
    a secret's, or a word without its flag (``--api-kee sk-…`` stops at the flag;
    a stray word is told by the flag before it)."""
    out: list[tuple[Flag, Any]] = []
    args = iter(argv)
    last = "the start"
    for arg in args:
        flag = BY_NAME.get(arg)
        if flag is None and not arg.startswith("-"):
            raise FlagError(f"a value without its flag after {last}: {COMPILED_HINT}")
        if flag is None:
            raise FlagError(f"unsupported flag {arg!r}: {COMPILED_HINT}")
        last = arg
        if isinstance(flag, Switch):
            out.append((flag, None))
            continue
        text = next(args, None)
        if text is None:
            raise FlagError(f"{arg} needs a value")
        try:
            out.append((flag, flag.convert(text)))
        except ValueError as exc:
            shown = "" if flag.secret else f" {text!r}"
            raise FlagError(f"{arg}:{shown} {exc}") from exc
    return out


def apply(params: Any, parsed: Iterable[tuple[Flag, Any]]) -> None:
    """Write each parsed flag into ``params`` (an ``xllamacpp.CommonParams``)."""
    merged: set[str] = set()
    for flag, value in parsed:
        if isinstance(flag, Switch):
            for path, fixed in flag.sets:
                _set(params, path, fixed)
            continue
        for path in flag.paths:
            _set(params, path, _merge(_get(params, path), value) if path in merged else value)
            if flag.merge:
                merged.add(path)


def _merge(old: Any, new: Any) -> Any:
    """A later -a/--api-key/--lora/--chat-template-kwargs adds to the earlier ones."""
    if isinstance(old, set):
        return old | new
    if isinstance(old, dict):
        return {**old, **new}
    return [*old, *new]


def _get(params: Any, path: str) -> Any:
    obj = params
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(params: Any, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(params, parent) if parent else params, name, value)
