"""Speed-ups for TRL training on CPU (and for transformers generation anywhere) that leave losses,
gradients and sampled distributions unchanged within the weights' dtype."""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)


@functools.cache
def _warn_cannot_compact(reason: str) -> None:
    # Once per process: every stage enters the block, and one line says what is lost.
    logger.warning(
        "compact_lm_head_on_cpu: %s; CPU training runs TRL's LM head over every position (slower, same numbers)",
        reason,
    )


@contextlib.contextmanager
def compact_lm_head_on_cpu() -> Iterator[None]:
    """Within this block, TRL's fused LM head projects only the labelled positions on CPU too.

    TRL's SFT and GRPO losses run the LM head through a fused, tiled log-probability kernel
    (`trl.trainer.utils.add_fused_lm_head`). On Triton devices it projects only the positions that
    carry a label; elsewhere it projects every position, because on XLA/Neuron a batch-dependent
    shape would recompile each step. CPU eager mode compiles nothing, so there the full projection
    is only wasted work, and much of it: with Gemma 3's 262k-token vocabulary the LM head dominates
    a CPU step, and prompts hold most positions (completion-only SFT, GRPO). Losses and gradients
    are unchanged (the same tiles over fewer rows). On the demo config, 2 CPU cores: SFT steps
    26 s -> 11 s, GRPO steps 38 s -> 25 s.

    `train_stage` trains inside this block; a TRL script can use it the same way around
    `trainer.train()`. With a TRL that no longer has the switch it changes nothing and warns once.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        _warn_cannot_compact("trl is not installed")
        yield
        return
    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None:
        _warn_cannot_compact(
            f"trl {getattr(__import__('trl'), '__version__', '?')} has no trl.trainer.utils._use_triton"
        )
        yield
        return
    # `_use_triton` in trl.trainer.utils decides only this compaction; the kernel reads its own copy,
    # so CPU still runs the plain-torch tiles.
    trl_utils._use_triton = lambda device: device.type == "cpu" or use_triton(device)
    try:
        yield
    finally:
        trl_utils._use_triton = use_triton


# Bytes of logits `lm_head_in_one_product` holds at a time (then it takes the tokens in parts), and
# the rows of one float32 block of its element-wise work (small enough to stay in the core's cache).
LM_HEAD_TILE_BYTES = 256 * 2**20
LM_HEAD_BLOCK_ROWS = 8


def _scaled(z: torch.Tensor, scale: float, inv_t: float) -> torch.Tensor:
    """TRL's logit transform without a softcap, in place (`z * logit_scale * (1 / temperature)`)."""
    if scale != 1.0:
        z.mul_(scale)
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z


