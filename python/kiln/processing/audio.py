"""Audio in: WAV files (or arrays) -> the padded float32 batch a Wav2Vec2 engine takes.

    proc = AudioProcessor.from_dir(engine_or_checkpoint_dir)   # reads preprocessor_config.json
    batch = proc(["a.wav", "b.wav"], max_samples=480000)
    batch.input_values   # (B, S) float32, zero-mean unit-variance per utterance if do_normalize
    batch.attention_mask # (B, S) int64: 1 on real samples (all ones when the feature extractor
                         # says return_attention_mask=false, as transformers feeds "base" models)

Decoding is scipy.io.wavfile's: PCM 8/16/24/32-bit, IEEE float 32/64-bit, WAVE_FORMAT_EXTENSIBLE
with either, any number of channels. Stereo (or more) becomes mono by
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
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputValueError, InvalidArgumentError
from . import PREPROCESSOR_FILE, read_preprocessor_config

MAX_RATE = 768_000  # Hz: the highest rate real audio interfaces record at; a header beyond is broken


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A WAV file -> (float32 samples (frames, channels) in [-1, 1], sample rate).

    Decoded by scipy.io.wavfile (PCM 8/16/24/32/64-bit, IEEE float 32/64-bit, WAVE_FORMAT_EXTENSIBLE,
    RIFF or big-endian RIFX); what is read is at most the file's size, and the rate is checked here
    and the duration before any resampling allocates.
    Raises InputValueError naming the file for anything unreadable, truncated or unsupported.
    """
    import warnings

    from scipy.io import wavfile

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", wavfile.WavFileWarning)  # a malformed chunk is an error here
            rate, data = wavfile.read(path)
    except FileNotFoundError:
        raise InputValueError(f"audio file {path}: no such file") from None
    except OSError as e:
        raise InputValueError(f"audio file {path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, ArithmeticError, IndexError, EOFError, struct.error, wavfile.WavFileWarning) as e:
        # scipy's reader raises these for malformed headers (0 bits per sample divides by zero)
        raise InputValueError(
            f"audio file {path}: not a WAV file kiln can read ({e}); expected a .wav file "
            "(PCM 8/16/24/32-bit or float); convert other formats first, e.g. "
            "`sox in.mp3 -b 16 out.wav`"
        ) from None
    if not 1 <= rate <= MAX_RATE:
        raise InputValueError(
            f"audio file {path}: its header says {rate} Hz; expected 1..{MAX_RATE} Hz (a broken or crafted header)"
        )
    data = data.reshape(len(data), -1)  # (frames, channels)
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128.0) / 128.0  # 8-bit WAV is unsigned
    elif np.issubdtype(data.dtype, np.signedinteger):  # 24-bit arrives left-justified in int32
        x = (data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))).astype(np.float32)
    elif np.issubdtype(data.dtype, np.floating):
        x = data.astype(np.float32)
    else:
        raise InputValueError(
            f"audio file {path}: samples of type {data.dtype} are not supported; expected "
            "PCM or float (convert with `sox in.wav -b 16 out.wav`)"
        )
    return x, int(rate)


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

    def __init__(
        self,
        sampling_rate: int = 16000,
        do_normalize: bool = True,
        return_attention_mask: bool = False,
        padding_value: float = 0.0,
        feature_size: int = 1,
        resample: bool = True,
    ):
        if feature_size != 1:
            raise InvalidArgumentError(
                f"feature_size={feature_size}: kiln's audio processor takes raw mono waveforms (feature_size 1)"
            )
        self.sampling_rate = int(sampling_rate)
        self.do_normalize = bool(do_normalize)
        self.return_attention_mask = bool(return_attention_mask)
        self.padding_value = float(padding_value)
        self.resample = bool(resample)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **kwargs) -> AudioProcessor:
        keys = ("sampling_rate", "do_normalize", "return_attention_mask", "padding_value", "feature_size")
        return cls(**{k: d[k] for k in keys if d.get(k) is not None}, **kwargs)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, **kwargs) -> AudioProcessor:
        """From a checkpoint's or an engine's preprocessor_config.json."""
        d = read_preprocessor_config(
            path,
            "an audio engine needs the checkpoint's feature-extractor "
            "settings (sampling_rate, do_normalize, return_attention_mask)",
        )
        return cls.from_dict(d, **kwargs)

    def load(self, source, index: int = 0, max_samples: int | None = None) -> np.ndarray:
        """One utterance -> mono float32 at the model's rate.

        source: a WAV path; a 1-D array already at the model's rate; or (array, rate).
        max_samples: the longest accepted, checked before resampling allocates anything."""
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
            raise InputValueError(
                f"{what}: expected a 1-D (mono) or 2-D (frames, channels) numeric array, got {x.dtype} {list(x.shape)}"
            )
        x = to_mono(x.astype(np.float32, copy=False))
        if x.size == 0:
            raise InputValueError(f"{what}: empty audio (0 samples); expected some sound")
        if not np.isfinite(x).all():
            raise InputValueError(f"{what}: contains NaN or infinite samples")
        if rate < 1:
            raise InputValueError(f"{what}: sample rate {rate} Hz; expected a positive rate")
        at_model_rate = x.size * self.sampling_rate // rate
        if max_samples is not None and at_model_rate > max_samples:
            raise InputValueError(
                f"{what}: {x.size / rate:.2f} s ({at_model_rate} samples at {self.sampling_rate} Hz), the engine "
                f"takes at most {max_samples} ({max_samples / self.sampling_rate:.2f} s); split the audio or "
                "rebuild the engine with a larger samples range"
            )
        if rate != self.sampling_rate:
            if not self.resample:
                raise InputValueError(
                    f"{what}: sampled at {rate} Hz, the model takes "
                    f"{self.sampling_rate} Hz and resampling is turned off; "
                    f"resample it (e.g. `sox in.wav -r {self.sampling_rate} out.wav`)"
                )
            x = resample(x, rate, self.sampling_rate)
        return np.ascontiguousarray(x, dtype=np.float32)

    def __call__(self, sources: Sequence, *, min_samples: int = 1, max_samples: int | None = None) -> AudioBatch:
        """Utterances -> a padded batch, padded to the longest and at least min_samples
        (an engine's smallest accepted length). Longer than max_samples is an error."""
        if isinstance(sources, (str, os.PathLike, tuple)) or (isinstance(sources, np.ndarray) and sources.ndim == 1):
            sources = [sources]
        sources = list(sources)
        if not sources:
            raise InputValueError("no audio given; expected one or more WAV paths or arrays")
        waves = []
        for i, src in enumerate(sources):
            x = self.load(src, i, max_samples)
            if max_samples is not None and x.size > max_samples:  # a resampled length rounded up
                x = x[:max_samples]
            waves.append(x)
        lengths = [w.size for w in waves]
        width = max(max(lengths), min_samples)
        values = np.full((len(waves), width), self.padding_value, np.float32)
        mask = np.zeros((len(waves), width), np.int64)
        for i, w in enumerate(waves):
            values[i, : w.size] = zero_mean_unit_var(w) if self.do_normalize else w
            mask[i, : w.size] = 1
        if not self.return_attention_mask:
            mask[:] = 1  # transformers gives these models no mask: every sample counts
        return AudioBatch(values, mask, lengths)


__all__ = ["AudioProcessor", "AudioBatch", "read_wav", "to_mono", "resample", "zero_mean_unit_var", "PREPROCESSOR_FILE"]
