"""Live transcription: streams of audio in, partial and final text out, on the shared batching engine.

formats.py    realtime input formats (pcm16 16/24 kHz, G.711 mu-law/A-law 8 kHz) -> 16 kHz float chunks
agreement.py  stable-prefix commit: the words two consecutive partial hypotheses agree on
buffer.py     a stream's audio by absolute sample position
service.py    what all streams share: model and engine, batched VAD, partial/final decodes, stream caps
session.py    one stream: OpenAI Realtime transcription events over the VAD and the decodes
callers.py    the stream bench's simulated callers: audio tracks, oracle VAD, the events they send
streambench.py  N simulated callers at real-time pace: partial-result latency and streams held
wsbench.py    the same callers over real WebSockets (uvicorn, client processes)
window_accuracy.py  what encoding only the audio an utterance has costs in WER
"""
