"""Audio in: WAV files (or arrays) -> the padded float32 batch a Wav2Vec2 engine takes.

    proc = AudioProcessor.from_dir(engine_or_checkpoint_dir)   # reads preprocessor_config.json
    batch = proc(["a.wav", "b.wav"], max_samples=480000)
    batch.input_values   # (B, S) float32, zero-mean unit-variance per utterance if do_normalize
    batch.attention_mask # (B, S) int64: 1 on real samples (all ones when the feature extractor
                         # says return_attention_mask=false, as transformers feeds "base" models)

Decoding is a small RIFF/WAVE reader on numpy: PCM 8/16/24/32-bit, IEEE float 32/64-bit,
WAVE_FORMAT_EXTENSIBLE with either, any number of channels. Stereo (or more) becomes mono by
averaging the channels, as librosa's and torchaudio's `to_mono` do. Audio at another rate is
resampled with scipy.signal.resample_poly (polyphase FIR, Kaiser window) unless the processor
was made with resample=False, in which case another rate is an error.

Normalisation is transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm over each
utterance's real samples, in float32: (x - mean) / sqrt(var + 1e-7); padding is then
`padding_value`. (transformers, given a padded batch *without* an attention mask, normalises
over the padded array instead, so a "base" model's answer for one utterance would depend on
its batch neighbours; kiln always normalises over the real samples, which is what
transformers computes for one utterance at a time and for every batch with a mask.)
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputValueError, InvalidArgumentError
from . import PREPROCESSOR_FILE, read_preprocessor_config


_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A WAV file -> (float32 samples (frames, channels) in [-1, 1], sample rate).

    Raises InputValueError naming the file for anything unreadable, truncated or unsupported.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputValueError(f"audio file {path}: cannot be read ({e.strerror or e})") from None
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        raise InputValueError(f"audio file {path}: not a WAV file (no RIFF/WAVE header); "
                              "expected a .wav file (PCM or float); convert other formats first, "
                              "e.g. `sox in.mp3 out.wav`")
    if data[:4] == b"RIFX":
        raise InputValueError(f"audio file {path}: big-endian WAV (RIFX) is not supported; "
                              "convert it with `sox in.wav -L out.wav`")
    fmt = None
    samples = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise InputValueError(f"audio file {path}: truncated 'fmt ' chunk ({len(body)} bytes)")
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack_from("<H", body, 24)[0]  # the sub-format GUID's first two bytes
            fmt = (tag, channels, rate, align, bits)
        elif cid == b"data":
            if fmt is None:
                raise InputValueError(f"audio file {path}: 'data' chunk before the 'fmt ' chunk")
            if len(body) < size:  # writers that stream set size 0xFFFFFFFF; a short body is a cut file
                if size not in (0, 0xFFFFFFFF):
                    raise InputValueError(
                        f"audio file {path}: truncated: the data chunk declares {size} bytes, "
                        f"the file holds {len(body)}")
            samples = body
            break
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None:
        raise InputValueError(f"audio file {path}: no 'fmt ' chunk; not a valid WAV file")
    if samples is None:
        raise InputValueError(f"audio file {path}: no 'data' chunk (truncated file?)")
    tag, channels, rate, align, bits = fmt
    if channels < 1 or rate < 1:
        raise InputValueError(f"audio file {path}: {channels} channels at {rate} Hz; not valid")
    width = bits // 8
    if bits % 8 or align != width * channels:
        raise InputValueError(f"audio file {path}: {bits}-bit samples with block align {align} "
                              f"for {channels} channel(s) are not supported")
    usable = len(samples) - len(samples) % align
    raw = np.frombuffer(samples, dtype=np.uint8, count=usable)
    if tag == _PCM and width == 1:
        x = (raw.astype(np.float32) - 128.0) / 128.0  # 8-bit WAV is unsigned
    elif tag == _PCM and width in (2, 4):
        x = raw.view(f"<i{width}").astype(np.float32) / float(2 ** (bits - 1))
    elif tag == _PCM and width == 3:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)  # sign-extend 24-bit
        x = v.astype(np.float32) / float(1 << 23)
    elif tag == _FLOAT and width in (4, 8):
        x = raw.view(f"<f{width}").astype(np.float32)
    else:
        kind = {_PCM: "PCM", _FLOAT: "float"}.get(tag, f"format tag {tag:#06x}")
        raise InputValueError(f"audio file {path}: {kind} with {bits}-bit samples is not supported; "
                              "expected PCM 8/16/24/32-bit or float 32/64-bit (convert with "
                              "`sox in.wav -b 16 out.wav`)")
    return x.reshape(-1, channels), int(rate)


def to_mono(x: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) -> (frames,): the mean of the channels."""
    return x if x.ndim == 1 else x.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 audio from orig_rate to target_rate (scipy's polyphase resample_poly)."""
    if orig_rate == target_rate:
        return x
    from scipy.signal import resample_poly
    g = gcd(int(orig_rate), int(target_rate))
    return resample_poly(x, target_rate // g, orig_rate // g).astype(np.float32)


def zero_mean_unit_var(x: np.ndarray) -> np.ndarray:
    """transformers' Wav2Vec2FeatureExtractor normalisation of one utterance (float32)."""
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


@dataclass
class AudioBatch:
    input_values: np.ndarray  # (B, S) float32
    attention_mask: np.ndarray  # (B, S) int64
    lengths: list[int]  # real samples per utterance (before padding)

    def feed(self) -> dict[str, np.ndarray]:
        return {"input_values": self.input_values, "attention_mask": self.attention_mask}


class AudioProcessor:
    """Wav2Vec2FeatureExtractor's computation (see the module docstring)."""

    def __init__(self, sampling_rate: int = 16000, do_normalize: bool = True,
                 return_attention_mask: bool = False, padding_value: float = 0.0,
                 feature_size: int = 1, resample: bool = True):
        if feature_size != 1:
            raise InvalidArgumentError(f"feature_size={feature_size}: kiln's audio processor takes raw "
                                       "mono waveforms (feature_size 1)")
        self.sampling_rate = int(sampling_rate)
        self.do_normalize = bool(do_normalize)
        self.return_attention_mask = bool(return_attention_mask)
        self.padding_value = float(padding_value)
        self.resample = bool(resample)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **kwargs) -> "AudioProcessor":
        keys = ("sampling_rate", "do_normalize", "return_attention_mask", "padding_value", "feature_size")
        return cls(**{k: d[k] for k in keys if d.get(k) is not None}, **kwargs)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **kwargs) -> "AudioProcessor":
        """From a checkpoint's or an engine's preprocessor_config.json."""
        d = read_preprocessor_config(path, "an audio engine needs the checkpoint's feature-extractor "
                                     "settings (sampling_rate, do_normalize, return_attention_mask)")
        return cls.from_dict(d, **kwargs)

    def load(self, source, index: int = 0) -> np.ndarray:
        """One utterance -> mono float32 at the model's rate.

        source: a WAV path; a 1-D array already at the model's rate; or (array, rate)."""
        what = f"audio {index}"
        if isinstance(source, (str, os.PathLike)):
            what = f"audio {index} ({source})"
            x, rate = read_wav(source)
        elif isinstance(source, tuple) and len(source) == 2:
            x, rate = np.asarray(source[0]), int(source[1])
        else:
            x, rate = np.asarray(source), self.sampling_rate
        if x.ndim == 2 and not isinstance(source, (str, os.PathLike)):
            x = x.T if x.shape[0] < x.shape[1] else x  # (channels, frames) arrays are common too
        if x.ndim not in (1, 2) or not np.issubdtype(x.dtype, np.number):
            raise InputValueError(f"{what}: expected a 1-D (mono) or 2-D (frames, channels) numeric "
                                  f"array, got {x.dtype} {list(x.shape)}")
        x = to_mono(x.astype(np.float32, copy=False))
        if x.size == 0:
            raise InputValueError(f"{what}: empty audio (0 samples); expected some sound")
        if not np.isfinite(x).all():
            raise InputValueError(f"{what}: contains NaN or infinite samples")
        if rate != self.sampling_rate:
            if not self.resample:
                raise InputValueError(f"{what}: sampled at {rate} Hz, the model takes "
                                      f"{self.sampling_rate} Hz and resampling is turned off; "
                                      f"resample it (e.g. `sox in.wav -r {self.sampling_rate} out.wav`)")
            x = resample(x, rate, self.sampling_rate)
        return np.ascontiguousarray(x, dtype=np.float32)

    def __call__(self, sources: Sequence, *, min_samples: int = 1,
                 max_samples: int | None = None) -> AudioBatch:
        """Utterances -> a padded batch, padded to the longest and at least min_samples
        (an engine's smallest accepted length). Longer than max_samples is an error."""
        if isinstance(sources, (str, os.PathLike, tuple)) or (
                isinstance(sources, np.ndarray) and sources.ndim == 1):
            sources = [sources]
        sources = list(sources)
        if not sources:
            raise InputValueError("no audio given; expected one or more WAV paths or arrays")
        waves = []
        for i, src in enumerate(sources):
            x = self.load(src, i)
            if max_samples is not None and x.size > max_samples:
                name = f" ({src})" if isinstance(src, (str, os.PathLike)) else ""
                raise InputValueError(
                    f"audio {i}{name}: {x.size} samples ({x.size / self.sampling_rate:.2f} s at "
                    f"{self.sampling_rate} Hz), the engine takes at most {max_samples} "
                    f"({max_samples / self.sampling_rate:.2f} s); split the audio or rebuild the "
                    "engine with a larger samples range")
            waves.append(x)
        lengths = [w.size for w in waves]
        width = max(max(lengths), min_samples)
        values = np.full((len(waves), width), self.padding_value, np.float32)
        mask = np.zeros((len(waves), width), np.int64)
        for i, w in enumerate(waves):
            values[i, :w.size] = zero_mean_unit_var(w) if self.do_normalize else w
            mask[i, :w.size] = 1
        if not self.return_attention_mask:
            mask[:] = 1  # transformers gives these models no mask: every sample counts
        return AudioBatch(values, mask, lengths)


__all__ = ["AudioProcessor", "AudioBatch", "read_wav", "to_mono", "resample", "zero_mean_unit_var",
           "PREPROCESSOR_FILE"]
