"""Text generation with kiln's C++ loop (kiln::Generator): greedy, seeded sampling, beam search.

    gen = Generator("engines/gpt2-text-generation")             # a generation engine directory
    out = gen.generate([[464, 2068, 7586]], max_new_tokens=32)  # token ids in, token ids out
    out.sequences[0]                                            # new tokens only (eos included)

Settings have transformers' GenerationConfig names and semantics; the engine's
generation_config.json supplies the defaults, keyword arguments override them. Sampling uses
kiln's own seeded random stream: the same seed gives the same tokens on every backend, but not
torch's tokens.

Generator.from_functions runs the loop over Python callables (tests, custom decoders): each
takes and returns a dict of numpy arrays following the graph contract in kiln/generate.h.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln import _kiln  # type: ignore[attr-defined]  # the C++ extension
from kiln.errors import InvalidArgumentError

__all__ = ["Generator", "GenerationResult"]

_EARLY_STOPPING = {
    False: _kiln.EarlyStopping.heuristic,
    True: _kiln.EarlyStopping.true,
    "never": _kiln.EarlyStopping.never,
}


@dataclass
class GenerationResult:
    sequences: list[list[int]]  # new tokens per prompt (x num_return_sequences), no padding
    scores: list[float] | None  # beam search: length-penalised scores; None otherwise
    timings: dict = field(default_factory=dict)  # encoder_ms, prefill_ms, time_to_first_token_ms, step_ms, total_ms
    steps: int = 0
    stopped: bool = False  # on_tokens returned False


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)


def _wrap(fn: Callable[[dict], Mapping[str, Any]]) -> Callable[[dict], dict]:
    def call(inputs: dict) -> dict:
        return {name: _to_numpy(v) for name, v in fn(inputs).items()}

    return call


def _ids(name: str, value: Any) -> list[int]:
    """A token id or a list of them (an option such as eos_token_id); floats are refused, not truncated."""
    values = [value] if isinstance(value, (int, np.integer)) else value
    try:
        return [operator.index(v) for v in values]
    except TypeError:
        raise InvalidArgumentError(f"{name} must be a token id or a list of token ids, got {value!r}") from None


GENERATION_OPTIONS = (
    "max_new_tokens",
    "max_length",
    "min_length",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "seed",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "num_return_sequences",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "on_tokens",
)


class Generator:
    """A generation engine (decoder, and encoder for BART) and the loop that drives it.

    backend: "auto" or a name from kiln.runtime.available_backends(). `generate` releases the
    GIL while it runs; the engines may be shared by several threads.
    """

    def __init__(
        self,
        engine_dir: str | os.PathLike,
        backend: str = "auto",
        num_threads: int = 0,
        verify_sha256: bool = True,
        precision: str = "auto",
    ):
        self._gen = _kiln.Generator(os.fspath(engine_dir), backend, num_threads, verify_sha256, precision)

    @classmethod
    def from_functions(
        cls,
        decoder: Callable[[dict], Mapping[str, Any]],
        encoder: Callable[[dict], Mapping[str, Any]] | None = None,
        *,
        layers: int,
        heads: int,
        head_dim: int,
        vocab_size: int,
        max_positions: int,
        encoder_decoder: bool = False,
        max_batch: int = 0,
        generation: Mapping[str, Any] | None = None,
        name: str = "generator",
    ) -> Generator:
        """A generator over callables {input name: numpy array} -> {output name: array}.

        generation: generation_config.json-style defaults (eos_token_id, num_beams, ...).
        """
        self = cls.__new__(cls)
        defaults = _kiln.GenerationOptions.from_json(json.dumps(dict(generation or {})), "generation")
        self._gen = _kiln.Generator.from_functions(
            _wrap(decoder),
            None if encoder is None else _wrap(encoder),
            name,
            layers,
            heads,
            head_dim,
            vocab_size,
            max_positions,
            encoder_decoder,
            max_batch,
            defaults,
        )
        return self

    @property
    def name(self) -> str:
        return self._gen.name

    @property
    def backend(self) -> str:
        """The decoder engine's backend, or "functions"."""
        return self._gen.backend

    @property
    def vocab_size(self) -> int:
        return self._gen.vocab_size

    @property
    def max_positions(self) -> int:
        return self._gen.max_positions

    @property
    def encoder_decoder(self) -> bool:
        return self._gen.encoder_decoder

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        min_length: int | None = None,
        min_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        num_beams: int | None = None,
        length_penalty: float | None = None,
        early_stopping: bool | str | None = None,
        num_return_sequences: int | None = None,
        no_repeat_ngram_size: int | None = None,
        repetition_penalty: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        decoder_start_token_id: int | None = None,
        forced_bos_token_id: int | None = None,
        forced_eos_token_id: int | Sequence[int] | None = None,
        on_tokens: Callable[[list[int]], bool | None] | None = None,
        **unknown: Any,
    ) -> GenerationResult:
        """Generate from token-id prompts (the encoder input for BART). None keeps the engine's default.

        on_tokens(tokens) is called after each step with each row's new token (-1 for a row
        already finished); beam search calls it per position of the final sequences. It returns
        True or None to continue, False to stop; anything else (a list, 0, a string) is an
        InvalidArgumentError rather than a guess from its truthiness.

        Token ids are ints (numpy / torch integers too); a float, a bool or an int outside
        int64 is an InputValueError naming the prompt and the position. NaN logits from the
        model are a RuntimeFailure naming the row and the step.
        """
        if unknown:  # options come from users (pipelines, servers): a misspelt one is named, not a TypeError
            raise InvalidArgumentError(
                f"unknown generation option(s) {sorted(unknown)}; the options are {', '.join(GENERATION_OPTIONS)}"
            )
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise InvalidArgumentError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
        rows = []
        for i, p in enumerate(prompts):
            if isinstance(p, (int, np.integer)):
                raise InvalidArgumentError(
                    f"prompt {i} is a single id ({p}); prompts is a list of prompts, pass [[ids...]]"
                )
            # The runtime converts the ids and refuses what is not an int64 token id (a float,
            # 2**63, True) with an InputValueError naming the prompt and the position.
            if not isinstance(p, (list, tuple, np.ndarray, str, bytes)) and hasattr(p, "__iter__"):
                p = list(p)  # a torch tensor or an iterator
            rows.append(p)
        o = self._gen.defaults
        plain = dict(
            max_new_tokens=max_new_tokens,
            max_length=max_length,
            min_length=min_length,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            num_beams=num_beams,
            length_penalty=length_penalty,
            num_return_sequences=num_return_sequences,
            no_repeat_ngram_size=no_repeat_ngram_size,
            repetition_penalty=repetition_penalty,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            forced_bos_token_id=forced_bos_token_id,
        )
        for key, value in plain.items():
            if value is None:
                continue
            try:
                setattr(o, key, value)
            except TypeError:
                raise InvalidArgumentError(f"{key} is {value!r}, which has the wrong type") from None
        if early_stopping is not None:
            if early_stopping not in _EARLY_STOPPING:
                raise InvalidArgumentError(f"early_stopping is {early_stopping!r}; use True, False or 'never'")
            o.early_stopping = _EARLY_STOPPING[early_stopping]
        if eos_token_id is not None:
            o.eos_token_ids = _ids("eos_token_id", eos_token_id)
        if forced_eos_token_id is not None:
            o.forced_eos_token_ids = _ids("forced_eos_token_id", forced_eos_token_id)
        r = self._gen.generate(rows, o, on_tokens)
        return GenerationResult(
            sequences=r["sequences"],
            scores=r["scores"] if r["scores"] else None,
            timings=r["timings"],
            steps=r["steps"],
            stopped=r["stopped"],
        )

    def __repr__(self) -> str:
        return f"Generator({self.name!r}, backend={self.backend!r})"
