"""A Celery app that reports progress the way Celery apps already do, with update_state.

jobwire streams every state of its tasks to browsers as `celery:<task_id>`, reading Celery's
Redis result backend: nothing in this file knows about jobwire.
"""
import os
import time

from celery import Celery

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("tasks", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_track_started=True,  # a STARTED state when a worker picks the task up
    result_extended=True,     # stores the task's name and kwargs (jobwire --celery-owner-field)
)


@app.task(bind=True)
def transcode(self, parts=10, seconds_per_part=0.5, fail_at=None, user_id=None):
    for part in range(1, parts + 1):
        time.sleep(seconds_per_part)
        if part == fail_at:
            raise ValueError(f"could not transcode part {part}")
        self.update_state(state="PROGRESS", meta={"current": part, "total": parts,
                                                  "message": f"part {part} of {parts}"})
    return {"url": f"/videos/{self.request.id}.mp4", "parts": parts}
