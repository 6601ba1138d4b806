"""TensorRT readiness of an exported ONNX graph, checked on the CPU (`kiln check-trt`).

No TensorRT builder is reachable on kiln's development and CI machines, so everything that
can be proved about the TensorRT path without one is proved here:
  1. opset within what TensorRT 10's ONNX parser reads (9-20);
  2. every operator, and the element type it runs on, in the parser's support table
     (onnx_ops.tsv: ONNX-TensorRT 10.1 operator matrix);
  3. no float64 tensor anywhere (TensorRT has no FP64);
  4. `polygraphy surgeon sanitize --fold-constants` succeeds, and the folded graph still
     matches eager PyTorch in ONNX Runtime (constant folding is what TensorRT's parser sees
     first; a fold that changes numbers would be invisible until a GPU run).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArtifactError, InvalidArgumentError

OPSET_RANGE = (9, 20)
_ROOT = Path(__file__).resolve().parents[2]
# the table is the team's shared data (../shared beside the repository); KILN_TRT_OPS overrides
DEFAULT_OPS_TABLE = _ROOT.parent / "shared" / "tensorrt" / "onnx_ops.tsv"

_ONNX_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16",
                    11: "FP64", 16: "BF16"}


_PRODUCERS = {"Cast", "CastLike", "Constant", "ConstantOfShape", "RandomNormal", "RandomUniform"}


def ops_table_path() -> Path:
    return Path(os.environ.get("KILN_TRT_OPS", DEFAULT_OPS_TABLE))


def load_ops_table(path: str | Path | None = None) -> dict[str, set[str]]:
    """operator -> element types TensorRT's ONNX parser accepts (only supported operators)."""
    path = Path(path) if path else ops_table_path()
    if not path.is_file():
        raise InvalidArgumentError(
            f"TensorRT operator table {path} not found; expected the team's onnx_ops.tsv "
            "(../shared/tensorrt/onnx_ops.tsv beside the repository) or KILN_TRT_OPS=/path/to/it")
    table: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        op, supported = parts[0].strip(), parts[1].strip() if len(parts) > 1 else "N"
        if supported == "Y":
            table[op] = {t.strip() for t in (parts[2] if len(parts) > 2 else "").split(",") if t.strip()}
    return table


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str


@dataclass
class TrtReport:
    engine: str
    onnx: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.ok for f in self.findings)

    def to_json(self) -> dict:
        return {"pass": self.passed, "engine": self.engine, "onnx": self.onnx,
                "checks": [f.__dict__ for f in self.findings]}


