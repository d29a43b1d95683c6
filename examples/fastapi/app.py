"""FastAPI + jobwire: a token endpoint and a page where a user watches their jobs live.

Your app knows who the user is; jobwire does not. So your app mints a short-lived token
(HS256, signed with the gateway's --jwt-secret) whose `sub` is the user, and the page's
JobsClient fetches it from /api/jobwire-token before every connection. The gateway then lets
that user watch their own jobs: those your workers report with owner=<user>.

Run it (Debian: apt-get install python3-fastapi python3-uvicorn):

    JOBWIRE_JWT_SECRET=<the gateway's secret> JOBWIRE_URL=http://127.0.0.1:8080 \
        python3 -m uvicorn app:app --port 3000

The gateway needs the same secret: jobwire serve --jwt-secret "$JOBWIRE_JWT_SECRET" (or
JOBWIRE_JWT_SECRET in its environment). Standard library only besides FastAPI: the token is
three base64url parts and an HMAC, no JWT package needed.
"""
import base64
import hashlib
import hmac
import json
import os
import time

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse

SECRET = os.environ["JOBWIRE_JWT_SECRET"].encode()
GATEWAY = os.environ.get("JOBWIRE_URL", "http://127.0.0.1:8080").rstrip("/")
# Short: the client asks for a fresh one whenever it reconnects or the gateway says it expired.
TOKEN_TTL_SECONDS = 600


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def mint_token(user: str, ttl: int = TOKEN_TTL_SECONDS, **claims) -> str:
    """A jobwire token for `user`: HS256, `sub` = the user, `exp` required by the gateway.
    Extra claims: jobs=["report-*"] (other jobs the user may watch), role="admin"."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"sub": user, "iat": now, "exp": now + ttl, **claims}).encode())
    signed = header + b"." + payload
    return (signed + b"." + _b64(hmac.new(SECRET, signed, hashlib.sha256).digest())).decode()


def current_user(request: Request):
    """Stands in for your own login: here a cookie set by /login?user=NAME."""
    return request.cookies.get("user")


app = FastAPI()


@app.get("/login")
def login(user: str):
    response = RedirectResponse("/", status_code=303)
    response.set_cookie("user", user, httponly=True, samesite="lax")
    return response


@app.get("/api/jobwire-token", response_class=PlainTextResponse)
def jobwire_token(request: Request):
    user = current_user(request)
    if not user:
        raise HTTPException(status_code=401, detail="log in first")
    return mint_token(user)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>My jobs</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 640px; margin: 24px auto; padding: 0 16px; }
  .job { border: 1px solid #e4e7ee; border-radius: 10px; padding: 10px 14px; margin: 10px 0; }
  progress { width: 100%; }
  .muted { color: #6b7385; font-size: 13px; }
</style></head>
<body>
<h1>My jobs</h1>
<p class="muted" id="state">connecting</p>
<div id="jobs"><p class="muted" id="empty">No jobs yet.</p></div>
<script type="module">
  import { JobsClient } from '__GATEWAY__/client.js'

  const jobs = new JobsClient({
    url: '__GATEWAY_WS__/ws/jobs',
    getToken: async () => {
      const r = await fetch('/api/jobwire-token')
      if (!r.ok) throw new Error(`token endpoint answered ${r.status}`)
      return r.text()
    },
  })
  jobs.addEventListener('statechange', (e) => (document.getElementById('state').textContent = e.detail.newState))

  function card(id) {
    let el = document.querySelector(`[data-job-id="${id}"]`)
    if (el) return el
    document.getElementById('empty')?.remove()
    el = document.createElement('div')
    el.className = 'job'
    el.dataset.jobId = id
    el.innerHTML = '<strong></strong> <span class="muted status"></span><progress max="100" value="0"></progress><div class="muted message"></div>'
    el.querySelector('strong').textContent = id
    document.getElementById('jobs').prepend(el)
    return el
  }
  function show(id, data) {
    const el = card(id)
    if (!data) return
    el.dataset.status = data.status ?? ''
    el.querySelector('.status').textContent = data.status ?? ''
    el.querySelector('progress').value = data.progress ?? 0
    el.querySelector('.message').textContent = data.message ?? ''
  }
  const watched = new Set()
  function watch(id) {
    if (watched.has(id)) return
    watched.add(id)
    card(id)
    jobs.subscribe(id, { onStatus: (d) => show(id, d), onUpdate: (d) => show(id, d) })
  }
  // My jobs: the list now, and each new one as a worker reports it with owner=<me>.
  jobs.watchUserJobs({ onJobs: (ids) => [...ids].reverse().forEach(watch), onJob: watch })
</script>
</body></html>
"""


@app.get("/", response_class=HTMLResponse)
def page(request: Request):
    if not current_user(request):
        return HTMLResponse('<p>Log in first: <a href="/login?user=alice">/login?user=alice</a></p>')
    ws = GATEWAY.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return PAGE.replace("__GATEWAY_WS__", ws).replace("__GATEWAY__", GATEWAY)
