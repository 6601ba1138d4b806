"""int8 artifacts (`kiln build RECIPE --precision int8`): quantised copies of a graph's linear layers.

Schemes, measured on the real all-MiniLM-L6-v2 over 120 sentences (one at a time; cosine of each
int8 embedding with fp32, and Spearman of the 60 pair similarities), before choosing:

    weights int8 per channel, activations fp32          min cos 0.9936  Spearman 0.9987  (no speed-up)
    activations int8 per token (symmetric) + weights     min cos 0.9930  Spearman 0.9948  <- aoti
    activations uint8 per tensor + weights per channel   min cos 0.9790  Spearman 0.9903  <- onnx (ORT)
    the same with 7-bit activations (fbgemm's dynamic    min cos 0.9420  Spearman 0.9631  (not used: this
    Linear, what torch.ao quantize_dynamic traces into                                    is why there is
    TorchScript)                                                                           no torchscript int8)

A per-tensor activation scale is set by BERT's few outlier channels, so most values get a
handful of levels; a scale per token keeps them. The per-token scheme is torchao's
Int8DynamicActivationInt8WeightConfig: torch.export keeps it as aten._int_mm between fused
quantise / dequantise kernels, so the AOTInductor package needs no torchao at run time and the C++
runtime (kiln-aoti) runs it like any other. Generation decoders take the same scheme. A decode
step is memory-bound (it reads every weight once), so int8 weights are what make it fast, and
only _int_mm keeps them int8 in the package. Measured on GPT-2 small's decoder (a step at past 64,
2 threads, Intel Xeon):

    weight-only int8 (torchao Int8WeightOnlyConfig),   0.93x fp32: freezing constant-folds
      AOTI with freezing                                dequantize(int8 weight) into an fp32 constant
    weight-only int8, AOTI without freezing             a kernel dequantises every weight to fp32
                                                        on every call, then mm (package int8, step not)
    aten._weight_int8pack_mm (fp32 activations)         0.36-0.42x fp32 per GEMV: its fp32 path is
                                                        not vectorised (2.5-3 GB/s)
    per-token int8 activations + int8 weights (_int_mm) 2.2x fp32 (14.1 vs 31.2 ms)  <- decoders too

ONNX gets ONNX Runtime's quantize_dynamic (per-channel int8 weights, dynamic per-tensor uint8
activations: what ORT's MatMulInteger supports), which the report shows is less accurate. Its
weights use 7 of the 8 bits (`reduce_range`): on a CPU without VNNI (AVX2 only, e.g. AMD EPYC
Zen 3) ORT multiplies uint8 by int8 with VPMADDUBSW, whose 16-bit pair sums saturate, and a
tiny BERT's embeddings measured max abs 0.038 with full-range weights against 0.0046 with
reduce_range (MiniLM: 0.044 -> 0.029); VNNI CPUs accumulate in 32 bits and lose only the bit.

Which layers stay fp32 is measured, not guessed: each linear layer is quantised alone and its
effect on the graph's outputs measured on the parity feeds (the harness's own inputs: real
samples through the engine's pre-processing plus random valid ones); then, with every layer
quantised, the most harmful layers are put back to fp32 one at a time until the outputs' cosine
with fp32 reaches TARGET_COSINE, or MAX_EXCLUDED_SHARE of the layers are fp32. The manifest records
the scheme, the layers quantised, those excluded with their measured effect, and the result.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# per output row, worst over the parity feeds: half the error the task allows (an int8 embedding
# keeps cosine >= 0.99 with fp32). Measured on the real MiniLM, 120 sentences (Intel Xeon, 2
# threads, `kiln int8`): 0.999 kept 4 of 36 linears fp32 (two 1536 -> 384 output layers among
# them), min cosine 0.9975, 8x128 1.80x fp32; 0.995 keeps 1, min cosine 0.9960, Spearman
# 0.9989, 8x128 2.01x. Every fp32 layer costs about six int8 ones (AMX/VNNI _int_mm).
TARGET_COSINE = 0.995
MAX_EXCLUDED_SHARE = 0.125  # at most 1 in 8 linear layers kept in fp32

Feed = dict[str, np.ndarray]


def _torchao() -> Any:
    logging.getLogger("torchao").setLevel(logging.ERROR)  # it announces every CUDA kernel it lacks
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # and trips a torch deprecation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchao.quantization as q
    return q


AOTI_SCHEME = "int8-dynamic-activation-int8-weight"  # encoders and decoders (see above)


SCHEMES = {
    "int8-dynamic-activation-int8-weight": (
        "torchao Int8DynamicActivationInt8WeightConfig: weights int8 symmetric per output channel, activations "
        "int8 symmetric per token, quantised at run time; aten._int_mm with int32 accumulation"
    ),
    "onnxruntime-dynamic": (
        "onnxruntime.quantization.quantize_dynamic: MatMul weights int8 per output channel in 7 bits "
        "(reduce_range: no VPMADDUBSW saturation on CPUs without VNNI), activations uint8 per tensor "
        "quantised at run time (DynamicQuantizeLinear + MatMulInteger)"
    ),
}


# CPU flags of an int8 dot product that ATen's _int_mm (through oneDNN) runs fast on.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def slow_int8_cpu(flags: set[str] | None = None, name: str | None = None) -> str | None:
    """None on a CPU with an int8 dot product; otherwise why this machine should not run the AOTI
    int8 artifact. Without VNNI or AMX, aten._int_mm takes a reference loop: measured on an AMD EPYC
    (Zen 3, AVX2) 35-50x slower than fp32 mm, MiniLM's int8 package 25x slower than fp32 (README,
    "int8 engines"). The artifact stays built: the engine may be deployed on another CPU."""
    from ..roofline import cpu_info

    info = cpu_info()
    flags = set(info["isa"]) if flags is None else flags
    if flags & set(INT8_DOT_FLAGS):
        return None
    return (
        f"this CPU ({name or info['cpu'] or 'unknown'}) has no int8 dot product ({', '.join(INT8_DOT_FLAGS)}): "
        "here the AOTI int8 artifact runs many times slower than fp32 (aten._int_mm's reference loop); "
        "deploy it on a CPU with VNNI or AMX, and measure with `kiln int8 ENGINE`"
    )


def as_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy with every GPT-2 style Conv1D (weight stored (in, out)) as an nn.Linear, so
    the quantisers, which know nn.Linear, see every projection."""
    from ..models.gpt2 import Conv1D

    module = copy.deepcopy(module)
    for child in list(module.modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, Conv1D):
                n_in, n_out = sub.weight.shape
                lin = torch.nn.Linear(n_in, n_out)
                lin.weight = torch.nn.Parameter(sub.weight.detach().t().contiguous())
                lin.bias = torch.nn.Parameter(sub.bias.detach().clone())
                setattr(child, attr, lin)
    return module


