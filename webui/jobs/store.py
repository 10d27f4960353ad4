"""Jobs kept across restarts: one SQLite file in DATA_DIR (stdlib sqlite3).

A job is written when it is queued (its validated request, owner, kind, checkpoint), when it
starts, after each batch (the images' files) and when it ends. Images a job saved to outputs/
are kept by path; those of a job that does not save go to DATA_DIR/jobs/<id>/, removed with the
job when its retention time is over.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from webui.jobs.codec import request_from_json, request_to_json
from webui.jobs.job import Job, JobState
from webui.model_manager.detect import Arch
from webui.outputs.files import write_atomically

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    arch TEXT,
    vae TEXT,
    save INTEGER NOT NULL,
    request TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    state TEXT NOT NULL,
    error TEXT,
    error_field TEXT,
    user_error INTEGER NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS images (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    file TEXT NOT NULL,
    saved INTEGER NOT NULL,
    infotext TEXT NOT NULL,
    seed INTEGER NOT NULL,
    PRIMARY KEY (job_id, position)
);
"""


@dataclass(frozen=True)
class StoredImage:
    file: Path
    saved: bool  # in outputs/ (listed in the result's paths), not a copy in the job's own folder
    infotext: str
    seed: int


@dataclass
class StoredJob:
    job: Job  # rebuilt as it was queued (state QUEUED); the fields below say how it went since
    state: JobState
    started: float | None
    finished: float | None
    error: str | None
    error_field: str | None
    user_error: bool
    warnings: list[str]
    images: list[StoredImage]


class FileImages(Sequence[Image.Image]):
    """A restored job's images, read from their files when someone looks (not all at start)."""

    def __init__(self, files: list[Path]) -> None:
        self._files = files

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        with Image.open(self._files[index]) as image:
            image.load()
            return image

    def __iter__(self) -> Iterator[Image.Image]:
        return (self[i] for i in range(len(self)))


