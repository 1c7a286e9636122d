"""Jobs for long files: accepted at once, decoded in the background, kept in SQLite so a restart loses nothing.

A job's audio is written to ``jobs_dir`` and its row to the database before the id is returned. A worker
decodes the file, cuts it at pauses into pieces (the plan is stored), and stores each piece's segments as soon
as it is done. After a kill, start-up finds every job that was queued or running and carries on from the
first piece without stored segments, so finished pieces are never decoded twice and nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audio.errors import AudioError
from ..audio.io import load_audio
from ..decoding.hotwords import Hotword
from ..decoding.options import OptionsError
from ..engine.types import Priority
from ..results import Segment, Transcription, TranscriptionInfo, Word
from .errors import APIError
from .service import Params

if TYPE_CHECKING:
    from .context import ServerContext
    from .runtime import ModelRuntime

log = logging.getLogger("voxserve.server")

STATES = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    model TEXT NOT NULL, params TEXT NOT NULL, audio TEXT NOT NULL, filename TEXT,
    duration REAL, language TEXT, pieces_total INTEGER, error TEXT
);
CREATE TABLE IF NOT EXISTS pieces (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, start INTEGER NOT NULL, stop INTEGER NOT NULL,
    segments TEXT, PRIMARY KEY (job_id, idx)
);
"""


