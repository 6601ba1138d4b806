"""Write the seed corpora of the C++ fuzz targets (make fuzz-cpp): no binary file is committed.

    python3 scripts/fuzz_seeds.py OUTDIR      -> OUTDIR/{manifest,generation_manifest,npy}/seed-*

Seeds are valid inputs of each parser (manifest.json of an engine and of a generation engine
as kiln build writes them, format_version 2 with value ranges, a derived dim and dims of
multiples; .npy files of
every dtype kiln reads, format versions 1.0, 2.0 and 3.0) plus a few near misses. Standard
library only.
"""
from __future__ import annotations

import copy
import json
import struct
import sys
from pathlib import Path

ENGINE = {
    "format_version": 2, "name": "seed", "family": "bert", "task": "feature-extraction",
    "config": {"vocab_size": 30522},
    "dims": {"batch": {"min": 1, "opt": 1, "max": 32}, "sequence": {"min": 1, "opt": 128, "max": 512}},
    "inputs": [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"], "values": {"min": 0, "max": 30521}},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"], "values": {"min": 0, "max": 1}},
        {"name": "token_type_ids", "dtype": "int64", "shape": ["batch", "sequence"], "values": {"min": 0, "max": 1}},
    ],
    "outputs": [{"name": "embeddings", "dtype": "float32", "shape": ["batch", 384]}],
    "artifacts": [
        {"format": "aoti", "file": "model.pt2", "sha256": "00" * 32, "bytes": 1234, "precision": "fp32",
         "device": "cpu", "versions": {"torch": "2.13.0+cpu"}},
        {"format": "tensorrt", "file": "model.sm90.fp16.plan", "sha256": "11" * 32, "bytes": 99, "precision": "fp16",
         "device": "cuda", "compute_capability": "9.0", "versions": {"tensorrt": "10.13.0"},
         "profiles": [{"input_ids": {"min": [1, 1], "opt": [1, 128], "max": [32, 512]}}]},
    ],
    "labels": None, "processing": {"tokenizer": "tokenizer.json"},
}

DECODER = {
    "format_version": 2, "name": "gpt2/decoder", "graph": "decoder", "family": "gpt2", "task": "text-generation",
    "dims": {"batch": {"min": 1, "opt": 1, "max": 8}, "new": {"min": 1, "opt": 1, "max": 1024},
             "past": {"min": 0, "opt": 95, "max": 1023},
             "total": {"min": 1, "opt": 96, "max": 1024, "sum": ["past", "new"]}},
    "inputs": [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "new"], "values": {"min": 0, "max": 50256}},
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total"], "values": {"min": 0, "max": 1}},
        {"name": "position_ids", "dtype": "int64", "shape": ["batch", "new"], "values": {"min": 0, "max": 1023}},
        {"name": "past_key_values", "dtype": "float32", "shape": [12, 2, "batch", 12, "past", 64]},
    ],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", "new", 50257]},
                {"name": "present_key_values", "dtype": "float32", "shape": [12, 2, "batch", 12, "total", 64]}],
    "artifacts": [{"format": "torchscript", "file": "model.ts", "sha256": "ab" * 32, "bytes": 10}],
}

GENERATION = {
    "format_version": 2, "kind": "generation", "name": "gpt2-text-generation", "family": "gpt2",
    "task": "text-generation", "config": {}, "graphs": {"decoder": "decoder"},
    "cache": {"layers": 12, "heads": 12, "head_dim": 64}, "vocab_size": 50257, "max_positions": 1024,
    "encoder_decoder": False,
    "generation": {"eos_token_id": 50256, "bos_token_id": 50256, "max_length": 50, "do_sample": False},
    "processing": {"tokenizer": "tokenizer.json"},
}

# an image engine whose height and width take multiples of 32 only (GLPN)
DEPTH = {
    "format_version": 2, "name": "glpn-depth-estimation", "family": "glpn", "task": "depth-estimation",
    "config": {}, "dims": {"batch": {"min": 1, "opt": 1, "max": 4},
                           "height": {"min": 64, "opt": 480, "max": 1024, "multiple": 32},
                           "width": {"min": 64, "opt": 640, "max": 1344, "multiple": 32}},
    "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}],
    "outputs": [{"name": "predicted_depth", "dtype": "float32", "shape": ["batch", "height", "width"]}],
    "artifacts": [{"format": "aoti", "file": "model.pt2", "sha256": "cd" * 32, "bytes": 10}],
}

BART = {
    **GENERATION, "name": "bart-summarization", "family": "bart", "task": "summarization",
    "graphs": {"encoder": "encoder", "decoder": "decoder"}, "encoder_decoder": True,
    "generation": {"eos_token_id": 2, "forced_eos_token_id": 2, "num_beams": 4, "early_stopping": "never",
                   "length_penalty": 2.0, "no_repeat_ngram_size": 3, "pad_token_id": 1,
                   "decoder_start_token_id": 2, "forced_bos_token_id": 0},
}


def npy(descr: str, shape: tuple, data: bytes, version: int = 1, fortran: bool = False) -> bytes:
    dims = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {dims}, }}"
    prefix = 10 if version == 1 else 12
    header += " " * ((64 - (prefix + len(header) + 1) % 64) % 64) + "\n"
    size = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode("latin1") + data


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = Path(argv[0])
    seeds: dict[str, list[bytes]] = {"manifest": [], "generation_manifest": [], "npy": []}

    near = copy.deepcopy(ENGINE)
    near["inputs"][0]["values"] = {"min": 5, "max": 4}
    seeds["manifest"] += [json.dumps(ENGINE).encode(), json.dumps(DECODER, indent=2).encode(),
                          json.dumps(near).encode(), json.dumps({**ENGINE, "format_version": 1}).encode(),
                          json.dumps(GENERATION).encode(), json.dumps(DEPTH).encode()]
    seeds["generation_manifest"] += [json.dumps(GENERATION).encode(), json.dumps(BART, indent=2).encode(),
                                     json.dumps({**GENERATION, "generation": None}).encode(),
                                     json.dumps(DECODER).encode()]
    for version in (1, 2, 3):
        seeds["npy"] += [
            npy("<f4", (2, 3), struct.pack("<6f", *range(6)), version),
            npy("<i8", (1, 4), struct.pack("<4q", 101, 2023, 0, 102), version),
        ]
    seeds["npy"] += [npy("<i4", (3,), struct.pack("<3i", 1, 2, 3)), npy("<f2", (), b"\x00\x3c"),
                     npy("|b1", (2, 2), b"\x01\x00\x00\x01"), npy("|u1", (0, 5), b""),
                     npy("<i8", (2,), b"\x00" * 8), npy("<i8", (1,), b"\x00" * 8, fortran=True)]
    for target, items in seeds.items():
        d = out / target
        d.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(items):
            (d / f"seed-{i:02d}").write_bytes(data)
    print(f"seed corpora: {', '.join(f'{t} ({len(v)})' for t, v in seeds.items())} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