class JobStore:
    def __init__(self, path: Path, spool: Path) -> None:
        self.path, self.spool = path, spool
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._kept: set[str] = set()  # ids of the jobs written here (a request JSON cannot hold is not)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL survives the process dying at any point (a power cut may lose the last
        # writes); FULL would fsync every write, 6.6 ms a queued job measured here.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> JobStore:
        return cls(data_dir / "jobs.sqlite3", data_dir / "jobs")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ---------------------------------------------------------------------------------
    def add(self, job: Job) -> bool:
        """Keep a newly queued job; False (logged) for a request that cannot be written down."""
        try:
            request = request_to_json(job.request)
        except (TypeError, ValueError) as error:
            log.warning("job %s will not survive a restart: %s", job.id, error)
            return False
        with self._lock:
            self._kept.add(job.id)
        return self._write(
            job,
            "INSERT OR REPLACE INTO jobs (id, kind, owner, checkpoint, arch, vae, save, request, created, "
            "state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                job.kind.value,
                job.owner,
                job.checkpoint,
                job.arch.value if job.arch else None,
                job.vae,
                int(job.save),
                request,
                job.created,
                JobState.QUEUED.value,
            ),
        )

    def started(self, job: Job) -> None:
        self._write(
            job,
            "UPDATE jobs SET state = ?, started = ? WHERE id = ?",
            (JobState.RUNNING.value, job.started, job.id),
        )

    def add_images(
        self,
        job: Job,
        images: Sequence[Image.Image],
        paths: Sequence[Path],
        infotexts: Sequence[str],
        seeds: Sequence[int],
    ) -> None:
        """Record one batch's images: by their outputs/ path, or (not saved) as a PNG of our own."""
        try:
            self._add_images(job, images, paths, infotexts, seeds)
        except (OSError, sqlite3.Error) as error:  # the job itself goes on; only its record suffers
            log.warning("could not keep the images of job %s for a restart: %s", job.id, error)

    def _add_images(
        self,
        job: Job,
        images: Sequence[Image.Image],
        paths: Sequence[Path],
        infotexts: Sequence[str],
        seeds: Sequence[int],
    ) -> None:
        with self._lock:
            if job.id not in self._kept:
                return
            first = self._db.execute("SELECT COUNT(*) FROM images WHERE job_id = ?", (job.id,)).fetchone()[0]
        rows = []
        for offset, (image, infotext, seed) in enumerate(zip(images, infotexts, seeds)):
            position = first + offset
            if offset < len(paths):
                file, saved = paths[offset], True
            else:
                file, saved = self.spool / job.id / f"{position:05d}.png", False
                file.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(file, lambda stream, image=image: image.save(stream, format="PNG"))
            rows.append((job.id, position, str(file), int(saved), infotext, seed))
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO images (job_id, position, file, saved, infotext, seed) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def clear_images(self, job: Job) -> None:
        """Forget a job's images (it runs again from the start); saved files stay in outputs/."""
        self._write(job, "DELETE FROM images WHERE job_id = ?", (job.id,))
        shutil.rmtree(self.spool / job.id, ignore_errors=True)

    def finished(self, job: Job, warnings: Sequence[str] = ()) -> None:
        self._write(
            job,
            "UPDATE jobs SET state = ?, started = ?, finished = ?, error = ?, error_field = ?, "
            "user_error = ?, warnings = ? WHERE id = ?",
            (
                job.state.value,
                job.started,
                job.finished,
                job.error,
                job.error_field,
                int(job.user_error),
                json.dumps(list(warnings)),
                job.id,
            ),
        )

    def forget(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            kept = [job_id for job_id in job_ids if job_id in self._kept]
            self._kept.difference_update(kept)
            try:
                self._db.executemany("DELETE FROM jobs WHERE id = ?", [(job_id,) for job_id in kept])
            except sqlite3.Error as error:
                log.warning("could not forget %d finished job(s): %s", len(kept), error)
        for job_id in kept:
            shutil.rmtree(self.spool / job_id, ignore_errors=True)

    def _write(self, job: Job, sql: str, values: tuple[object, ...]) -> bool:
        """Run one statement about a kept job; False (logged) if it is not kept or the write
        fails: a full disk or a locked file must not stop the job or the queue."""
        with self._lock:
            if job.id not in self._kept:
                return False
            try:
                self._db.execute(sql, values)
            except sqlite3.Error as error:
                log.warning("could not write down job %s for a restart: %s", job.id, error)
                return False
        return True

    # -- reading ---------------------------------------------------------------------------------
    def load(self) -> list[StoredJob]:
        """Every kept job, oldest first; a job whose request no longer reads is dropped (logged)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, owner, checkpoint, arch, vae, save, request, created, started, finished, "
                "state, error, error_field, user_error, warnings FROM jobs ORDER BY created"
            ).fetchall()
            image_rows = self._db.execute(
                "SELECT job_id, file, saved, infotext, seed FROM images ORDER BY job_id, position"
            ).fetchall()
        images: dict[str, list[StoredImage]] = {}
        for job_id, file, saved, infotext, seed in image_rows:
            images.setdefault(job_id, []).append(StoredImage(Path(file), bool(saved), infotext, seed))
        stored: list[StoredJob] = []
        unreadable: list[str] = []
        for row in rows:
            try:
                job = _job_of(row)
            except Exception as error:  # a job written by another version must not stop the server
                log.warning("dropping kept job %s: %s", row[0], error)
                unreadable.append(row[0])
                continue
            started, finished, state, error, error_field, user_error, warnings = row[9:]
            stored.append(
                StoredJob(
                    job,
                    JobState(state),
                    started,
                    finished,
                    error,
                    error_field,
                    bool(user_error),
                    json.loads(warnings),
                    images.get(job.id, []),
                )
            )
        with self._lock:
            self._kept.update(row[0] for row in rows)
        if unreadable:
            self.forget(unreadable)
        return stored


def _job_of(row: tuple) -> Job:
    job_id, kind, owner, checkpoint, arch, vae, save, request, created = row[:9]
    return Job(
        request_from_json(kind, request),
        owner,
        checkpoint,
        arch=Arch(arch) if arch else None,
        vae=vae,
        save=bool(save),
        id=job_id,
        created=created,
    )