class JobStore:
    """The SQLite tables; every call is its own transaction, so a kill leaves either all of it or none."""

    def __init__(self, db: Path, audio_dir: Path) -> None:
        self.audio_dir = Path(audio_dir)
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a finished piece survives power loss, not only a kill
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def create(self, audio: bytes, filename: str, model: str, params: Params) -> str:
        job_id = "job_" + uuid.uuid4().hex
        path = self.audio_dir / f"{job_id}.audio"
        tmp = path.with_suffix(".part")
        tmp.write_bytes(audio)
        tmp.replace(path)  # the row below never points at a half-written file
        now = time.time()
        self._run(
            "INSERT INTO jobs (id, status, created, updated, model, params, audio, filename) "
            "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
            (job_id, now, now, model, json.dumps(params_to_dict(params)), str(path), filename),
        )
        return job_id

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return dict(rows[0]) if rows else None

    def unfinished(self) -> list[str]:
        rows = self._run("SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created")
        return [r["id"] for r in rows]

    def set(self, job_id: str, **fields: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in fields)
        self._run(
            f"UPDATE jobs SET {names}, updated = ? WHERE id = ?", (*fields.values(), time.time(), job_id)
        )

    def plan(self, job_id: str, pieces: list[tuple[int, int]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO pieces (job_id, idx, start, stop) VALUES (?, ?, ?, ?)",
                [(job_id, i, s, e) for i, (s, e) in enumerate(pieces)],
            )
            self._db.execute(
                "UPDATE jobs SET pieces_total = ?, updated = ? WHERE id = ?",
                (len(pieces), time.time(), job_id),
            )
            self._db.execute("COMMIT")

    def pieces(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._run("SELECT * FROM pieces WHERE job_id = ? ORDER BY idx", (job_id,))
        return [dict(r) for r in rows]

    def finish_piece(self, job_id: str, idx: int, segments: list[Segment]) -> None:
        data = json.dumps([s.to_dict() for s in segments])
        self._run("UPDATE pieces SET segments = ? WHERE job_id = ? AND idx = ?", (data, job_id, idx))

    def counts(self) -> dict[str, int]:
        rows = self._run("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        out = dict.fromkeys(STATES, 0)
        out.update({r["status"]: r["n"] for r in rows})
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def params_to_dict(p: Params) -> dict[str, Any]:
    d = asdict(p)
    d["hotwords"] = [[h.phrase, h.weight] for h in p.hotwords]
    d["priority"] = p.priority.name.lower()
    d["deadline"] = None  # a job has no deadline; a restart would make any monotonic time meaningless
    return d


def params_from_dict(d: dict[str, Any]) -> Params:
    d = dict(d)
    d["hotwords"] = tuple(Hotword(phrase, weight) for phrase, weight in d.get("hotwords", ()))
    d["priority"] = Priority[d.get("priority", "batch").upper()]
    return Params(**d)


def segment_from_dict(d: dict[str, Any]) -> Segment:
    d = dict(d)
    d["tokens"] = tuple(d["tokens"])
    words = d.pop("words", None)
    return Segment(**d, words=tuple(Word(**w) for w in words) if words is not None else None)


class JobRunner:
    def __init__(self, store: JobStore, ctx: ServerContext) -> None:
        self.store, self.ctx = store, ctx
        self._queue: asyncio.Queue[str] | None = None
        self._workers: list[asyncio.Task] = []
        self._stopping = threading.Event()

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        resumed = self.store.unfinished()
        for job_id in resumed:
            self._queue.put_nowait(job_id)
        if resumed:
            log.info("resuming %d unfinished job(s)", len(resumed))
        self._workers = [
            asyncio.create_task(self._worker(), name=f"voxserve-jobs-{i}")
            for i in range(self.ctx.settings.job_workers)
        ]

    async def stop(self) -> None:
        self._stopping.set()  # a job in progress stops after its current piece; it resumes on the next start
        for t in self._workers:
            t.cancel()
        for t in self._workers:
            with suppress(asyncio.CancelledError):
                await t
        self.store.close()

    async def submit(self, audio: bytes, filename: str, model: str, params: Params) -> str:
        """Store the job (file and row, in a worker thread), then queue it: on the event loop's thread, since
        an asyncio.Queue is not thread-safe (a put from a worker thread may not wake a waiting worker)."""
        job_id = await self.ctx.run_blocking(
            self.store.create, audio, filename, model, replace(params, priority=Priority.BATCH, deadline=None)
        )
        assert self._queue is not None
        self._queue.put_nowait(job_id)
        return job_id

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            job_id = await self._queue.get()
            job = self.store.get(job_id)
            if job is None or job["status"] in ("done", "failed"):
                continue
            try:
                async with self.ctx.registry.lease(job["model"]) as runtime:
                    await self.ctx.run_blocking(self._run, runtime, job)
            except asyncio.CancelledError:
                raise
            except (AudioError, OptionsError) as e:
                # (the message names the stored file: name the upload instead)
                error = str(e).replace(job["audio"], job["filename"] or "the upload")
                self.store.set(job_id, status="failed", error=error)
            except APIError as e:
                self.store.set(job_id, status="failed", error=e.message)
            except _Stopped:
                continue  # resumes on the next start: its audio stays
            except Exception as e:  # noqa: BLE001 - a bug in one job must not stop the others
                log.exception("job %s failed", job_id)
                self.store.set(job_id, status="failed", error=f"internal error: {type(e).__name__}: {e}")
            # Done or failed, for good (the row says so first): its audio is no longer needed, so the jobs
            # folder does not grow with every job ever submitted.
            with suppress(OSError):
                Path(job["audio"]).unlink(missing_ok=True)

    def _run(self, runtime: ModelRuntime, job: dict[str, Any]) -> None:
        job_id = job["id"]
        params = params_from_dict(json.loads(job["params"]))
        options = params.options()
        samples = load_audio(Path(job["audio"]), max_duration=self.ctx.settings.max_job_audio_seconds)
        self.store.set(job_id, status="running", duration=len(samples) / 16000)
        if job["pieces_total"] is None:
            self.store.plan(job_id, self.ctx.transcriber.chunker.pieces(samples))
        language = job["language"] or params.language
        for piece in self.store.pieces(job_id):
            if piece["segments"] is not None:
                continue
            if self._stopping.is_set():
                raise _Stopped
            if language is not None:
                options = replace(options, decoding=options.decoding.with_changes(language=language))
            segments, info = self.ctx.transcriber.piece(
                runtime, samples[piece["start"] : piece["stop"]], options, params, piece["start"]
            )
            if language is None:
                language = info.language
                self.store.set(job_id, language=language)
            self.store.finish_piece(job_id, piece["idx"], segments)
        self.store.set(job_id, status="done", language=language or params.language or "en")

    def result(self, job: dict[str, Any]) -> Transcription:
        params = params_from_dict(json.loads(job["params"]))
        segments = []
        for piece in self.store.pieces(job["id"]):
            for d in json.loads(piece["segments"] or "[]"):
                segments.append(replace(segment_from_dict(d), id=len(segments)))
        info = TranscriptionInfo(
            language=job["language"] or "en",
            language_probability=1.0,
            duration=float(job["duration"] or 0.0),
            task=params.task,
        )
        return Transcription.from_segments(segments, info)

    def progress(self, job: dict[str, Any]) -> dict[str, Any]:
        pieces = self.store.pieces(job["id"])
        done = sum(p["segments"] is not None for p in pieces)
        total = job["pieces_total"]
        seconds = sum(p["stop"] - p["start"] for p in pieces if p["segments"] is not None) / 16000
        return {
            "pieces_done": done,
            "pieces_total": total,
            "fraction": 1.0 if job["status"] == "done" else (done / total if total else 0.0),
            "speech_seconds_done": round(seconds, 3),
        }


class _Stopped(Exception):
    """The server is shutting down; the job stays 'running' and resumes on the next start."""
