"""Loading a policy: a full checkpoint (hub id or local directory) or a LoRA adapter merged into
its base in memory, with the checks on weight formats and remote code."""

from __future__ import annotations

import filecmp
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import is_offline_mode

from semrl.core.errors import ModelError
from semrl.core.layout import ADAPTER_BASE_FILE, ADAPTER_CONFIG_FILE
from semrl.models.cache import GEMMA_270M, TINY_MODEL, resolve_model
from semrl.models.hardware import select_dtype
from semrl.models.lora import is_adapter_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from semrl.config.model import ModelConfig

logger = logging.getLogger(__name__)

_warned_remote_code: set[str] = set()


def model_source_problem(name: str, revision: str | None = None, files: Sequence[str] = ("config.json",)) -> str | None:
    """Why the model (or sentence encoder) `name` cannot be loaded, found without loading it; None
    when it can (as far as can be told without the network).

    `name` is fine when it is a packaged name ('tiny', 'gemma-3-270m'), an existing local path, or a
    hub id that is in the Hugging Face cache (any of `files` there) or, online, any valid hub id.
    Used before a command trains anything, so that a model needed only at its end (the second
    evaluation encoder, the judge) is not found missing after hours of training.
    """
    if name in (TINY_MODEL, GEMMA_270M) or Path(name).expanduser().exists():
        return None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return f"{name!r} is not a local directory (looked in {Path(name).expanduser().absolute()}) nor a hub id"
    if is_offline_mode() and not any(
        isinstance(try_to_load_from_cache(name, f, revision=revision), str) for f in files
    ):
        return (
            f"{name!r} is not a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE is set "
            f"(nothing is downloaded)"
        )
    return None


def check_weights_format(location: str | Path, allow_pickle: bool) -> None:
    """ModelError for a local checkpoint with pickle weights only, unless `model.allow_pickle`."""
    folder = Path(str(location))
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.glob("*.bin") if p.name.startswith("pytorch_model"))
    if pickled:
        raise ModelError(
            f"{folder}: has pickle weights only ({', '.join(pickled)}); loading them runs code from the file. "
            f"Convert them to safetensors, or set model.allow_pickle: true if you trust their source."
        )


def warn_remote_code(location: str | Path, trust_remote_code: bool) -> None:
    """Warn once per model directory when `trust_remote_code` will run Python code from it."""
    folder = Path(str(location))
    code = sorted(p.name for p in folder.glob("*.py")) if trust_remote_code and folder.is_dir() else []
    if code and str(folder) not in _warned_remote_code:
        _warned_remote_code.add(str(folder))
        logger.warning("model.trust_remote_code is true: running Python code from %s (%s)", folder, ", ".join(code))