def linear_layers(module: torch.nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]


def quantized(module: torch.nn.Module, only: set[str] | None = None, exclude: Sequence[str] = ()) -> Any:
    """A quantised deep copy of `module` (linears already, see as_linears): the layers in `only`
    (all when None) except those in `exclude`."""
    q = _torchao()
    config = q.Int8DynamicActivationInt8WeightConfig()
    out = copy.deepcopy(module)
    skip = set(exclude)

    def take(m: torch.nn.Module, name: str) -> bool:
        return isinstance(m, torch.nn.Linear) and name not in skip and (only is None or name in only)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q.quantize_(out, config, filter_fn=take)
    return out.eval()


def output_cosine(module: Any, reference: list[list[np.ndarray]], feeds: list[Feed], input_names: list[str]) -> float:
    """The worst cosine similarity, over the feeds, outputs and rows (the first axis), between
    module's outputs and the reference's (floating outputs only)."""
    worst = 1.0
    with torch.inference_mode():
        for feed, ref in zip(feeds, reference):
            out = module(*[torch.from_numpy(np.ascontiguousarray(feed[n])) for n in input_names])
            for o, r in zip(out, ref):
                if not torch.is_floating_point(o):
                    continue
                a = o.double().reshape(o.shape[0], -1) if o.dim() > 1 else o.double().reshape(1, -1)
                b = torch.from_numpy(r).double().reshape(a.shape)
                num = (a * b).sum(-1)
                den = a.norm(dim=-1) * b.norm(dim=-1)
                ok = den > 0
                if ok.any():
                    worst = min(worst, float((num[ok] / den[ok]).min()))
    return worst


def choose_exclusions(
    module: torch.nn.Module,
    feeds: list[Feed],
    input_names: list[str],
    progress: Callable[[str], None] = lambda m: None,
) -> tuple[dict[str, float], list[str], float]:
    """({layer: 1 - cosine when it alone is quantised}, layers kept fp32, cosine of the result)."""
    with torch.inference_mode():
        reference = [
            [o.numpy() for o in module(*[torch.from_numpy(np.ascontiguousarray(f[n])) for n in input_names])]
            for f in feeds
        ]
    layers = linear_layers(module)
    progress(f"  int8: measuring {len(layers)} linear layers one at a time on {len(feeds)} parity feeds")
    sensitivity = {
        name: 1.0 - output_cosine(quantized(module, only={name}), reference, feeds, input_names) for name in layers
    }
    ranked = sorted(layers, key=lambda n: sensitivity[n], reverse=True)
    budget = int(len(layers) * MAX_EXCLUDED_SHARE)
    excluded: list[str] = []
    cos = output_cosine(quantized(module), reference, feeds, input_names)
    while cos < TARGET_COSINE and len(excluded) < budget:
        excluded.append(ranked[len(excluded)])
        cos = output_cosine(quantized(module, exclude=excluded), reference, feeds, input_names)
    return sensitivity, excluded, cos


def quantize_onnx(fp32: Path, out: Path, exclude_layers: Sequence[str] = ()) -> dict[str, Any]:
    """ONNX Runtime's dynamic quantisation of an fp32 ONNX file (per-channel int8 weights), the
    MatMuls of `exclude_layers` (module names) left fp32. export: the dynamo exporter names a
    linear's transposed weight val_N but keeps the module's name on its bias, so a MatMul is
    found by the bias Add that consumes it (or by a weight of the module's name)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32))
    weights = {i.name for i in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    names = {f"{layer}.{p}" for layer in exclude_layers for p in ("weight", "bias")}
    nodes, excluded = [], []
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[1] not in weights:
            continue
        nodes.append(n.name)
        used = set(n.input) | {i for c in consumers.get(n.output[0], []) if c.op_type == "Add" for i in c.input}
        if used & names:
            excluded.append(n.name)
    logging.getLogger("root").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(fp32),
            str(out),
            per_channel=True,
            reduce_range=True,  # 7-bit weights: exact on AVX2 without VNNI (the module docstring)
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=excluded,
        )
    return {"matmuls": len(nodes), "quantized": len(nodes) - len(excluded), "excluded": excluded}
