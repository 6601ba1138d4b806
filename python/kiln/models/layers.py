"""The few export-critical pieces that several kiln model files share.

Everything here must trace (torch.jit.trace), export (torch.export with dynamic batch and
sequence) and convert (torch.onnx.export, dynamo) without special cases, so each function is
straight-line tensor arithmetic on its inputs' shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidArgumentError

# HF `hidden_act` name -> module. "gelu" is the exact erf form; "gelu_new" is the tanh
# approximation of the original BERT/GPT-2 code, which PyTorch computes natively.
_ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
}
ACTIVATION_NAMES = tuple(_ACTIVATIONS)


def check_activation(name: str, what: str = "hidden_act") -> None:
    if name not in _ACTIVATIONS:
        raise InvalidArgumentError(f"{what}={name!r} is not supported; expected one of {', '.join(ACTIVATION_NAMES)}")


def activation(name: str) -> nn.Module:
    """The activation module for an HF `hidden_act` name (an error names the known ones)."""
    check_activation(name)
    return _ACTIVATIONS[name]()


def additive_padding_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] 1/0 key mask -> [B, 1, 1, T] bias: 0 where attended, finfo(dtype).min where not.

    export: an additive float mask rather than a boolean one. It is plain elementwise
    arithmetic in every graph (TorchScript, Inductor, ONNX -> TensorRT) and a row whose keys
    are all padding still gets a finite softmax instead of NaN.
    """
    mask = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T): broadcasts over heads and queries
    return (1.0 - mask) * torch.finfo(dtype).min


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of [B, T, H] over the tokens where attention_mask is 1 -> [B, H].

    The sentence-transformers formula: sum(h * mask) / clamp(sum(mask), min=1e-9), so an
    all-padding row gives zeros rather than NaN.
    """
    mask = attention_mask[:, :, None].to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, H)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / counts


def masked_max(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Max of [B, T, H] over the tokens where attention_mask is 1 -> [B, H].

    Padding is replaced by -1e9 before the max, as sentence-transformers does.
    """
    keep = attention_mask[:, :, None].to(torch.bool)  # (B, T, 1)
    # export: torch.where with a scalar keeps the graph free of in-place boolean indexing
    return torch.where(keep, hidden, torch.full_like(hidden, -1e9)).amax(dim=1)


def causal_cache_mask(attention_mask: torch.Tensor, new: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, past + new] 1/0 key mask -> [B, 1, new, past + new] additive bias for the `new` last
    positions attending over the cache and themselves: a query at absolute position past + i
    sees key j when j <= past + i and attention_mask[b, j] is 1.

    export: built from shapes only (past = total - new stays symbolic), additive and finite
    (finfo.min, as transformers uses) so a left-padding query row whose keys are all masked
    still gets a finite softmax; those rows' outputs are never read.
    """
    total = attention_mask.shape[1]
    q_pos = torch.arange(new, device=attention_mask.device)[:, None] + (total - new)  # (new, 1)
    k_pos = torch.arange(total, device=attention_mask.device)[None, :]  # (1, total)
    allowed = (k_pos <= q_pos)[None, None] & attention_mask[:, None, None, :].to(torch.bool)  # (B, 1, new, total)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.full((), torch.finfo(dtype).min, dtype=dtype))


def cached_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The new tokens' attention (B, nh, T, hs) over the cache (past_k / past_v: (B, nh, P, hs))
    and themselves, with the additive `mask` (B, 1, T, P + T), without concatenating the cache
    with the new keys first: a decode step then reads each layer's cache once here and once more
    where the graph writes its present cache, instead of copying it per layer and again into the
    stacked output. GPT-2 small, AOTI, one row (Intel Xeon, 2 threads): past 48 19.5 -> 17.5 ms,
    past 480 35.1 -> 28.6 ms (README, "Decoders: weight layout and linear kernels"). Softmax over
    finite scores, as SDPA with an additive mask computes it."""
    scores = torch.cat([q @ past_k.transpose(-1, -2), q @ k.transpose(-1, -2)], dim=-1) * scale + mask
    # split by both sizes (ONNX Split): slicing at the past length made ONNX shape inference
    # (polygraphy's constant folding) equate the cache length with the total, and new with 0
    w_past, w_new = torch.softmax(scores, dim=-1).split([past_k.shape[2], k.shape[2]], dim=-1)
    return w_past @ past_v + w_new @ v


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, C) -> (B, nh, T, hs)."""
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hs) -> (B, T, C)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)
