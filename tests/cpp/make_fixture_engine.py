"""Write a tiny engine directory for the runtime tests (ctest and tests/test_runtime.py).

    python tests/cpp/make_fixture_engine.py OUTDIR [--force]

OUTDIR gets manifest.json (engines/README.md, format_version 2, with value ranges on the
integer inputs), model.ts (torch.jit.trace),
model.pt2 (torch.export + AOTInductor, dynamic batch 1..8 and sequence 1..64) and
reference/<case>/*.npy: inputs and the eager model's outputs for each case, so the tests
compare numbers, and generation/: a tiny generation engine (a TorchScript decoder with the
derived dim total = past + new). An OUTDIR built by the same script and torch is reused unless --force:
the AOTInductor compile takes 10-30 s.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import warnings

os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(os.environ.get("KILN_CACHE", os.path.expanduser("~/.cache/kiln")), "inductor"),
)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kiln.exporters.aoti import WEIGHTS_BESIDE_SO  # noqa: E402  # packaged as kiln packages them

VOCAB, HIDDEN, FEATURES, CLASSES = 50, 8, 4, 3
DIMS = {"batch": {"min": 1, "opt": 2, "max": 8}, "sequence": {"min": 1, "opt": 16, "max": 64}}
INPUTS = [
    {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"], "values": {"min": 0, "max": VOCAB - 1}},
    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"], "values": {"min": 0, "max": 1}},
    {"name": "features", "dtype": "float32", "shape": ["batch", FEATURES]},
]
OUTPUTS = [
    {"name": "logits", "dtype": "float32", "shape": ["batch", CLASSES]},
    {"name": "hidden", "dtype": "float32", "shape": ["batch", "sequence", HIDDEN]},
]


class FixtureModel(torch.nn.Module):
    """Token embedding + a per-example feature projection, masked mean pooling, a head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.proj = torch.nn.Linear(FEATURES, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, input_ids, attention_mask, features):
        hidden = torch.tanh(self.embed(input_ids) + self.proj(features)[:, None, :])  # (B, T, H)
        mask = attention_mask.to(hidden.dtype)[:, :, None]  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        return self.head(pooled), hidden


# A tiny generation engine (generation/: the top-level manifest and decoder/ with a
# TorchScript decoder following kiln's graph contract, engines/README.md): derived dim
# total = past + new and value ranges on every integer input, for Generator::open and
# `kiln-run generation/decoder`. TorchScript only: tracing takes a moment, no compile.
GEN_VOCAB, GEN_HEADS, GEN_HEAD_DIM, GEN_POSITIONS = 64, 2, 4, 32
GEN_DIMS = {"batch": {"min": 1, "opt": 2, "max": 4}, "new": {"min": 1, "opt": 4, "max": 16},
            "past": {"min": 0, "opt": 5, "max": 31},
            "total": {"min": 1, "opt": 9, "max": GEN_POSITIONS, "sum": ["past", "new"]}}
GEN_INPUTS = [
    {"name": "input_ids", "dtype": "int64", "shape": ["batch", "new"], "values": {"min": 0, "max": GEN_VOCAB - 1}},
    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total"], "values": {"min": 0, "max": 1}},
    {"name": "position_ids", "dtype": "int64", "shape": ["batch", "new"],
     "values": {"min": 0, "max": GEN_POSITIONS - 1}},
    {"name": "past_key_values", "dtype": "float32", "shape": [1, 2, "batch", GEN_HEADS, "past", GEN_HEAD_DIM]},
]
GEN_OUTPUTS = [
    {"name": "logits", "dtype": "float32", "shape": ["batch", "new", GEN_VOCAB]},
    {"name": "present_key_values", "dtype": "float32", "shape": [1, 2, "batch", GEN_HEADS, "total", GEN_HEAD_DIM]},
]


