"""Model dimensions for training from scratch: named presets and a compact ``key=value`` spec.

Every preset uses Whisper's multilingual vocabulary (51865 tokens, 99 languages) and 80 mel bins, so the result
loads anywhere a Whisper checkpoint does; all but the test preset have the full 30 s audio context.
"""

from __future__ import annotations

from ..config import ModelDims


def make_dims(
    width: int, heads: int, encoder_layers: int, decoder_layers: int, n_mels: int = 80, audio_ctx: int = 1500
) -> ModelDims:
    return ModelDims(
        n_mels=n_mels, n_audio_ctx=audio_ctx, n_audio_state=width, n_audio_head=heads, n_audio_layer=encoder_layers,
        n_vocab=51865, n_text_ctx=448, n_text_state=width, n_text_head=heads, n_text_layer=decoder_layers,
    )  # fmt: skip


PRESETS: dict[str, ModelDims] = {
    # The demo model: 21.5 M parameters, 43 MB as float16 safetensors (the 51865 x 256 embedding is 13.3 M of
    # them). A deeper encoder than decoder: recognising the audio is the hard part, the text is simple.
    "demo": make_dims(256, 4, 6, 3),
    "tiny": make_dims(384, 6, 4, 4),  # Whisper tiny's shape (37 M parameters, 74 MB in float16)
    # For tests: TINY's widths with a 5 s encoder context (250 positions), so a CPU step takes a fraction of a
    # second. Training windows follow the context, so this model only ever sees 5 s windows.
    "micro": make_dims(64, 2, 2, 2, audio_ctx=250),
}

_KEYS = {"d": "width", "width": "width", "heads": "heads", "enc": "encoder_layers", "dec": "decoder_layers",
         "mels": "n_mels", "ctx": "audio_ctx"}  # fmt: skip


def parse_dims(spec: str) -> ModelDims:
    """A preset name ("demo", "tiny", "micro") or "d=256,heads=4,enc=6,dec=3[,mels=80][,ctx=1500]" (ctx: encoder
    positions, 50 a second of audio)."""
    if spec in PRESETS:
        return PRESETS[spec]
    values: dict[str, int] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in _KEYS:
            raise ValueError(
                f"bad dims spec {spec!r}: use a preset ({', '.join(PRESETS)}) or d=W,heads=H,enc=E,dec=D[,mels=M][,ctx=C]"
            )
        try:
            values[_KEYS[key.strip()]] = int(value)
        except ValueError:
            raise ValueError(f"bad dims spec {spec!r}: {key} must be an integer") from None
    missing = {"width", "heads", "encoder_layers", "decoder_layers"} - values.keys()
    if missing:
        raise ValueError(f"dims spec {spec!r} is missing {sorted(missing)}")
    return make_dims(**values)


__all__ = ["PRESETS", "make_dims", "parse_dims"]
