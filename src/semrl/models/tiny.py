"""The `tiny` model: a 2-layer Qwen2-architecture LM with random weights and a byte-level BPE
tokenizer trained in code on a few built-in Tibetan/Chinese/English lines. Every string encodes
(byte fallback), so it exercises the whole pipeline in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

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