class FixtureDecoder(torch.nn.Module):
    """One attention layer over the cache: enough to follow the contract, not to be a model."""

    def __init__(self):
        super().__init__()
        width = GEN_HEADS * GEN_HEAD_DIM
        self.embed = torch.nn.Embedding(GEN_VOCAB, width)
        self.pos = torch.nn.Embedding(GEN_POSITIONS, width)
        self.head = torch.nn.Linear(width, GEN_VOCAB)

    def forward(self, input_ids, attention_mask, position_ids, past_key_values):
        b, n = input_ids.shape
        x = self.embed(input_ids) + self.pos(position_ids)  # (B, new, H*D)
        kv = x.view(b, n, GEN_HEADS, GEN_HEAD_DIM).transpose(1, 2)  # (B, H, new, D)
        present = torch.cat([past_key_values, torch.stack([kv, kv]).unsqueeze(0)], dim=4)  # (1, 2, B, H, total, D)
        scores = kv @ present[0, 0].transpose(-1, -2) / GEN_HEAD_DIM ** 0.5  # (B, H, new, total)
        scores = scores + (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * -1e4
        ctx = scores.softmax(-1) @ present[0, 1]  # (B, H, new, D)
        return self.head(ctx.transpose(1, 2).reshape(b, n, GEN_HEADS * GEN_HEAD_DIM)), present


def build_generation(out: pathlib.Path) -> None:
    torch.manual_seed(1)
    model = FixtureDecoder().eval()
    dec = out / "decoder"
    dec.mkdir(parents=True)
    b, past, n = 2, 3, 2
    example = (torch.randint(0, GEN_VOCAB, (b, n)), torch.ones(b, past + n, dtype=torch.int64),
               torch.arange(past, past + n).expand(b, n).contiguous(),
               torch.randn(1, 2, b, GEN_HEADS, past, GEN_HEAD_DIM))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeprecationWarning (torch.jit), TracerWarning (sizes are traced)
        traced = torch.jit.trace(model, example)
        traced.save(str(dec / "model.ts"))
    common = {"format_version": 2, "family": "fixture", "task": "text-generation",
              "config": {"vocab_size": GEN_VOCAB, "n_positions": GEN_POSITIONS}, "weights": "random"}
    (dec / "manifest.json").write_text(json.dumps({
        **common, "name": "fixture-generation/decoder", "graph": "decoder", "dims": GEN_DIMS,
        "inputs": GEN_INPUTS, "outputs": GEN_OUTPUTS,
        "artifacts": [_file_entry(dec / "model.ts", "torchscript")]}, indent=2) + "\n")
    (out / "manifest.json").write_text(json.dumps({
        **common, "kind": "generation", "name": "fixture-generation", "graphs": {"decoder": "decoder"},
        "cache": {"layers": 1, "heads": GEN_HEADS, "head_dim": GEN_HEAD_DIM},
        "vocab_size": GEN_VOCAB, "max_positions": GEN_POSITIONS, "encoder_decoder": False, "dims": GEN_DIMS,
        "generation": {"eos_token_id": 3, "pad_token_id": 0, "max_new_tokens": 8}}, indent=2) + "\n")


def build_model() -> FixtureModel:
    torch.manual_seed(0)
    return FixtureModel().eval()


def make_inputs(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    for b in range(batch):  # padding at the end of every other row
        if b % 2 == 1 and seq > 1:
            mask[b, seq - 1 - b % seq:] = 0
    return {
        "input_ids": rng.integers(0, VOCAB, size=(batch, seq), dtype=np.int64),
        "attention_mask": mask,
        "features": rng.standard_normal((batch, FEATURES)).astype(np.float32),
    }


def example_inputs() -> dict[str, np.ndarray]:
    """What cpp/examples/embed/main.cpp builds: dims at opt, i % 10 ids, mask 1, 0.1*(i%7)-0.3."""
    batch, seq = DIMS["batch"]["opt"], DIMS["sequence"]["opt"]
    i = np.arange(batch * seq, dtype=np.int64).reshape(batch, seq)
    f = np.arange(batch * FEATURES).reshape(batch, FEATURES)
    return {
        "input_ids": i % 10,
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "features": (np.float32(0.1) * (f % 7).astype(np.float32) - np.float32(0.3)).astype(np.float32),
    }


# name -> inputs; shapes cover the range's edges and a padded batch
CASES = {
    "b2s7": lambda: make_inputs(2, 7, seed=1),
    "b1s1": lambda: make_inputs(1, 1, seed=2),
    "b3s5": lambda: make_inputs(3, 5, seed=3),
    "b8s64": lambda: make_inputs(8, 64, seed=4),
    "example": example_inputs,
}


def _file_entry(path: pathlib.Path, fmt: str, **extra) -> dict:
    data = path.read_bytes()
    return {"format": fmt, "file": path.name, "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), "precision": "fp32", "device": "cpu",
            "versions": {"torch": torch.__version__}, **extra}


def _stamp() -> str:
    import kiln.exporters.aoti

    sources = pathlib.Path(__file__).read_bytes() + pathlib.Path(kiln.exporters.aoti.__file__).read_bytes()
    return hashlib.sha256(sources + torch.__version__.encode()).hexdigest()


def build(out: pathlib.Path) -> None:
    model = build_model()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an engine directory is an ordinary one
    try:
        trace_inputs = tuple(torch.from_numpy(v) for v in make_inputs(2, 7, seed=0).values())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(model, trace_inputs)
            traced.save(str(tmp / "model.ts"))

        batch = torch.export.Dim("batch", min=DIMS["batch"]["min"], max=DIMS["batch"]["max"])
        seq = torch.export.Dim("sequence", min=DIMS["sequence"]["min"], max=DIMS["sequence"]["max"])
        with warnings.catch_warnings():
            # torch 2.13's own export code trips its pytree LeafSpec deprecation
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            exported = torch.export.export(
                model, trace_inputs,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq},
                                "features": {0: batch}})
            torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp / "model.pt2"),
                                                     inductor_configs=WEIGHTS_BESIDE_SO)

        ref = tmp / "reference"
        for case, make in CASES.items():
            (ref / case).mkdir(parents=True)
            inputs = make()
            with torch.no_grad():
                logits, hidden = model(*(torch.from_numpy(inputs[i["name"]]) for i in INPUTS))
            for name, value in {**inputs, "logits": logits.numpy(), "hidden": hidden.numpy()}.items():
                np.save(ref / case / f"{name}.npy", value)

        manifest = {
            "format_version": 2,
            "name": out.name,
            "family": "fixture",
            "task": "feature-extraction",
            "config": {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_features": FEATURES,
                       "num_labels": CLASSES},
            "dims": DIMS,
            "inputs": INPUTS,
            "outputs": OUTPUTS,
            "artifacts": [_file_entry(tmp / "model.ts", "torchscript"),
                          _file_entry(tmp / "model.pt2", "aoti")],
            "labels": ["a", "b", "c"],
            "processing": {},
            "task_options": {},
            "weights": "random",
            "source": {"checkpoint": "tests/cpp/make_fixture_engine.py", "sha256": None},
            "kiln_version": "0.1.0",
            "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        build_generation(tmp / "generation")
        (tmp / ".fixture-stamp").write_text(_stamp())
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure(out: str | os.PathLike, force: bool = False) -> pathlib.Path:
    """Build the fixture engine at `out` unless an up-to-date one is there."""
    out = pathlib.Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = out / ".fixture-stamp"
    if force or not (stamp.exists() and stamp.read_text() == _stamp() and (out / "manifest.json").exists()):
        build(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    out = ensure(args.outdir, args.force)
    print(f"fixture engine: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
