"""kiln's GPT-2 and BART against transformers (tiny random configs saved with save_pretrained):
logits with and without the KV cache, left padding, strict loading, random checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from kiln.checkpoint import load_model, random_checkpoint
from kiln.errors import CheckpointError
from kiln.models.bart import BartForConditionalGeneration
from kiln.models.gpt2 import GPT2LMHeadModel

TINY_GPT2 = dict(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
TINY_BART = dict(vocab_size=300, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, max_position_embeddings=64)


def _save(tmp_path, hf_class: str, config_class: str, seed: int = 0, **config):
    import transformers
    torch.manual_seed(seed)
    model = getattr(transformers, hf_class)(getattr(transformers, config_class)(**config)).eval()
    with torch.no_grad():  # move every tensor off transformers' flat init (biases 0, LayerNorm 1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name == "final_logits_bias":
                b.normal_()
    path = tmp_path / hf_class
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    path, hf = _save(tmp_path_factory.mktemp("gpt2"), "GPT2LMHeadModel", "GPT2Config", **TINY_GPT2)
    return path, hf, load_model(GPT2LMHeadModel, path)


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    path, hf = _save(tmp_path_factory.mktemp("bart"), "BartForConditionalGeneration", "BartConfig", **TINY_BART)
    return path, hf, load_model(BartForConditionalGeneration, path)


def _left_padded(batch_lengths: list[int], vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = max(batch_lengths)
    ids = torch.randint(1, vocab, (len(batch_lengths), width), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(batch_lengths):
        mask[i, width - n:] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # what transformers' generate feeds
    return ids, mask, positions


@torch.no_grad()
def test_gpt2_logits_equal_transformers_with_and_without_cache(gpt2):
    _, hf, model = gpt2
    ids, mask, pos = _left_padded([12, 7], 300)
    ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    last, present = model(ids, mask, pos, model.empty_cache(2))
    assert last.shape == (2, 1, 300)  # the last position's logits only: all that generation reads
    assert (last - ref[:, -1:]).abs().max() < 1e-4
    assert present.shape == (2, 2, 2, 4, 12, 16)
    # every other position's: a prefill of each prefix
    for t in range(1, 12):
        prefix, _ = model(ids[:, :t], mask[:, :t], pos[:, :t], model.empty_cache(2))
        row_real = mask[:, t - 1].bool()
        assert (prefix[:, 0] - ref[:, t - 1])[row_real].abs().max() < 1e-4
    # prefill 8 tokens, then decode the rest one at a time feeding the present cache back
    logits, cache = model(ids[:, :8], mask[:, :8], pos[:, :8], model.empty_cache(2))
    steps = [logits]
    for t in range(8, 12):
        logits, cache = model(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], cache)
        steps.append(logits)
    cached = torch.cat(steps, 1)
    assert (cached - ref[:, 7:12]).abs().max() < 1e-4  # positions 7..11 are real in both rows
    assert (cached[:, -1:] - last).abs().max() < 1e-5  # the cached path is the uncached one
    real = mask.bool()
    for b in range(2):  # keys/values of real tokens (padding rows attend to nothing real)
        assert torch.allclose(cache[:, :, b, :, real[b]], present[:, :, b, :, real[b]], atol=1e-5)


@torch.no_grad()
def test_gpt2_left_padding_changes_nothing_for_a_row(gpt2):
    _, _, model = gpt2
    ids, mask, pos = _left_padded([12, 7], 300)
    batch, _ = model(ids, mask, pos, model.empty_cache(2))
    alone, _ = model(ids[1:, 5:], mask[1:, 5:], pos[1:, 5:], model.empty_cache(1))
    assert (batch[1, -1] - alone[0, -1]).abs().max() < 1e-5


@torch.no_grad()
def test_distilgpt2_is_a_config_of_gpt2(tmp_path):
    path, hf = _save(tmp_path, "GPT2LMHeadModel", "GPT2Config", **{**TINY_GPT2, "n_layer": 1, "n_inner": 80})
    model = load_model(GPT2LMHeadModel, path)
    ids, mask, pos = _left_padded([9], 300)
    logits, _ = model(ids, mask, pos, model.empty_cache(1))
    assert (logits - hf(input_ids=ids).logits[:, -1:]).abs().max() < 1e-4


@torch.no_grad()
def test_bart_logits_equal_transformers_with_and_without_cache(bart):
    _, hf, model = bart
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 300, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # the encoder pads on the right
    dec = torch.randint(3, 300, (2, 6), generator=g)
    dec[:, 0] = 2
    ref = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    full = model(ids, mask, dec)
    assert (full - ref).abs().max() < 1e-4
    cross = model.encode(ids, mask)  # the encoder graph
    assert cross.shape == (2, 2, 2, 4, 10, 16)
    cache, steps = model.empty_cache(2), []
    for t in range(6):
        logits, cache = model.decode(dec[:, t:t + 1], torch.ones(2, t + 1, dtype=torch.long), torch.full((2, 1), t),
                                     mask, cache, cross)  # the decoder graph
        steps.append(logits)
    cached = torch.cat(steps, 1)
    assert (cached - ref).abs().max() < 1e-4
    assert (cached - full).abs().max() < 1e-5


@torch.no_grad()
def test_bart_final_logits_bias_and_tied_embeddings_load(bart):
    path, hf, model = bart
    assert torch.equal(model.final_logits_bias, hf.final_logits_bias)
    assert model.final_logits_bias.abs().sum() > 0
    assert model.lm_head.weight is model.model.shared.weight is model.model.decoder.embed_tokens.weight


def test_strict_loading_names_the_key(tmp_path, gpt2):
    from safetensors.torch import load_file, save_file
    path, _, _ = gpt2
    state = load_file(path / "model.safetensors")
    for name, edit, needle in (
        ("missing", lambda s: s.pop("transformer.ln_f.weight"), "missing key 'transformer.ln_f.weight'"),
        ("unexpected", lambda s: s.__setitem__("transformer.extra", torch.zeros(3)), "unexpected key 'transformer.extra'"),
        ("shape", lambda s: s.__setitem__("transformer.wpe.weight", torch.zeros(32, 64)),
         "shape mismatch for 'transformer.wpe.weight': checkpoint [32, 64], model [64, 64]"),
    ):
        d = tmp_path / name
        d.mkdir()
        s = dict(state)
        edit(s)
        save_file(s, d / "model.safetensors")
        (d / "config.json").write_text((path / "config.json").read_text())
        with pytest.raises(CheckpointError, match=__import__("re").escape(needle)):
            load_model(GPT2LMHeadModel, d)


def test_unsupported_configs_are_refused(tmp_path, gpt2, bart):
    for (path, _, _), cls, key in ((gpt2, GPT2LMHeadModel, "scale_attn_by_inverse_layer_idx"),
                                   (bart, BartForConditionalGeneration, "add_final_layer_norm")):
        config = json.loads((path / "config.json").read_text())
        config[key] = True
        d = tmp_path / cls.__name__
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        (d / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
        with pytest.raises(CheckpointError, match=f"{key}=True: kiln's"):
            load_model(cls, d)


@torch.no_grad()
def test_random_checkpoints_load_in_transformers(tmp_path, gpt2, bart):
    import transformers
    for (path, _, _), cls, hf_cls in ((gpt2, GPT2LMHeadModel, transformers.GPT2LMHeadModel),
                                      (bart, BartForConditionalGeneration, transformers.BartForConditionalGeneration)):
        config_dir = tmp_path / f"config-{cls.__name__}"
        config_dir.mkdir()
        (config_dir / "config.json").write_text((path / "config.json").read_text())
        ckpt = random_checkpoint(cls, config_dir, seed=3, out_dir=tmp_path / f"random-{cls.__name__}")
        model, hf = load_model(cls, ckpt), hf_cls.from_pretrained(ckpt).eval()
        ids = torch.randint(3, 300, (1, 9))
        mask = torch.ones_like(ids)
        if cls is GPT2LMHeadModel:
            ours, _ = model(ids, mask, torch.arange(9)[None], model.empty_cache(1))
            ref = hf(input_ids=ids).logits[:, -1:]
            std = model.transformer.h[0].attn.c_proj.weight.std().item()
            assert std == pytest.approx(0.02 / (2 * 2) ** 0.5, rel=0.1)  # GPT-2's scaled residual init
        else:
            ours, ref = model(ids, mask, ids[:, :4]), hf(input_ids=ids, decoder_input_ids=ids[:, :4]).logits
        assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("recipe", ["gpt2-text-generation", "bart-summarization"])
def test_tensorrt_profiles_of_a_decoder_pair_past_and_new_consistently(recipe):
    """One profile per range would pair past 1023 with new 1024 against total 1024; the decoder
    gets prefill / decode / extend profiles whose every corner is a real shape, and every
    shape generation and parity use fits one of them."""
    from kiln.gpu import choose_profile, profiles_for
    from kiln.manifest import Manifest, Source
    from kiln.parity import parity_feeds
    from kiln.recipe import load_recipe
    r = load_recipe(recipe)
    graph = r.deployable.graph("decoder")
    config = r.deployable.config_class.from_dict(json.loads((r.path.parent / r.checkpoint / "config.json").read_text()))
    specs = [s.to_json() for s in graph.input_specs(config)]
    used = set(graph.used_dims(config))
    profiles = profiles_for(specs, {n: d.to_json() for n, d in r.dims.items() if n in used})
    assert len(profiles) == 3
    for p in profiles:
        for k in ("min", "opt", "max"):
            assert p["past_key_values"][k][4] + p["input_ids"][k][1] == p["attention_mask"][k][1], (p, k)
    manifest = Manifest(name=r.name, family=r.family, task=r.task, config=config.to_dict(),
                        dims={n: d for n, d in r.dims.items() if n in used}, source=Source("", ""), graph="decoder")
    feeds = parity_feeds(manifest)
    assert [choose_profile(profiles, f) for f in feeds] == [0, 1, 1, 2]  # prefill, decode x2, extend


@torch.no_grad()
def test_decoder_linears_stored_in_out_give_the_same_logits_from_one_table():
    """The CPU formats' decoder layout (kiln.exporters.layout): every linear stored (in, out), the
    embeddings tied to the head gathering from that same table; the model computes what it
    computed, holds the table once, and is as it was afterwards."""
    from kiln.exporters.layout import ColumnEmbedding, InOutLinear, decoder_in_out
    from kiln.manifest import DimRange
    from kiln.models.bart import BartConfig
    from kiln.models.gpt2 import GPT2Config

    decoder_dims = {"batch": DimRange(1, 1, 4), "past": DimRange(0, 8, 32), "new": DimRange(1, 1, 8)}
    big = dict(vocab_size=9000)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**{**TINY_GPT2, **big})).eval()
    bart = BartForConditionalGeneration(BartConfig(**{**TINY_BART, **big})).eval()
    for m in (gpt2, bart):
        for p in m.parameters():
            p.normal_(0, 0.2)
    ids, mask, positions = _left_padded([5, 3], 9000)
    cases = [
        (gpt2, lambda m: m(ids, mask, positions, m.empty_cache(2))[0], ["lm_head", "transformer.wte"]),
        (bart, lambda m: m(ids, mask, ids[:, :4]), ["lm_head", "model.shared", "model.encoder.embed_tokens",
                                                    "model.decoder.layers.0.fc1", "model.decoder.layers.0.self_attn.q_proj"]),
    ]
    for model, run, swapped in cases:
        ref = run(model)
        table = model.lm_head.weight
        linears = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}
        with decoder_in_out(model, {"batch": DimRange(1, 1, 4)}) as (same, layout):  # no cache: as it is
            assert same is model and layout == {} and model.lm_head.weight is table
        with decoder_in_out(model, decoder_dims) as (cpu, layout):
            assert isinstance(cpu.lm_head, InOutLinear) and cpu.lm_head.weight_t.shape == (table.shape[1], 9000)
            assert not any(type(m) is torch.nn.Linear for m in cpu.modules())  # every linear: (in, out)
            assert all(m.weight_t.is_contiguous() for m in cpu.modules() if isinstance(m, InOutLinear))
            assert set(swapped) <= set(layout["weight_layout"]["in_out"]) and linears <= set(layout["weight_layout"]["in_out"])
            embeddings = [m for m in cpu.modules() if isinstance(m, ColumnEmbedding)]
            assert embeddings and all(e.head is cpu.lm_head for e in embeddings)
            n_table = sum(p.numel() for p in cpu.parameters() if p.shape == (table.shape[1], 9000))
            assert n_table == table.numel()  # held once: the head and the embeddings share it
            out = run(cpu)
        torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)
        assert model.lm_head.weight is table and type(model.lm_head) is torch.nn.Linear  # restored
        assert {n for n, m in model.named_modules() if type(m) is torch.nn.Linear} == linears
    assert type(gpt2.transformer.wte) is torch.nn.Embedding and bart.model.encoder.embed_tokens is bart.model.shared

    # linears sharing one weight share its (in, out) copy
    shared = torch.nn.Linear(6, 5)
    pair = torch.nn.ModuleDict({"a": shared, "b": torch.nn.Linear(6, 5)})
    pair["b"].weight = shared.weight
    with decoder_in_out(pair, decoder_dims) as (cpu, _):
        assert cpu["a"].weight_t is cpu["b"].weight_t
        x = torch.randn(2, 3, 6)
        torch.testing.assert_close(cpu["b"](x), torch.nn.functional.linear(x, shared.weight, pair["b"].bias))


def test_linear_kernels_follow_the_decode_rows_and_the_cpu_vendor():
    """A one-row decode step: MKL's GEMM on an Intel CPU, Inductor's one-row reduction elsewhere
    (neither prepacked); several rows and encoders: oneDNN's prepacked kernels."""
    from kiln.exporters.layout import one_row_reduction, pack_rows, prepack_linears
    from kiln.manifest import DimRange

    def dims(batch_opt: int, cache: bool = True) -> dict:
        d = {"batch": DimRange(1, batch_opt, 16), "new": DimRange(1, 1, 64)}
        return {**d, "past": DimRange(0, 64, 512)} if cache else d

    assert prepack_linears(dims(1), "GenuineIntel")[0] is False and not one_row_reduction(dims(1), "GenuineIntel")
    assert prepack_linears(dims(4), "GenuineIntel")[0] is True  # a 4-beam step: oneDNN wins
    assert prepack_linears(dims(1), "AuthenticAMD")[0] is False and one_row_reduction(dims(1), "AuthenticAMD")
    assert prepack_linears(dims(4), "AuthenticAMD")[0] is True and not one_row_reduction(dims(4), "AuthenticAMD")
    for vendor in ("GenuineIntel", "AuthenticAMD"):  # an encoder
        assert prepack_linears(dims(1, cache=False), vendor)[0] is True
        assert not one_row_reduction(dims(1, cache=False), vendor)
    assert pack_rows(dims(1)) == 1 and pack_rows(dims(4)) == 4 and pack_rows(dims(1, cache=False)) is None