def _tensor_types(model) -> dict[str, int]:
    """name -> ONNX element type for every value the graph (after shape inference) types."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def check_graph(onnx_path: str | Path, table: dict[str, set[str]]) -> list[Finding]:
    """Opset, operators with their types, and float64, of one ONNX file."""
    import onnx
    model = onnx.load(str(onnx_path))
    findings = []
    lo, hi = OPSET_RANGE
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    findings.append(Finding("opset", version is not None and lo <= version <= hi,
                            f"ai.onnx opset {version} (TensorRT 10 parses {lo}-{hi})"))
    others = sorted(d for d in opsets if d not in ("ai.onnx",) and any(n.domain == d for n in model.graph.node))
    findings.append(Finding("domains", not others,
                            "only the standard ONNX domain is used" if not others else
                            f"custom op domains {others}: TensorRT needs plugins for them"))
    types = _tensor_types(model)
    unsupported: dict[str, int] = {}
    bad_types: dict[str, set[str]] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        allowed = table.get(node.op_type)
        if allowed is None:
            unsupported[node.op_type] = unsupported.get(node.op_type, 0) + 1
            continue
        # the type the table lists is the operator's data type: its first input (comparisons
        # such as Less output BOOL whatever they compare), or what it produces where it reads
        # no data (Constant, ConstantOfShape) or converts to it (Cast)
        produces = node.op_type in _PRODUCERS or not node.input
        names = [n for n in (list(node.output) if produces else list(node.input[:1])) if n]
        for name in names:
            t = _ONNX_TYPE_NAMES.get(types.get(name, 0))
            if t and t not in allowed:
                bad_types.setdefault(node.op_type, set()).add(t)
    ops = sorted({n.op_type for n in model.graph.node})
    findings.append(Finding("operators", not unsupported,
                            f"{len(ops)} operator types, all in the TensorRT parser's table" if not unsupported
                            else "not supported by TensorRT's ONNX parser: " +
                            ", ".join(f"{op} (x{n})" for op, n in sorted(unsupported.items()))))
    findings.append(Finding("types", not bad_types,
                            "every operator runs on a type the parser accepts" if not bad_types else
                            "; ".join(f"{op} on {', '.join(sorted(t))}" for op, t in sorted(bad_types.items()))))
    fp64 = sorted(n for n, t in types.items() if t == 11)
    findings.append(Finding("float64", not fp64, "no float64 tensor" if not fp64 else
                            f"{len(fp64)} float64 tensors (TensorRT has no FP64), e.g. {fp64[:3]}"))
    return findings


def fold_constants(onnx_path: str | Path, out_path: str | Path) -> Finding:
    """`polygraphy surgeon sanitize --fold-constants`, as a user would run it."""
    # the polygraphy console script of this interpreter's environment (the package has no __main__)
    cmd = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())",
           "surgeon", "sanitize", str(onnx_path), "--fold-constants", "-o", str(out_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not Path(out_path).is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return Finding("fold-constants", False, "polygraphy surgeon sanitize --fold-constants failed: "
                       + " | ".join(tail))
    import onnx
    before = len(onnx.load(str(onnx_path), load_external_data=False).graph.node)
    after = len(onnx.load(str(out_path), load_external_data=False).graph.node)
    return Finding("fold-constants", True, f"polygraphy folded {before} -> {after} nodes")


def check_engine(engine_dir: str | Path, table_path: str | Path | None = None) -> TrtReport:
    """Every CPU-side TensorRT check of an engine directory's ONNX artifact."""
    from .backends import Runner, onnxruntime_infer
    from .manifest import read_graph_manifest
    from .parity import run_parity

    manifest = read_graph_manifest(engine_dir)
    art = manifest.artifact("onnx")
    if art is None:
        raise ArtifactError(f"{engine_dir}: no ONNX artifact in the manifest; TensorRT engines are built "
                            "from it: `kiln build RECIPE --formats onnx`")
    onnx_path = manifest.artifact_path(art)
    report = TrtReport(manifest.name, str(onnx_path))
    report.findings += check_graph(onnx_path, load_ops_table(table_path))
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        fold = fold_constants(onnx_path, folded)
        report.findings.append(fold)
        if fold.ok:
            name = "onnxruntime-folded"
            parity = run_parity(engine_dir, backends=[name],
                                extra=[Runner(name, "python", lambda: onnxruntime_infer(folded, manifest))])
            b = parity.backends.get(name)
            if b is None or b.error:
                report.findings.append(Finding("folded-parity", False, (b.error if b else None) or "did not run"))
            else:
                worst = max(b.outputs.items(), key=lambda kv: kv[1]["max_abs"])
                report.findings.append(Finding(
                    "folded-parity", b.passed,
                    f"folded graph in ONNX Runtime vs eager fp32: max abs {worst[1]['max_abs']:.2e} "
                    f"({worst[0]}), {b.task_detail}"))
    return report


def print_report(report: TrtReport, console=None) -> None:
    from .term import make_console
    console = console or make_console()
    console.print(f"[bold]TensorRT readiness[/] of {report.engine} ({report.onnx})")
    for f in report.findings:
        mark = "[green]ok[/]  " if f.ok else "[red]FAIL[/]"
        console.print(f"  {mark} {f.check:<15} {f.detail}")
    console.print("[bold green]ready for TensorRT's ONNX parser[/]" if report.passed
                  else "[bold red]not ready for TensorRT: see FAIL above[/]")
