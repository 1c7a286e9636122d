"""Malformed input gets a 4xx with a clear message in OpenAI's error shape, and the server stays healthy:
corrupt audio, wrong content type, oversized and over-long uploads, missing fields, bad options; then
schemathesis generates requests from the OpenAPI schema."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import tone, wav_bytes
from voxserve.server.app import create_app

URL = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    from voxserve.server.settings import ServerSettings

    tmp = tmp_path_factory.mktemp("malformed")
    settings = ServerSettings(
        models={"tiny": str(tiny_model_dir)},
        default_model="tiny",
        device="cpu",
        engine_slots=2,
        jobs_db=tmp / "jobs.db",
        jobs_dir=tmp / "jobs",
        max_upload_bytes=400_000,
        max_audio_seconds=5.0,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err["message"]
    return err


def _post(client, data=None, files=None, **kw):
    return client.post(URL, data={"model": "tiny", **(data or {})}, files=files, **kw)


def _wav(seconds: float = 1.0):
    return {"file": ("a.wav", wav_bytes(tone(seconds)), "audio/wav")}


CASES = [
    ("corrupt wav", {"file": ("a.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40), "audio/wav")}, {}, 400),
    (
        "truncated mp3",
        {"file": ("a.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(100), "audio/mpeg")},
        {},
        400,
    ),
    ("text file", {"file": ("a.txt", b"hello, this is not audio " * 20, "text/plain")}, {}, 415),
    ("empty file", {"file": ("a.wav", b"", "audio/wav")}, {}, 400),
    ("bad format", None, {"response_format": "docx"}, 400),
    ("bad priority", None, {"priority": "urgent"}, 400),
    ("bad deadline", None, {"deadline_ms": "-5"}, 400),
    ("bad temperature", None, {"temperature": "7"}, 400),
    ("bad language", None, {"language": "klingon"}, 400),
    ("bad hotword weight", None, {"hotwords": "voxserve:999"}, 400),
    # a long phrase made the hotword trie grow quadratically: 320 kB took the server past 20 GB (OOM kill)
    ("overlong hotword", None, {"hotwords": "word " * 50}, 400),
    ("unknown model", None, {"model": "gpt-99"}, 404),
]


@pytest.mark.parametrize("name,files,data,status", CASES, ids=[c[0] for c in CASES])
def test_bad_requests(client, name, files, data, status):
    _error(_post(client, data=data, files=files or _wav()), status)


def test_missing_fields_are_named(client):
    err = _error(client.post(URL, data={"language": "en"}), 400, "file", "model")
    assert err["type"] == "invalid_request_error"


def test_wrong_content_type(client):
    _error(client.post(URL, json={"model": "tiny", "file": "abc"}), 400, "file")
    _error(client.post(URL, content=b"\x00\x01garbage", headers={"content-type": "multipart/form-data"}), 400)


def test_oversized_upload_is_413_before_decoding(client):
    err = _error(_post(client, files=_wav(20.0)), 413, "limit")
    assert err["code"] == "file_too_large"


def test_chunked_oversized_upload_is_413(client):
    body = b"x" * 500_000

    def chunks():
        for i in range(0, len(body), 50_000):
            yield body[i : i + 50_000]

    r = client.post(URL, content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    _error(r, 413)


def test_too_long_audio_is_413(client):
    err = _error(_post(client, files=_wav(8.0)), 413, "5")
    assert err["code"] == "audio_too_long"


def test_job_errors(client):
    _error(client.get("/v1/jobs/job_nope"), 404, "job_nope")
    _error(client.post("/v1/jobs", data={"model": "tiny"}), 400, "file")


def test_healthy_after_all_that(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/ready").status_code == 200
    r = _post(client, data={"temperature": "0", "language": "en"}, files=_wav())
    assert r.status_code == 200 and "text" in r.json()


@pytest.mark.slow
def test_schemathesis_every_answer_is_a_clear_4xx(client):
    """Requests generated from the OpenAPI schema: no 5xx, every error in OpenAI's shape with a message."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    seen: list[int] = []
    for operation in schema.get_all_operations():
        op = operation.ok()
        if op.method.upper() != "POST" and "{job_id}" not in op.path:
            continue

        @given(case=op.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call()
            seen.append(response.status_code)
            assert response.status_code < 500, response.text
            if response.status_code >= 400:
                err = response.json()["error"]
                assert isinstance(err["message"], str) and err["message"].strip()

        check()
    assert seen and any(400 <= s < 500 for s in seen)
    assert client.get("/health").json()["status"] == "ok"