def test_one_row_linears_compute_the_linears_at_every_row_count(tmp_path):
    """OneRowLinear (an nn.Linear, a tied embedding, GPT-2's Conv1D) gives F.linear's numbers in
    eager and compiled by AOTInductor, for one row (its reduction branch) and for several (MKL's
    GEMM); the package holds each weight once and calls no oneDNN linear."""
    import zipfile

    from kiln.exporters.aoti import export_aoti
    from kiln.exporters.layout import OneRowLinear, one_row_linears
    from kiln.models.gpt2 import Conv1D
    from kiln.roofline import artifact_kernels

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(300, 48)
            self.conv = Conv1D(48, 96)
            self.fc = torch.nn.Linear(96, 48)
            self.head = torch.nn.Linear(48, 300, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.fc(torch.tanh(self.conv(self.embed(ids)))))

    torch.manual_seed(0)
    model = Tied().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    weights = sum(p.numel() * 4 for p in model.parameters())
    cases = [torch.randint(0, 300, shape) for shape in ((1, 1), (3, 1), (2, 5))]
    with torch.no_grad():
        expected = [model(ids) for ids in cases]
        with one_row_linears(model) as (swapped, layout):
            assert isinstance(swapped.conv, OneRowLinear) and swapped.head.weight is swapped.embed.weight
            assert set(layout["weight_layout"]["one_row_reduction"]) == {"conv", "fc", "head"}
            for ids, ref in zip(cases, expected):
                torch.testing.assert_close(swapped(ids), ref, rtol=1e-5, atol=1e-5)
            package = tmp_path / "one-row.pt2"
            shapes = ({0: torch.export.Dim("batch", min=1, max=8), 1: torch.export.Dim("new", min=1, max=16)},)
            export_aoti(swapped, (cases[2],), package, shapes, prepack=False)
        assert isinstance(model.conv, Conv1D)  # back as it was
        compiled = torch._inductor.aoti_load_package(str(package))
        for ids, ref in zip(cases, expected):
            torch.testing.assert_close(compiled(ids), ref, rtol=1e-5, atol=1e-5)
    with zipfile.ZipFile(package) as z:
        blob = sum(i.file_size for i in z.infolist() if i.filename.endswith(".blob"))
    assert weights <= blob < 1.2 * weights, (blob, weights)  # the tied table once, no transposed copies
    kernels = artifact_kernels(package)
    assert "mm_out" in kernels and "_linear_pointwise" not in kernels, kernels