def _tile_parts(rows: int, vocab: int, itemsize: int) -> list[tuple[int, int]]:
    """Row ranges of at most one tile each, the smaller remainder first: the forward's last tile,
    which the backward reuses (`_LogitsTile`), is then a full one."""
    step = max(1, LM_HEAD_TILE_BYTES // (vocab * itemsize))
    first = min(rows % step or step, rows)
    return [(0, first)] * (rows > 0) + [(start, start + step) for start in range(first, rows, step)]


class _LogitsTile:
    """The memory of `lm_head_in_one_product`'s logits tiles, one buffer for a whole block, and which
    forward's rows it still holds unchanged.

    A fresh 256 MiB tile per product is served by glibc from wherever its heap has room; when a
    step's other tensors have split the freed tile, the kernel zero-fills fresh pages (65k page
    faults), and the product that writes them ran at half its rate (Intel Xeon with AMX: a cold-start
    step's backward 0.95-1.0 s in such steps, 0.44-0.48 s in others). One buffer is faulted in once.
    The backward then starts with the forward's last tile when no other forward wrote the buffer in
    between, instead of multiplying the same rows by the head again (the same kernel on the same
    operands: the same logits)."""

    def __init__(self) -> None:
        self.memory = torch.empty(0, dtype=torch.uint8)
        self.holds: tuple[object, int, int] | None = None  # (the forward's token, first row, end row)

    def tile(self, rows: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised `rows` x `vocab` tile in the buffer (grown when too small); it forgets what it held."""
        self.holds = None
        size = rows * vocab * dtype.itemsize
        if self.memory.numel() < size:
            self.memory = torch.empty(0, dtype=torch.uint8)  # the old buffer goes before the new one comes
            self.memory = torch.empty(size, dtype=torch.uint8)
        return self._view(rows, vocab, dtype)

    def _view(self, rows: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
        return self.memory[: rows * vocab * dtype.itemsize].view(dtype).view(rows, vocab)

    def logits(self, hidden: torch.Tensor, head: torch.Tensor, token: object, start: int, end: int) -> torch.Tensor:
        """Rows `start:end` of the logits `hidden @ head.T`, from the buffer when it still holds
        exactly those of the forward `token` names, else multiplied into it."""
        if self.holds == (token, start, end):
            self.holds = None  # the caller changes the tile in place
            return self._view(end - start, head.shape[0], head.dtype)
        tile = self.tile(end - start, head.shape[0], head.dtype)
        torch.mm(hidden[start:end].to(head.dtype), head.t(), out=tile)
        return tile


def _blocks(tile: torch.Tensor, chunk: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(first row, first column, block) over a tile, `LM_HEAD_BLOCK_ROWS` rows x `chunk` columns each."""
    for row in range(0, tile.shape[0], LM_HEAD_BLOCK_ROWS):
        for col in range(0, tile.shape[1], chunk):
            yield row, col, tile[row : row + LM_HEAD_BLOCK_ROWS, col : col + chunk]


def _one_product_forward(
    ctx: Any,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    outputs: tuple[str, ...],
    tiles: _LogitsTile,
) -> tuple:
    """TRL's chunked log-probabilities (and the per-token outputs it was asked for) from one product
    with the head per part of the tokens, the log-sum-exp taken about each row's exact maximum."""
    dtype, args = ctx.compute_dtype, ctx.kernel_args
    scale, inv_t = float(args["logit_scale"]), float(args["inv_t"])
    head = weight.to(dtype)
    n, vocab = hidden.shape[0], weight.shape[0]
    ctx.tile_token = token = object()
    log_z, target_z = torch.empty(n), torch.empty(n)
    entropy = torch.empty(n) if "entropy" in outputs else None
    log_sum_sq = torch.empty(n) if "log_sum_sq_probs" in outputs else None
    mean_logits = torch.empty(n) if "mean_logits" in outputs else None
    is_top1 = torch.empty(n, dtype=torch.bool) if "is_top1" in outputs else None
    start = end = 0  # no rows (every label masked): no tile to keep
    for start, end in _tile_parts(n, vocab, head.element_size()):
        tile = tiles.logits(hidden, head, token, start, end)  # read-only below: the backward may reuse it
        # Positive scales keep the order: the exact maximum and the first argmax are the tile's own.
        top, first_top = tile.max(-1)  # torch returns the first maximum's index, as TRL's is_top1 counts
        top = _scaled(top.float(), scale, inv_t)
        target_z[start:end] = _scaled(tile.gather(-1, targets[start:end, None]).squeeze(-1).float(), scale, inv_t)
        if is_top1 is not None:
            is_top1[start:end] = first_top == targets[start:end]
        sums = torch.zeros(4, end - start)  # sum e, sum e z', sum e^2, sum z' with z' = z - max, e = exp(z')
        for row, _col, block in _blocks(tile, ctx.chunk_size):
            rows = slice(row, row + block.shape[0])
            # A copy: the tile stays the logits, which the backward may reuse.
            z = _scaled(block.to(torch.float32, copy=True), scale, inv_t).sub_(top[rows, None])
            if mean_logits is not None:
                sums[3, rows] += z.sum(-1)
            e = torch.exp(z)
            sums[0, rows] += e.sum(-1)
            if entropy is not None:
                sums[1, rows] += (e * z).sum(-1)
            if log_sum_sq is not None:
                sums[2, rows] += (e * e).sum(-1)
        log_sum = torch.log(sums[0])
        log_z[start:end] = top + log_sum
        if entropy is not None:
            entropy[start:end] = log_sum - sums[1] / sums[0]
        if log_sum_sq is not None:
            log_sum_sq[start:end] = torch.log(sums[2]) - 2 * log_sum
        if mean_logits is not None:
            mean_logits[start:end] = sums[3] / vocab + top
    tiles.holds = (token, start, end)  # the last tile's logits, until another forward or backward writes
    return target_z - log_z, log_z, entropy, log_sum_sq, mean_logits, is_top1


def _one_product_backward(
    ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None, tiles: _LogitsTile
) -> tuple:
    """TRL's chunked log-probabilities' backward: the logits' gradient over the whole vocabulary
    (built in place, block by block), then one product with the head for the hidden states'. The
    parts run last first, so that the forward's last tile, still in `tiles`, is not recomputed."""
    hidden, weight, _bias, targets, log_z, entropy = ctx.saved_tensors
    dtype, args = ctx.compute_dtype, ctx.kernel_args
    scale, inv_t = float(args["logit_scale"]), float(args["inv_t"])
    head = weight.to(dtype)
    grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype)
    g = None if grad_logprobs is None else grad_logprobs.float()
    ge = None if grad_entropy is None else grad_entropy.float()
    for start, end in reversed(_tile_parts(hidden.shape[0], weight.shape[0], head.element_size())):
        tile = tiles.logits(hidden, head, ctx.tile_token, start, end)  # else the logits again, as TRL's backward
        for row, col, block in _blocks(tile, ctx.chunk_size):
            rows = slice(start + row, start + row + block.shape[0])
            log_p = _scaled(block.float(), scale, inv_t).sub_(log_z[rows, None])
            grad = torch.exp(log_p)  # p
            # d(log p_target)/dz = 1[target] - p and d(entropy)/dz = -p (log p + entropy): both carry p.
            if ge is None:
                grad.mul_(-g[rows, None])
            else:
                factor = log_p.add_(entropy[rows, None]).mul_(-ge[rows, None])
                grad.mul_(factor if g is None else factor.sub_(g[rows, None]))
            if g is not None:
                local = targets[rows] - col
                hit = ((local >= 0) & (local < block.shape[1])).nonzero().squeeze(-1)
                grad[hit, local[hit]] += g[rows][hit]
            block.copy_(_scaled(grad, inv_t, scale))
        # One product over the vocabulary: it accumulates in float32 and rounds once, as TRL's float32
        # sum of chunk products is rounded once to the hidden states' dtype.
        grad_hidden[start:end] = tile @ head
    return (grad_hidden, None, None, None, None, None, None, None, None)


@contextlib.contextmanager
def lm_head_in_one_product() -> Iterator[None]:
    """Within this block, TRL's fused LM head runs on CPU as one product with the head per direction.

    TRL's tiled log-probability kernel (`trl.kernels.chunked_logprob.ChunkedLogProbFunction`) takes
    the 262k-token vocabulary in chunks; on a GPU a Triton kernel folds each chunk in one pass, on
    CPU a dozen torch operations do, each writing a fresh float32 chunk of every row, and the
    backward accumulates the hidden states' gradient chunk by chunk in float32 (casting the bfloat16
    head and gradient up, at float32's rate, a seventh of AMX's bfloat16 rate on a Xeon: torch's
    mixed-precision `addmm` is CUDA-only). Measured on that Xeon: bfloat16 SFT steps 1.29x, GRPO 1.11x. Here, on CPU, for a frozen head (LoRA, or a tied embedding not trained) without a
    bias or logit softcapping: one product gives a part of the tokens' logits over the whole
    vocabulary in the head's dtype, the element-wise work runs in place on blocks of 8 rows that stay
    in cache, and the hidden states' gradient is one product with float32 accumulation. The numbers
    are TRL's within float32 rounding, and the gradient is rounded once to the hidden states' dtype
    as TRL rounds it (`test_the_lm_head_in_one_product_gives_trls_numbers`). Other devices and cases
    run TRL's kernel; with a TRL that lacks it nothing changes. Memory: one tile of logits
    (`LM_HEAD_TILE_BYTES`) for as long as the block lasts.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        yield
        return
    kernel = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if kernel is None or not hasattr(kernel, "backward"):
        yield
        return
    default_outputs = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")  # TRL's default
    tiles = _LogitsTile()  # the block's logits memory

    class InOneProduct(kernel):  # type: ignore[misc,valid-type]
        @staticmethod
        def forward(
            ctx,
            hidden,
            weight,
            bias,
            targets,
            temperature,
            chunk_size,
            softcap=None,
            logit_scale=1.0,
            outputs=default_outputs,
        ):
            # TRL's positional signature; positive scales keep the logits' order (the exact maximum).
            plain = bias is None and softcap is None and logit_scale > 0 and temperature > 0
            ctx.one_product = hidden.device.type == "cpu" and plain and not ctx.needs_input_grad[1]
            if not ctx.one_product:
                args = (bias, targets, temperature, chunk_size, softcap, logit_scale, outputs)
                return kernel.forward(ctx, hidden, weight, *args)
            ctx.set_materialize_grads(False)
            on = torch.is_autocast_enabled("cpu")
            ctx.compute_dtype = torch.get_autocast_dtype("cpu") if on else hidden.dtype
            ctx.chunk_size = chunk_size
            ctx.kernel_args = {"logit_scale": logit_scale, "inv_t": 1 / temperature}
            logprobs, log_z, entropy, log_sum_sq, mean_logits, is_top1 = _one_product_forward(
                ctx, hidden, weight, targets, outputs, tiles
            )
            ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)
            ctx.mark_non_differentiable(*(x for x in (log_sum_sq, mean_logits, is_top1) if x is not None))
            return logprobs, entropy, log_sum_sq, mean_logits, is_top1

        @staticmethod
        def backward(ctx, grad_logprobs, grad_entropy, *rest):  # type: ignore[override]
            if not ctx.one_product:
                return kernel.backward(ctx, grad_logprobs, grad_entropy, *rest)
            if grad_logprobs is None and grad_entropy is None:
                return (None,) * 9
            return _one_product_backward(ctx, grad_logprobs, grad_entropy, tiles)

    trl_utils._ChunkedLogProbFunction = InOneProduct
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction = kernel
        tiles.__init__()  # the buffer goes now, not when the class's reference cycle is collected


def _linear_in_input_dtype(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = linear.weight, linear.bias
    if not torch.is_grad_enabled():
        # No-grad forwards (generation) keep PEFT's float32 path: a decode step reads each weight for
        # a handful of rows, so casting the weights down each step reads more than casting the input up
        # (and the interleaved decode A/B did not measure it faster).
        return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)
    # The cast is differentiable: the gradient reaches the float32 weight (and Adam's state) in float32.
    return torch.nn.functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


@contextlib.contextmanager
def lora_in_weight_dtype(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, float32 LoRA adapters on a bfloat16 (or float16) model compute in the model's dtype.

    PEFT keeps adapters in float32 over a half-precision base (`autocast_adapter_dtype`), and so each
    adapted layer casts its input up to float32, runs both adapter matmuls in float32 and adds the
    float32 result to the base layer's, then casts the sum back: per layer and token two full-width
    casts, float32 element-wise work and float32 matmuls at a quarter of the bfloat16 rate (AMX).
    Here, in forwards that build gradients (the loss), the adapters' weights are cast down instead
    (r x width: tens of MB per forward), the input stays as it comes, and the adapter path runs in the
    base's dtype, which is what mixed-precision autocast does on a GPU. The float32 weights stay the
    trainable parameters, so Adam's updates are still accumulated in float32; only the adapter's
    contribution is rounded to the base's dtype, which the sum was rounded to anyway. No-grad
    forwards (generation) keep the float32 adapter path. Outside the block nothing is changed.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        yield
        return
    patched: list[torch.nn.Module] = []
    uncast: list[tuple[torch.nn.Module, bool]] = []
    for layer in model.modules():
        if not isinstance(layer, LoraLayer):
            continue
        base = getattr(layer.get_base_layer(), "weight", None)
        if base is None or not base.dtype.is_floating_point or base.dtype == torch.float32:
            continue
        adapters = [m for d in (layer.lora_A, layer.lora_B) for m in d.values() if type(m) is torch.nn.Linear]
        if not adapters or all(m.weight.dtype == base.dtype for m in adapters):
            continue
        for linear in adapters:
            # A bound method, not a partial: a deep copy of the model then calls its own copy's weights.
            linear.forward = types.MethodType(_linear_in_input_dtype, linear)
            patched.append(linear)
        uncast.append((layer, getattr(layer, "cast_input_dtype_enabled", True)))
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for linear in patched:
            del linear.forward
        for layer, enabled in uncast:
            layer.cast_input_dtype_enabled = enabled


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model (the classes in its `_no_split_modules`, e.g.
    Gemma 3's `Gemma3DecoderLayer`), looked up through a PEFT wrapper; empty when it declares none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.modules() if type(m).__name__ in names]


@functools.cache
def _warn_cannot_compile(model_class: str) -> None:
    logger.warning("compiled_decoder_layers: %s declares no decoder layers; it runs eagerly", model_class)


def _compiled_when_grad_enabled(eager: Callable[..., Any], compiled: Callable[..., Any]) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return compiled(*args, **kwargs) if torch.is_grad_enabled() else eager(*args, **kwargs)

    return forward


# Score matrices up to this many elements per layer (the demo's longest batch: 16 rows x 4 heads x
# 256 x 256 positions) are computed as products inside compiled layers; larger ones go to SDPA,
# whose flash kernel never holds a whole score matrix (these are kept for the backward).
PRODUCT_ATTENTION_MAX_SCORES = 16 * 4 * 256 * 256


def _attention_as_products(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention (its masks, causality and grouped heads) written out as
    products and a float32 softmax, as its eager attention computes it."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    q_length, kv_length = query.shape[2], key.shape[2]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if attention_mask is None and is_causal and q_length > 1:  # SDPA's is_causal: aligned top left
        attention_mask = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril()
    sees_nothing = None
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        # A (left-padding) row that may attend to nothing gets zeros from SDPA, and the first real
        # token's prediction reads that row: zeros here too.
        sees_nothing = ~attention_mask.any(dim=-1, keepdim=True)
    elif attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if sees_nothing is not None:
        probs = probs.masked_fill(sees_nothing, 0.0)
    if dropout > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _sdpa_as_products_when_compiled(sdpa: Callable[..., Any]) -> Callable[..., Any]:
    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        as_products = (
            torch.compiler.is_compiling()
            and torch.is_grad_enabled()
            and query.shape[0] * query.shape[1] * query.shape[2] * key.shape[2] <= PRODUCT_ATTENTION_MAX_SCORES
            and all(
                kwargs.get(k) is None or kwargs.get(k) is False
                for k in ("softcap", "position_bias", "output_attentions")
            )
        )
        if not as_products:
            return sdpa(module, query, key, *args, **kwargs)
        options = {k: v for k, v in kwargs.items() if k in ("dropout", "scaling", "is_causal")}
        return _attention_as_products(module, query, key, *args, **options)

    return attention


@contextlib.contextmanager
def _sdpa_as_products_in_compiled_graphs() -> Iterator[None]:
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        yield
        return
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    ALL_ATTENTION_FUNCTIONS["sdpa"] = _sdpa_as_products_when_compiled(sdpa)
    try:
        yield
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa


@functools.cache
def torch_compile_problem() -> str | None:
    """Why torch.compile cannot build kernels in this process (the error's first line), or None when
    it can: a small function with a gradient is compiled and run forward and backward once (a few
    seconds, once per process). A machine with a C++ compiler can still fail (no Python headers, a
    broken toolchain, a read-only cache directory); `compile_layers: auto` asks this before a stage
    so that such a machine trains eagerly instead of failing at the first step."""

    def gelu_scale(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x) * 2.0 + 1.0

    try:
        x = torch.linspace(-1.0, 1.0, 16, requires_grad=True)
        torch.compile(gelu_scale, dynamic=False)(x).sum().backward()
    except Exception as exc:  # any failure means: do not compile here
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{type(exc).__name__}: {first_line[:200]}"
    return None


@contextlib.contextmanager
def compiled_decoder_layers(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, forwards that build gradients run each decoder layer compiled by
    `torch.compile(dynamic=True)` (regional compilation: one compiled graph serves every layer of a kind).

    Eager PyTorch runs a layer's normalisations, rotary embedding, activations and residual adds as
    separate kernels, each reading and writing full activations. Inductor fuses them and keeps the
    fused chains in float32, so the result is as close to a float32 step as eager bfloat16 is, or
    closer (one demo batch: median LoRA-gradient error against float32 1.7% compiled, 2.3% eager).
    On the demo (bfloat16, 2 AMD EPYC cores) its longest SFT step ran 1.09x faster, its stages
    1.02-1.15x, and training peaked 1.7 GiB lower (`benchmarks/results/step_ab_compile*.json`,
    `demo_*_stages.json`).
    Inside the compiled layers, attention whose score matrices hold at most
    `PRODUCT_ATTENTION_MAX_SCORES` elements is written out as products and a float32 softmax
    (transformers' SDPA semantics: masks, causality, grouped heads, zeros for rows that see nothing),
    which inductor fuses with the layer; CPU SDPA's flash kernel runs as thousands of tiny matrix
    products a step (17,280 on the demo's cold start, forward and backward). The demo's SFT step on
    a Xeon with AMX: 1.09x on its longest batch, 1.13x on a typical one, 1.10x in six-step runs
    alternated four times with the code before (`step_ab_attention_products_*.json`,
    `step_time_xeon_attention_products_*.json`);
    the score matrices kept for the backward cost 0.6 GB more at the peak. Larger score matrices
    keep SDPA, which never holds one whole.
    No-grad forwards (generation, GRPO's old and reference log-probabilities) stay eager: a KV cache
    and one-token steps would compile many more graphs, and sampling stays exactly as without the
    block. Sequence lengths are dynamic, so batches of new lengths reuse the graphs. The first
    forward and backward compile (seconds to a minute; inductor needs a C++ compiler on CPU). LoRA
    dropout draws other random masks than eagerly. The layers' parameters and state dict are
    untouched; on exit the eager forwards are back. Use it around `trainer.train()` as `train_stage`
    does when a stage sets `compile_layers: true`.
    """
    layers = decoder_layers(model)
    if not layers:
        _warn_cannot_compile(type(model).__name__)
        yield
        return
    own_forwards = [layer.__dict__.get("forward") for layer in layers]  # set on the instance by someone else
    for layer in layers:
        # Hand-written rather than accelerate's compile_regions: that compiles every forward, the
        # no-grad generation's too, and wraps the layers, which renames their state-dict keys.
        layer.forward = _compiled_when_grad_enabled(layer.forward, torch.compile(layer.forward, dynamic=True))
    try:
        with _sdpa_as_products_in_compiled_graphs():
            yield
    finally:
        for layer, own in zip(layers, own_forwards, strict=True):
            if own is None:
                del layer.forward
            else:
                layer.forward = own


def _lora_layers_to_merge(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The LoRA layers of `model` when all of them can be merged by weight arithmetic, else None."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        base = layer.get_base_layer()
        plain = type(base) is torch.nn.Linear and base.weight.dtype.is_floating_point
        variant = any(
            getattr(layer, flag, {}).get(a) for flag in ("use_dora", "lora_bias") for a in layer.active_adapters
        )
        if not plain or variant or layer.merged or layer.disable_adapters:
            return None  # DoRA, LoRA bias, quantised or already-merged layers: PEFT's own forward
    return layers or None


@contextlib.contextmanager
def merged_lora_for_generation(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, a LoRA model generates from merged weights W + scale·BA, rebuilt on entry.

    PEFT's unmerged forward runs two extra small matmuls per adapted layer and token, plus the casts
    between the float32 adapters and a bfloat16 base, and a CPU decode step is bound by such small
    per-layer calls (Gemma 3 270M, LoRA r64, bfloat16, 16 x 40 sampled tokens, 2 cores: 9.4 s vs
    8.6 s on an AMD EPYC, `benchmarks/results/step_ab_merged_generation.json`; 107-111 s vs 55-61 s
    on a Xeon loaded by another job). Here each adapted layer's weight is swapped for a fresh merged
    tensor (summed in float32, rounded once to the weight's dtype) and the adapter path is switched
    off; on exit the original weight tensors are put back untouched, so unlike
    `merge_adapter()`/`unmerge_adapter()` no rounding accumulates in the frozen base over training
    steps. Sampling sees no LoRA dropout, as with TRL's vLLM path (which syncs merged weights). Only
    for no-grad forwards: a backward inside the block would not reach the adapters. Models without
    LoRA, or with DoRA, LoRA bias, quantised or already-merged layers, are left alone. Memory: one
    merged copy of the adapted weights while the block lasts.
    """
    layers = _lora_layers_to_merge(model)
    if layers is None:
        yield
        return
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    # enable_adapters toggles requires_grad on the adapters; what it was is put back as it was.
    trainable = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                merged = weight.data.to(torch.float32, copy=True)
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged += layer.get_delta_weight(adapter).float()
                originals.append((weight, weight.data))
                weight.data = merged.to(weight.dtype)
                layer.enable_adapters(False)
        yield
    finally:
        for weight, data in originals:
            weight.data = data
        for layer in layers[: len(originals)]:
            layer.enable_adapters(True)
        for param, requires_grad in trainable:
            param.requires_grad_(requires_grad)
