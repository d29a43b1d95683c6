"""Queues one transcode task and prints the demo page that watches it."""
import os
import sys

from tasks import transcode

gateway = os.environ.get("JOBWIRE_URL", "http://127.0.0.1:8080")
fail_at = int(sys.argv[1]) if len(sys.argv) > 1 else None
result = transcode.delay(parts=10, seconds_per_part=0.5, fail_at=fail_at)
print(f"queued celery:{result.id}")
print(f"watch it: {gateway}/?watch=celery:{result.id}")
