"""``voxserve bench``: measured speed of voxserve against peer implementations doing the same work.

weights.py    named dimensions, the shared random-weight HF directory, BenchError
inputs.py     real speech windows from 16 kHz WAVs (stdlib ``wave``) and their log-mel features
subjects.py   what is measured: the Subject type, voxserve's subjects, and the hook for new decoding paths
peers/        transformers (hf.py) and CTranslate2 (ct2.py) on the same weights
suites.py     offline throughput, request latency, decode-step latency; token-count checks
machine.py    machine, GPU, driver and library versions; voxserve's revision
results.py    the result document: schema, validation, one JSON file per run
report.py     the short table printed at the end
"""
