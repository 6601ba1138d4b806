"""CPU weight layouts and linear kernels for the compiled formats (TorchScript, AOTInductor).

A decode step at batch 1 is a chain of GEMVs: its speed is the rate at which it streams the
weights. Measured on the Intel Xeon of issue 15 (2 threads, fp32, GB/s of weight read, repeated
calls on one weight; `kiln bench` on a generation engine measures the vocabulary projection's
row of this table on its machine, `roofline.linear_kernels`):

    shape (in x out)     rows  F.linear, W (out,in)  x @ W, W (in,out)  oneDNN prepacked
    768 x 50257 (head)   1     25.8-29.1             36.9-42.2          29.5-32.5
    768 x 3072           1     48.0-53.1             49.9-62.1          38.2-44.3
    3072 x 768           1     51.8-52.6             53.6-56.4          29.1-30.0
    768 x 50265          4     14.5                  19.3               26.7
    768 x 3072           4     26.3                  29.1               42.3

So at one row MKL's GEMM over a weight stored (in, out) is the fastest, most of all on the
vocabulary projection (a third of GPT-2's bytes), and at 4 rows (a 4-beam step) oneDNN's
prepacked kernel is. Four choices follow, all made at build time:

- `decoder_in_out`: in a decoder's CPU formats (but for `one_row_reduction`'s) every nn.Linear
  is stored (in, out), and an embedding tied to one (the vocabulary head) gathers its rows from
  that same table, so the weights are held once. (A tied `nn.Linear` head otherwise compiles to
  `x @ W.T`: Inductor's freezing even materialises the transposed view as a second 154 MB
  constant beside GPT-2's embedding.) GPT-2's layers are Conv1D, (in, out) already; BART's decoder layers gained
  0.3 ms per one-row step from it (13.6 -> 13.3 ms, AOTI). Where Inductor prepacks, it packs
  these weights for oneDNN like any other.
- `prepack_linears`: Inductor's oneDNN weight prepacking (`cpp.weight_prepack`), kept except
  for a decoder whose decode step at the engine's opt dims is one row (MKL on an Intel CPU,
  `one_row_reduction` elsewhere). Beam decoders keep it. An encoder (a graph without a cache)
  is compiled both ways and each is timed through kiln's C++ runtime on the build machine at the
  opt dims; the faster is kept (`kiln build --linear-kernels`, LINEAR_KERNELS). No rule by vendor
  holds for encoders. On the AMD EPYC (Zen 3) of issue 15, through kiln's runtime, MiniLM ran
  alike both ways at 1 x 128 (26-31 ms fastest, six rounds) and 2-13 % faster on MKL at 8 x 128
  (187-221 against 203-242 ms fastest; the medians split); an earlier Zen 4 EPYC measured the
  prepacked kernels faster. Timed
  through torch's own loader instead, the prepacked package ran 26-51 % slower than kiln's
  runtime runs it (the MKL one alike), so that loader would choose MKL where the runtime finds a tie.
- `pack_rows`: where Inductor prepacks a decoder's weights, oneDNN lays them out for the rows of a
  step at the engine's opt dims, not for the export example's (aoti.packed_for_rows).
- `one_row_reduction`: on a CPU other than Intel's, an AOTInductor decoder whose step at the
  engine's opt dims is one row computes each linear in two branches (`OneRowLinear`): one row as
  Inductor's own reduction over W stored (out, in), which streams the weights at the rate of a
  plain read, where oneDNN's and MKL's GEMVs reach 50-75 % of it on the AMD EPYC (Zen 3); more
  rows as MKL's GEMM over the same W. No prepacking: the weights are held once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch._higher_order_ops.cond import cond_op


class InOutLinear(nn.Module):
    """A linear layer whose weight is stored (in, out): y = x @ W (+ b)."""

    def __init__(self, linear: nn.Linear, weight_t: nn.Parameter | None = None):
        """weight_t: the (in, out) copy made for another linear that shares this one's weight."""
        super().__init__()
        if weight_t is None:
            weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.weight_t = weight_t
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # one mm / addmm (bias fused), as F.linear compiles to
        y = torch.mm(rows, self.weight_t) if self.bias is None else torch.addmm(self.bias, rows, self.weight_t)
        return y.view(*x.shape[:-1], y.shape[-1])