def _packed_layouts(package) -> list[tuple[int, ...]]:
    """The oneDNN descriptors of an AOTInductor package's prepacked constants (its wrapper source)."""
    import re

    from kiln.roofline import wrapper_source

    found = re.findall(r"constants_info_\[\d+\]\.opaque_metadata = \{([^}]*)\}", wrapper_source(package))
    return [tuple(int(b.strip().rstrip("L")) for b in f.split(",")) for f in found]


def test_prepacked_weights_are_laid_out_for_the_rows_asked(tmp_path):
    """export_aoti(pack_rows=R) packs each linear's weight as oneDNN lays it out for R rows (the
    package holds that descriptor); without it, for the export example's rows."""
    from kiln.exporters.aoti import export_aoti

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 256).eval()

    def layout(rows: int) -> tuple[int, ...]:
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
        return tuple(torch.ops.mkldnn._get_mkldnn_serialized_md(packed).tolist())

    example = (torch.randn(2, 16, 64),)  # 32 rows
    shapes = ({0: torch.export.Dim("batch", min=1, max=8), 1: torch.export.Dim("seq", min=1, max=64)},)
    asked = next((r for r in (1, 2, 4, 8, 64, 256) if layout(r) != layout(32)), None)
    if asked is None:
        pytest.skip("oneDNN lays this weight out the same for every row count on this CPU")
    for rows, expected in ((asked, layout(asked)), (None, layout(32))):
        package = tmp_path / f"rows-{rows}.pt2"
        export_aoti(linear, example, package, shapes, pack_rows=rows)
        assert _packed_layouts(package) == [expected], rows