def _load_pretrained(
    cfg: ModelConfig, location: str | Path, revision: str | None, with_tokenizer: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """A full checkpoint (hub id or local directory) and its tokenizer (None without
    `with_tokenizer`: Gemma 3's takes seconds to load), with a ModelError that says what to do when
    it cannot be loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_weights_format(location, cfg.allow_pickle)
    warn_remote_code(location, cfg.trust_remote_code)

    common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if revision:
        common["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(location), **common) if with_tokenizer else None
        model = AutoModelForCausalLM.from_pretrained(str(location), dtype=select_dtype(cfg.dtype), **common)
    except Exception as err:
        if type(err).__name__ == "SafetensorError":  # truncated or damaged weights
            raise ModelError(
                f"{location}: its safetensors weights are damaged ({err}). If this is a stage's model, rerun that "
                f"stage with --force STAGE; otherwise restore or download the model again."
            ) from err
        if not isinstance(err, (OSError, ValueError)):
            raise
        where = "a local directory" if Path(str(location)).exists() else "a hub id"
        hint = (
            "HF_HUB_OFFLINE is set, so only local directories and the Hugging Face cache are searched: "
            "download the model once with internet access, or point model.name at a local checkpoint"
            if is_offline_mode()
            else "check the name, model.revision and your network; private models need `huggingface-cli login`"
        )
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load model {str(location)!r} ({where}): {first}. {hint}.") from err
    return model, tokenizer


def _adapter_base(adapter_dir: Path) -> tuple[str | Path, str | None]:
    """The location (and hub revision) of the model the adapter in `adapter_dir` applies to."""
    record_path = adapter_dir / ADAPTER_BASE_FILE
    if not record_path.is_file():  # an adapter saved by PEFT elsewhere: its own config names the base
        peft_cfg = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
        base = peft_cfg.get("base_model_name_or_path")
        if not base:
            raise ModelError(
                f"{adapter_dir / ADAPTER_CONFIG_FILE}: this adapter names no base model (base_model_name_or_path) "
                f"and has no {ADAPTER_BASE_FILE}; add one of them naming the model it was trained on"
            )
        return resolve_model(base), peft_cfg.get("revision")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if "name" in record:
        return resolve_model(record["name"]), record.get("revision")
    # Lexical join, as the relative path was computed: a symlinked stage folder stays linked.
    relative = os.path.normpath(os.path.join(os.path.abspath(adapter_dir), record["path"]))
    for candidate in (relative, record.get("absolute")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate), None
    raise ModelError(
        f"{record_path}: this adapter applies to the model in {record['path']!r} (relative to {adapter_dir}; "
        f"was {record.get('absolute')}), which is gone. Restore that stage's folder, or export a merged model "
        "from the run where it still exists (`semrl export RUN_DIR --stage STAGE --out DIR`)."
    )


# An adapter's base may itself be an adapter (GRPO from a cold-start adapter); a longer chain
# than this is a cycle of base_model.json records.
_MAX_ADAPTER_CHAIN = 16


def _load_adapter_merged(cfg: ModelConfig, adapter_dir: Path, depth: int = 0) -> PreTrainedModel:
    """Base model + the adapter in `adapter_dir`, merged in memory (bases that are adapters too are
    loaded the same way, recursively). Merging gives the same weights a merged save writes."""
    from peft import PeftModel

    if depth >= _MAX_ADAPTER_CHAIN:
        raise ModelError(f"{adapter_dir}: its chain of {ADAPTER_BASE_FILE} base models is a cycle")
    base, revision = _adapter_base(adapter_dir)
    if is_adapter_dir(base):
        model = _load_adapter_merged(cfg, Path(base), depth + 1)
    else:
        model, _ = _load_pretrained(cfg, base, revision, with_tokenizer=False)
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelError(
            f"cannot apply the adapter in {adapter_dir} to its base model {str(base)!r}: {str(err).splitlines()[0]}"
        ) from err
    except Exception as err:
        if type(err).__name__ != "SafetensorError":  # safetensors' own error: truncated or damaged weights
            raise
        raise ModelError(
            f"{adapter_dir}: its adapter weights are damaged ({err}). If this is a stage's model, rerun that "
            f"stage with --force STAGE."
        ) from err


def load_tokenizer(cfg: ModelConfig, path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of the configured model (or of the checkpoint at `path`), without its weights;
    the configured revision applies only to the configured hub model, as in `load_policy`."""
    from transformers import AutoTokenizer

    location = resolve_model(cfg.name) if path is None else path
    extra = {"revision": cfg.revision} if path is None and cfg.revision else {}
    return AutoTokenizer.from_pretrained(str(location), trust_remote_code=cfg.trust_remote_code, **extra)


def _contiguous_input(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def contiguous_lm_head_input(model: PreTrainedModel) -> None:
    """Give the LM head a contiguous input (a forward pre-hook; a no-op when it already is).

    Generation projects only the last position, `hidden[:, -1:, :]`, a slice whose batch stride is
    not the width. For such an input torch's CPU bfloat16 matmul does not fold the batch into one
    matrix product: it expands the (vocabulary x width) weight once per sequence into a batched
    product. With Gemma 3's 262k vocabulary that is 5.4 GB and 20 s at batch 16 (measured on a
    frozen model, i.e. every merged checkpoint and every LoRA-wrapped policy); a contiguous copy of
    the (batch x 1 x width) slice avoids it.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)


# What a checkpoint folder holds besides its tokenizer: weights, the model's and the adapter's
# configs, semrl's record of an adapter's base, the model card.
_NOT_TOKENIZER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_NOT_TOKENIZER_FILES = {"config.json", "generation_config.json", ADAPTER_CONFIG_FILE, ADAPTER_BASE_FILE, "README.md"}


def _tokenizer_files(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.name not in _NOT_TOKENIZER_FILES and not p.name.endswith(_NOT_TOKENIZER_SUFFIXES)
    )


def same_tokenizer_files(a: str | Path, b: str | Path) -> bool:
    """Whether two local checkpoint folders hold the same tokenizer: every file but the weights,
    configs and model card, byte for byte. Every stage of a run saves the same tokenizer beside its
    weights, so a caller holding one stage's can pass it to `load_policy` for the next instead of
    loading it again (Gemma 3's takes 3-5 s). False for a hub id, or with any file that differs or is
    on one side only."""
    a, b = Path(str(a)), Path(str(b))
    if not (a.is_dir() and b.is_dir()):
        return False
    names = _tokenizer_files(a)
    return bool(names) and names == _tokenizer_files(b) and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def load_policy(
    cfg: ModelConfig, path: str | Path | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the policy and its tokenizer.

    Args:
        cfg: the config's `model` section (name, revision, trust_remote_code, dtype).
        path: load this checkpoint instead of the configured model (a stage's output); the
            configured revision applies only to the configured hub model.
        tokenizer: the checkpoint's tokenizer, already loaded (see `same_tokenizer_files`), to use
            instead of loading it again; it gets the settings below, like a loaded one.

    A LoRA adapter directory (a stage's output with `model.save: adapter`) loads as its base model
    with the adapter merged in, so callers get the same plain model a merged checkpoint gives.
    The tokenizer gets a pad token (its eos token when it has none) and left padding, which is
    what batched generation needs; TRL's collators pad on the side they need themselves.
    """
    location = resolve_model(cfg.name) if path is None else path
    if is_adapter_dir(location):
        model = _load_adapter_merged(cfg, Path(str(location)))
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg, location)
    else:
        revision = cfg.revision if path is None else None
        model, loaded = _load_pretrained(cfg, location, revision, with_tokenizer=tokenizer is None)
        tokenizer = tokenizer if tokenizer is not None else loaded

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"the tokenizer of {str(location)!r} has neither a pad nor an eos token; semrl needs an eos "
                "token to end completions. Add one to the tokenizer (tokenizer.add_special_tokens) and save it."
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    contiguous_lm_head_input(model)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