class ColumnEmbedding(nn.Module):
    """An embedding whose table is a tied head's (dim, vocab) weight: a token's vector is a
    column (a strided gather of `dim` values; the head's GEMV streams the table contiguously)."""

    def __init__(self, head: InOutLinear):
        super().__init__()
        self.head = head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cols = torch.index_select(self.head.weight_t, 1, ids.reshape(-1))  # (dim, N)
        return cols.t().reshape(*ids.shape, cols.shape[0])


@contextlib.contextmanager
def decoder_in_out(module: nn.Module, dims: dict[str, Any]) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
    """For a decoder (a graph with a cache): (the module with every nn.Linear stored (in, out) and
    the embeddings tied to one of them reading the same table, what changed for the manifest's
    artifact entry); the original modules are back on exit. Other graphs as they are. Linears
    that share a weight share its (in, out) copy."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    if decode_rows(dims) is None:
        yield module, {}
        return
    by_weight: dict[int, InOutLinear] = {}
    prefix = {id(m): f"{n}." if n else "" for n, m in module.named_modules()}
    children = [(p, n, c) for p in module.modules() for n, c in p.named_children()]
    for parent, name, child in children:
        if isinstance(child, nn.Linear):
            shared = by_weight.get(id(child.weight))
            new = InOutLinear(child, shared.weight_t if shared else None)
            by_weight.setdefault(id(child.weight), new)
            swaps.append((parent, name, child))
            setattr(parent, name, new)
    for parent, name, child in children:
        if isinstance(child, nn.Embedding) and id(child.weight) in by_weight and child.max_norm is None:
            swaps.append((parent, name, child))
            setattr(parent, name, ColumnEmbedding(by_weight[id(child.weight)]))
    layout: dict[str, Any] = {}
    if swaps:
        swapped = [prefix[id(parent)] + name for parent, name, _ in swaps]
        why = "decode: MKL's x @ W streams a weight stored (in, out) fastest; a tied embedding reads the same table"
        layout = {"weight_layout": {"in_out": swapped, "why": why}}
    try:
        yield module, layout
    finally:
        for parent, name, child in reversed(swaps):
            setattr(parent, name, child)


def decode_rows(dims: dict[str, Any]) -> int | None:
    """Rows a decoder's step computes at the engine's opt dims (batch x new tokens); None for a
    graph without a cache."""
    if "past" not in dims or "batch" not in dims:
        return None
    new = dims["new"].opt if "new" in dims else 1
    return int(dims["batch"].opt) * int(new)


def pack_rows(dims: dict[str, Any]) -> int | None:
    """The row count oneDNN's packed weights are laid out for: a decoder's step rows at the
    engine's opt dims (None elsewhere: Inductor's choice, the export example's rows). On the AMD
    EPYC (Zen 3) of issue 15, GPT-2's one-row decode step took 22.0-23.3 ms packed for 1 row
    against 24.9-27.4 ms packed for the example's 32 (fastest of 60, interleaved in one process,
    three runs; medians 26.3-28.6 vs 30.0-32.6); its prefill was no slower (1 x 32 and 8 x 128),
    and a 4-row step paid (44.8 vs 30.0 ms): the engine is built for its opt dims."""
    return decode_rows(dims)


def _vendor(vendor: str | None) -> str:
    if vendor is None:
        from ..roofline import cpu_info

        vendor = str(cpu_info().get("vendor", ""))
    return vendor


# kiln build --linear-kernels: how an encoder's AOTI linears are chosen. auto: timed (oneDNN
# prepacked against MKL, both compiled) where the graph holds at least TIMED_WEIGHT_MB of weights
# and does at least TIMED_GFLOP at its opt dims (MiniLM: 86 MB, 2.7 GFLOP at 1 x 128; the
# smallest real model of the mission, SegFormer-b0, 15 MB). The choice is how the weights are read
# (oneDNN's packed copy, or the tensor as stored); a smaller model is not worth a second compile,
# and its times are noise, so it keeps oneDNN prepacked (the test suite's tiny models among them:
# under 4 MB, or under 0.2 GFLOP). measure: timed at any size. fixed: never timed (one compile:
# a build of MiniLM takes 45 s less on the AMD EPYC).
LINEAR_KERNELS = ("auto", "measure", "fixed")
TIMED_WEIGHT_MB = 8.0
TIMED_GFLOP = 0.2


def one_row_reduction(dims: dict[str, Any], vendor: str | None = None) -> bool:
    """Whether an AOTInductor decoder computes its linears as `OneRowLinear` (see the module doc):
    a one-row decode step at the engine's opt dims, on a CPU other than Intel's. On the AMD EPYC
    (Zen 3) of issue 15, GPT-2's one-row step took 18.6-20.4 ms against 22.2-23.8 ms prepacked
    for one row (fastest of 60, interleaved in one process); its 4-row step 39.8 vs 52.5 ms, 8 rows
    83 vs 78, prefill 1 x 32 69.6 vs 84.6 and 8 x 32 384 vs 443 ms; the package 501 MB, not 655.
    BART's greedy step (source 512, past 64): 13.4-14.0 ms against 15.8-16.6. On Intel, MKL's
    one-row GEMM streams at ~90 % of a plain read: it keeps MKL (the reduction unmeasured there)."""
    return decode_rows(dims) == 1 and _vendor(vendor) != "GenuineIntel"


def prepack_linears(dims: dict[str, Any], vendor: str | None = None) -> tuple[bool, str]:
    """Whether AOTInductor packs the linear weights for oneDNN, and why (see the module doc)."""
    vendor = _vendor(vendor)
    rows = decode_rows(dims)
    if rows == 1 and vendor == "GenuineIntel":
        return False, "MKL GEMM: a one-row decode step on an Intel CPU (faster than oneDNN's prepacked GEMV there)"
    if one_row_reduction(dims, vendor):
        return False, (
            f"one row: Inductor's reduction over each weight stored (out, in); more rows: MKL's GEMM over the same "
            f"weight (oneDNN's and MKL's one-row GEMVs stream slower on this CPU vendor, {vendor or 'unknown'})"
        )
    if rows is not None and rows > 1:
        return True, f"oneDNN prepacked: a {rows}-row decode step (faster than MKL at several rows)"
    return True, "oneDNN prepacked: an encoder or prefill (GEMM-bound)"


def _one_row(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor]:
    y = (weight * rows[0]).sum(-1) + bias  # compiled for that one row (static shapes)
    return (y.expand(rows.shape[0], y.shape[0]).contiguous(),)  # (1, out): the other branch's shape


def _many_rows(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor]:
    return (torch.mm(weight, rows.t()).t().contiguous() + bias,)


class OneRowLinear(nn.Module):
    """y = x W^T + b with W stored (out, in) as nn.Linear stores it, in two branches on the row
    count (the `cond` operator: AOTInductor compiles both, over the same constant). One row:
    Inductor's own reduction, compiled for that one row (static shapes), which streams W
    contiguously. More rows: mm(W, x^T), MKL's GEMM reading W as stored (x @ W^T would make
    freezing fold a transposed copy of every weight). The operator is called directly, not through
    torch.cond: torch.cond traces its branches with dynamo, whose cache, shared by every call,
    compares one linear's shapes with the next one's and leaves shape guards (Ne(64*new, 256) on a
    tiny BART) that break the export's dynamic dims; the operator traces them with make_fx."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = weight
        self.bias = bias if bias is not None else nn.Parameter(weight.new_zeros(weight.shape[0]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        (y,) = cond_op(rows.shape[0] == 1, _one_row, _many_rows, (rows, self.weight, self.bias))
        return y.view(*x.shape[:-1], y.shape[-1])


@contextlib.contextmanager
def one_row_linears(module: nn.Module) -> Iterator[tuple[nn.Module, dict[str, Any]]]:
    """(the module with every nn.Linear and GPT-2 Conv1D as a `OneRowLinear`, what changed for the
    manifest's artifact entry); the original modules are back on exit. An nn.Linear keeps its
    weight (a tied embedding shares it, so the table is held once); a Conv1D's (in, out) weight
    is stored transposed."""
    from ..models.gpt2 import Conv1D

    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    prefix = {id(m): f"{n}." if n else "" for n, m in module.named_modules()}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                new = OneRowLinear(child.weight, child.bias)
            elif isinstance(child, Conv1D):
                weight = nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
                new = OneRowLinear(weight, child.bias)
            else:
                continue
            swaps.append((parent, name, child))
            setattr(parent, name, new)
    layout: dict[str, Any] = {}
    if swaps:
        why = "one-row decode: Inductor's reduction streams a weight stored (out, in) (kiln.exporters.layout)"
        layout = {"weight_layout": {"one_row_reduction": [prefix[id(p)] + n for p, n, _ in swaps], "why": why}}
    try:
        yield module, layout
    finally:
        for parent, name, child in reversed(swaps):
            setattr(parent, name, child)
