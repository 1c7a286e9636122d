"""Audio in: decoding files and streams, telephony codecs, resampling, and log-mel features.

Importing this package does not import PyAV; ``load_audio`` does on first use, so the GPU machine (no PyAV)
can still resample, decode raw pcm16/G.711 and compute features.
"""

from .errors import AudioError, AudioTooLongError, CorruptAudioError, EmptyAudioError, UnsupportedAudioError
from .features import N_SAMPLES, log_mel_spectrogram, mel_filterbank, pad_or_trim
from .io import SUPPORTED, load_audio
from .raw import decode_g711, decode_pcm16
from .resample import StreamResampler, resample

__all__ = [
    "N_SAMPLES",
    "SUPPORTED",
    "AudioError",
    "AudioTooLongError",
    "CorruptAudioError",
    "EmptyAudioError",
    "StreamResampler",
    "UnsupportedAudioError",
    "decode_g711",
    "decode_pcm16",
    "load_audio",
    "log_mel_spectrogram",
    "mel_filterbank",
    "pad_or_trim",
    "resample",
]
