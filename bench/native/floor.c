/* jobwire bench floor: the least a Redis -> WebSocket fan-out server can do, to measure
 * jobwire and the baseline against. One thread, one epoll loop, no features: no auth, no
 * snapshots (job_status carries data null), no payload validation, no limits beyond the fixed
 * bounds below, no reconnection to Redis (it exits when Redis goes away).
 *
 *   floor LISTEN_PORT REDIS_HOST REDIS_PORT [LISTEN_HOST]     (LISTEN_HOST defaults to 127.0.0.1)
 *
 * HTTP: `GET /healthz` answers 200 and closes (the bench waits on it); `GET /ws/jobs` with
 * `Upgrade: websocket` answers 101 (Sec-WebSocket-Accept: SHA-1 + base64, both below; the
 * `jobwire.json` subprotocol echoed when offered). Client frames must be masked and
 * unfragmented, at most IN_MAX bytes; text/binary messages may be {"type":"subscribe_job",
 * "job_id":"J"} (anything else gets an error frame), ping gets pong, close gets close.
 *
 * Redis: raw RESP on one connection in subscribe mode. The first subscriber of a job sends
 * SUBSCRIBE progress:J, as jobwire (default per-job mode) and the baseline do; the job's
 * subscribers get their job_status once Redis has confirmed it, so no update published after
 * the answer can be missed. A job stays subscribed until exit (bounded by MAX_JOBS).
 *
 * Fan-out: each `message` becomes ONE frame {"type":"job_update","job_id":"J","data":<payload
 * bytes as published>}, built once, then one write() of it per subscribed socket. Sockets are
 * non-blocking; when a write would block or is short, the rest is BUFFERED per socket (frames
 * stay whole and in order) and flushed on EPOLLOUT; a socket whose buffer would pass OUT_MAX is
 * closed. Nothing is dropped silently. SIGTERM or SIGINT closes every socket and exits 0. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define HS_MAX 4096               /* largest HTTP request head */
#define IN_MAX (4096 + 14)        /* largest client frame, header included */
#define OUT_MAX (1u << 20)        /* pending output per socket before it is closed */
#define SUBS_PER_CONN 8           /* jobs one socket may watch */
#define MAX_JOBS (1 << 16)        /* jobs ever subscribed in one run */
#define JOB_SLOTS (MAX_JOBS * 2)  /* open-addressing hash table of job indices */
#define JOB_ID_MAX 128
#define REDIS_BUF_MAX (8u << 20)  /* largest RESP reply held while incomplete */
#define CHANNEL_PREFIX "progress:"
#define WS_PATH "/ws/jobs"

/* ---- SHA-1 (FIPS 180-1) and base64, just enough for Sec-WebSocket-Accept ---------------- */

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(uint32_t h[5], const uint8_t *p) {
  uint32_t w[80];
  for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
  for (int i = 0; i < 80; i++) {
    uint32_t f, k;
    if (i < 20) { f = (b & c) | (~b & d); k = 0x5a827999; }
    else if (i < 40) { f = b ^ c ^ d; k = 0x6ed9eba1; }
    else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8f1bbcdc; }
    else { f = b ^ c ^ d; k = 0xca62c1d6; }
    uint32_t t = rol(a, 5) + f + e + k + w[i];
    e = d; d = c; c = rol(b, 30); b = a; a = t;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
  uint32_t h[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
  size_t i = 0;
  for (; i + 64 <= len; i += 64) sha1_block(h, msg + i);
  uint8_t tail[128] = {0};
  size_t rest = len - i;
  memcpy(tail, msg + i, rest);
  tail[rest] = 0x80;
  size_t tail_len = rest + 1 + 8 <= 64 ? 64 : 128;
  uint64_t bits = (uint64_t)len * 8;
  for (int k = 0; k < 8; k++) tail[tail_len - 1 - k] = (uint8_t)(bits >> (8 * k));
  for (size_t k = 0; k < tail_len; k += 64) sha1_block(h, tail + k);
  for (int k = 0; k < 5; k++) { out[4 * k] = (uint8_t)(h[k] >> 24); out[4 * k + 1] = (uint8_t)(h[k] >> 16); out[4 * k + 2] = (uint8_t)(h[k] >> 8); out[4 * k + 3] = (uint8_t)h[k]; }
}

static size_t base64(const uint8_t *in, size_t len, char *out) {
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
    out[o++] = abc[v >> 18 & 63];
    out[o++] = abc[v >> 12 & 63];
    out[o++] = i + 1 < len ? abc[v >> 6 & 63] : '=';
    out[o++] = i + 2 < len ? abc[v & 63] : '=';
  }
  out[o] = 0;
  return o;
}

/* ---- state ----------------------------------------------------------------------------------- */

enum { HANDSHAKE, OPEN };

typedef struct conn {
  int fd;
  uint8_t state, dead, out_armed, nsubs;
  uint16_t hs_len, in_len;
  char *hs;             /* the HTTP request head so far (handshake only) */
  uint8_t *in;          /* a partial client frame left over from the last read */
  uint8_t *out;         /* bytes a write could not take yet */
  size_t out_off, out_len;
  int32_t subs[SUBS_PER_CONN];
} conn_t;

typedef struct {
  char id[JOB_ID_MAX + 1];
  uint8_t id_len, live;
  conn_t **subs;
  uint32_t n, cap;
} job_t;

static int ep, lfd, rfd;
static int listening = 1;
static conn_t **by_fd;
static int fd_cap, nconns, max_conns;
static conn_t **dead;
static int ndead;
static job_t *jobs;
static int njobs;
static int32_t *slots;
static volatile sig_atomic_t stop_flag;

static uint8_t rbuf[IN_MAX + (1 << 16)];
static char *redis_in;
static size_t redis_in_len, redis_in_cap;
static char *redis_out;
static size_t redis_out_len, redis_out_cap, redis_out_off;
static int redis_out_armed;
static uint8_t *frame;
static size_t frame_cap;

static void die(const char *what) {
  fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

/* A failure with no errno behind it (Redis said something unexpected). */
static void fail(const char *what) {
  fprintf(stderr, "floor: %s\n", what);
  exit(1);
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (!q) die("out of memory");
  return q;
}

/* ---- sockets ----------------------------------------------------------------------------------- */

static void kill_conn(conn_t *c) {
  if (c->dead) return;
  c->dead = 1;
  dead[ndead++] = c;
}

static void arm(int fd, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

/* One write(); what it does not take is buffered (see the header). */
static void send_bytes(conn_t *c, const void *buf, size_t len) {
  if (c->dead) return;
  size_t done = 0;
  if (c->out_len == 0) {
    ssize_t w = write(c->fd, buf, len);
    if (w == (ssize_t)len) return;
    if (w < 0 && errno != EAGAIN && errno != EINTR) { kill_conn(c); return; }
    done = w > 0 ? (size_t)w : 0;
  }
  size_t rest = len - done;
  if (c->out_len + rest > OUT_MAX) { kill_conn(c); return; }
  if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
  c->out = xrealloc(c->out, c->out_len + rest);
  memcpy(c->out + c->out_len, (const uint8_t *)buf + done, rest);
  c->out_len += rest;
  if (!c->out_armed) { c->out_armed = 1; arm(c->fd, EPOLLIN | EPOLLOUT); }
}

static void flush_conn(conn_t *c) {
  while (c->out_off < c->out_len) {
    ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
    if (w < 0) { if (errno != EAGAIN && errno != EINTR) kill_conn(c); return; }
    c->out_off += (size_t)w;
  }
  free(c->out); c->out = NULL; c->out_off = c->out_len = 0;
  c->out_armed = 0;
  arm(c->fd, EPOLLIN);
}

/* A server frame (never masked). */
static size_t frame_head(uint8_t *h, uint8_t opcode, size_t len) {
  h[0] = 0x80 | opcode;
  if (len < 126) { h[1] = (uint8_t)len; return 2; }
  if (len < 65536) { h[1] = 126; h[2] = (uint8_t)(len >> 8); h[3] = (uint8_t)len; return 4; }
  h[1] = 127;
  for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
  return 10;
}

static void send_frame(conn_t *c, uint8_t opcode, const void *payload, size_t len) {
  uint8_t buf[16 + 512];
  if (len > 512) return;
  size_t h = frame_head(buf, opcode, len);
  memcpy(buf + h, payload, len);
  send_bytes(c, buf, h + len);
}

static void send_text(conn_t *c, const char *text) { send_frame(c, 1, text, strlen(text)); }

static void send_status(conn_t *c, const job_t *j) {
  char msg[64 + JOB_ID_MAX];
  int n = snprintf(msg, sizeof msg, "{\"type\":\"job_status\",\"job_id\":\"%s\",\"data\":null}", j->id);
  send_frame(c, 1, msg, (size_t)n);
}

/* ---- jobs -------------------------------------------------------------------------------------- */

static uint32_t hash(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) { h ^= (uint8_t)s[i]; h *= 16777619u; }
  return h;
}

/* The job's index, or -1; with create, a new job (and its SUBSCRIBE) when missing, -2 when full. */
static int job_find(const char *id, size_t n, int create) {
  uint32_t i = hash(id, n) & (JOB_SLOTS - 1);
  for (;; i = (i + 1) & (JOB_SLOTS - 1)) {
    int32_t k = slots[i];
    if (k < 0) break;
    if (jobs[k].id_len == n && memcmp(jobs[k].id, id, n) == 0) return k;
  }
  if (!create) return -1;
  if (njobs == MAX_JOBS) return -2;
  job_t *j = &jobs[njobs];
  memcpy(j->id, id, n); j->id[n] = 0; j->id_len = (uint8_t)n;
  slots[i] = njobs;
  char cmd[64 + JOB_ID_MAX];
  int len = snprintf(cmd, sizeof cmd, "*2\r\n$9\r\nSUBSCRIBE\r\n$%zu\r\n" CHANNEL_PREFIX "%s\r\n", strlen(CHANNEL_PREFIX) + n, j->id);
  if (redis_out_len + (size_t)len > redis_out_cap) { redis_out_cap = (redis_out_len + (size_t)len) * 2; redis_out = xrealloc(redis_out, redis_out_cap); }
  memcpy(redis_out + redis_out_len, cmd, (size_t)len); redis_out_len += (size_t)len;
  return njobs++;
}

static int valid_job_id(const char *s, size_t n) {
  if (n == 0 || n > JOB_ID_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == ':' || ch == '-')) return 0;
  }
  return 1;
}

static void subscribe(conn_t *c, const char *id, size_t n) {
  int k = job_find(id, n, 1);
  if (k < 0) { send_text(c, "{\"type\":\"error\",\"code\":\"too_many_jobs\",\"message\":\"the floor's job table is full\"}"); return; }
  job_t *j = &jobs[k];
  for (int i = 0; i < c->nsubs; i++)
    if (c->subs[i] == k) { if (j->live) send_status(c, j); return; }
  if (c->nsubs == SUBS_PER_CONN) { send_text(c, "{\"type\":\"error\",\"code\":\"too_many_subscriptions\",\"message\":\"at most 8 jobs per socket\"}"); return; }
  if (j->n == j->cap) { j->cap = j->cap ? j->cap * 2 : 4; j->subs = xrealloc(j->subs, j->cap * sizeof *j->subs); }
  j->subs[j->n++] = c;
  c->subs[c->nsubs++] = k;
  if (j->live) send_status(c, j); /* otherwise when Redis confirms the SUBSCRIBE */
}

static void unsubscribe_all(conn_t *c) {
  for (int s = 0; s < c->nsubs; s++) {
    job_t *j = &jobs[c->subs[s]];
    for (uint32_t i = 0; i < j->n; i++)
      if (j->subs[i] == c) { j->subs[i] = j->subs[--j->n]; break; }
  }
  c->nsubs = 0;
}

/* ---- client messages --------------------------------------------------------------------------- */

/* The string value of "key" in a flat JSON object, found by search: enough for the bench's
 * fixed messages, not a JSON parser (a key inside a string value would fool it). */
static int json_string(const char *p, size_t n, const char *key, const char **v, size_t *vl) {
  size_t kl = strlen(key);
  const char *at = memmem(p, n, key, kl);
  if (!at) return 0;
  const char *e = p + n, *q = at + kl;
  while (q < e && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
  if (q == e || *q++ != ':') return 0;
  while (q < e && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
  if (q == e || *q++ != '"') return 0;
  const char *end = q;
  while (end < e && *end != '"' && *end != '\\') end++;
  if (end == e || *end != '"') return 0;
  *v = q; *vl = (size_t)(end - q);
  return 1;
}

static void on_message(conn_t *c, const char *p, size_t n) {
  const char *type, *id;
  size_t tl, il;
  if (!json_string(p, n, "\"type\"", &type, &tl) || tl != 13 || memcmp(type, "subscribe_job", 13) != 0) {
    send_text(c, "{\"type\":\"error\",\"code\":\"unsupported\",\"message\":\"the floor only handles subscribe_job\"}");
    return;
  }
  if (!json_string(p, n, "\"job_id\"", &id, &il) || !valid_job_id(id, il)) {
    send_text(c, "{\"type\":\"error\",\"code\":\"bad_job_id\",\"message\":\"bad job id\"}");
    return;
  }
  subscribe(c, id, il);
}

/* Handles every whole frame in p[0..n); returns the bytes used, or -1 to close the socket. */
static ssize_t on_frames(conn_t *c, uint8_t *p, size_t n) {
  size_t at = 0;
  while (n - at >= 2) {
    uint8_t *f = p + at;
    uint8_t fin = f[0] & 0x80, opcode = f[0] & 0x0f, masked = f[1] & 0x80, l7 = f[1] & 0x7f;
    if (!masked || !fin || (f[0] & 0x70)) return -1; /* clients mask; no fragments, no extensions */
    size_t head = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
    if (n - at < head) break;
    uint64_t len = l7;
    if (l7 == 126) len = (uint64_t)f[2] << 8 | f[3];
    else if (l7 == 127) { len = 0; for (int i = 0; i < 8; i++) len = len << 8 | f[2 + i]; }
    if (len > IN_MAX || len + head + 4 > IN_MAX) return -1;
    if (n - at < head + 4 + len) break;
    uint8_t *mask = f + head, *data = f + head + 4;
    for (uint64_t i = 0; i < len; i++) data[i] ^= mask[i & 3];
    at += head + 4 + (size_t)len;
    switch (opcode) {
      case 1: case 2: on_message(c, (const char *)data, (size_t)len); break;
      case 8: send_frame(c, 8, data, len >= 2 ? 2 : 0); return -1;
      case 9: if (len <= 125) send_frame(c, 10, data, (size_t)len); break;
      case 10: break;
      default: return -1;
    }
    if (c->dead) return -1;
  }
  return (ssize_t)at;
}

/* ---- HTTP -------------------------------------------------------------------------------------- */

static int has_token(const char *v, size_t vl, const char *token) {
  size_t tl = strlen(token), i = 0;
  while (i < vl) {
    while (i < vl && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
    size_t s = i;
    while (i < vl && v[i] != ',') i++;
    size_t e = i;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    if (e - s == tl && strncasecmp(v + s, token, tl) == 0) return 1;
  }
  return 0;
}

static void refuse(conn_t *c, const char *status) {
  char resp[160];
  int n = snprintf(resp, sizeof resp, "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status);
  send_bytes(c, resp, (size_t)n);
  kill_conn(c);
}

/* The request head is whole (ends at head_end); answers it. */
static void on_request(conn_t *c, char *head, size_t head_len) {
  char *eol = memmem(head, head_len, "\r\n", 2);
  char *sp1 = memchr(head, ' ', (size_t)(eol - head));
  char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
  if (!sp1 || !sp2 || sp1 - head != 3 || memcmp(head, "GET", 3) != 0) { refuse(c, "405 Method Not Allowed"); return; }
  char *path = sp1 + 1;
  size_t path_len = (size_t)(sp2 - path);
  char *q = memchr(path, '?', path_len);
  if (q) path_len = (size_t)(q - path);
  if (path_len == 8 && memcmp(path, "/healthz", 8) == 0) {
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"status\":\"ok\"}";
    send_bytes(c, ok, sizeof ok - 1);
    kill_conn(c);
    return;
  }
  if (path_len != strlen(WS_PATH) || memcmp(path, WS_PATH, path_len) != 0) { refuse(c, "404 Not Found"); return; }
  const char *key = NULL; size_t key_len = 0;
  int upgrade = 0, version = 0, proto = 0;
  char *line = eol + 2, *end = head + head_len;
  while (line < end) {
    char *le = memmem(line, (size_t)(end - line), "\r\n", 2);
    if (!le) le = end;
    char *colon = memchr(line, ':', (size_t)(le - line));
    if (colon) {
      size_t nl = (size_t)(colon - line);
      char *v = colon + 1;
      while (v < le && (*v == ' ' || *v == '\t')) v++;
      char *ve = le;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      size_t vl = (size_t)(ve - v);
      if (nl == 7 && strncasecmp(line, "upgrade", 7) == 0) upgrade = has_token(v, vl, "websocket");
      else if (nl == 17 && strncasecmp(line, "sec-websocket-key", 17) == 0) { key = v; key_len = vl; }
      else if (nl == 21 && strncasecmp(line, "sec-websocket-version", 21) == 0) version = vl == 2 && memcmp(v, "13", 2) == 0;
      else if (nl == 22 && strncasecmp(line, "sec-websocket-protocol", 22) == 0) proto = has_token(v, vl, "jobwire.json");
    }
    line = le + 2;
  }
  if (!upgrade || !version || !key || key_len == 0 || key_len > 64) { refuse(c, "400 Bad Request"); return; }
  uint8_t material[64 + 36], digest[20];
  memcpy(material, key, key_len);
  memcpy(material + key_len, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
  sha1(material, key_len + 36, digest);
  char accept_key[32];
  base64(digest, 20, accept_key);
  char resp[256];
  int n = snprintf(resp, sizeof resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: %s\r\n%s\r\n", accept_key, proto ? "Sec-WebSocket-Protocol: jobwire.json\r\n" : "");
  send_bytes(c, resp, (size_t)n);
  c->state = OPEN;
}

/* ---- events ------------------------------------------------------------------------------------ */

static void on_readable(conn_t *c) {
  size_t have = 0;
  if (c->state == OPEN && c->in_len) { memcpy(rbuf, c->in, c->in_len); have = c->in_len; free(c->in); c->in = NULL; c->in_len = 0; }
  ssize_t r = read(c->fd, rbuf + have, sizeof rbuf - have);
  if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) { kill_conn(c); return; }
  if (r < 0) r = 0;
  size_t n = have + (size_t)r;
  uint8_t *p = rbuf;
  if (c->state == HANDSHAKE) {
    if (c->hs_len + n > HS_MAX) { refuse(c, "431 Request Header Fields Too Large"); return; }
    if (!c->hs) c->hs = xrealloc(NULL, HS_MAX);
    memcpy(c->hs + c->hs_len, p, n); c->hs_len += (uint16_t)n;
    char *end = memmem(c->hs, c->hs_len, "\r\n\r\n", 4);
    if (!end) return;
    size_t head_len = (size_t)(end - c->hs) + 2, used = head_len + 2;
    on_request(c, c->hs, head_len);
    /* Bytes after the head (a frame sent before our 101 arrived) are frames. */
    size_t rest = c->hs_len - used;
    memmove(rbuf, c->hs + used, rest);
    free(c->hs); c->hs = NULL; c->hs_len = 0;
    if (c->dead || c->state != OPEN || rest == 0) return;
    n = rest;
  }
  ssize_t used = on_frames(c, p, n);
  if (used < 0) { kill_conn(c); return; }
  size_t left = n - (size_t)used;
  if (left) { c->in = xrealloc(NULL, left); memcpy(c->in, p + used, left); c->in_len = (uint16_t)left; }
}

static void accept_all(void) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) { epoll_ctl(ep, EPOLL_CTL_DEL, lfd, NULL); listening = 0; } /* until a socket closes */
      return;
    }
    if (nconns >= max_conns || fd >= fd_cap) { close(fd); continue; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn_t *c = calloc(1, sizeof *c);
    if (!c) die("out of memory");
    c->fd = fd;
    by_fd[fd] = c;
    nconns++;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
}

/* Closes the sockets killed during this round of events. */
static void reap(void) {
  for (int i = 0; i < ndead; i++) {
    conn_t *c = dead[i];
    unsubscribe_all(c);
    close(c->fd); /* also leaves the epoll set */
    by_fd[c->fd] = NULL;
    free(c->hs); free(c->in); free(c->out); free(c);
    nconns--;
  }
  if (ndead && !listening) {
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    listening = 1;
  }
  ndead = 0;
}

/* ---- Redis ------------------------------------------------------------------------------------- */

static void redis_flush(void) {
  while (redis_out_off < redis_out_len) {
    ssize_t w = write(rfd, redis_out + redis_out_off, redis_out_len - redis_out_off);
    if (w < 0) {
      if (errno != EAGAIN && errno != EINTR) die("write to redis");
      if (!redis_out_armed) { redis_out_armed = 1; arm(rfd, EPOLLIN | EPOLLOUT); }
      return;
    }
    redis_out_off += (size_t)w;
  }
  redis_out_off = redis_out_len = 0;
  if (redis_out_armed) { redis_out_armed = 0; arm(rfd, EPOLLIN); }
}

/* A decimal after a RESP type byte, up to CRLF; returns the position after CRLF, or NULL. */
static const char *resp_number(const char *p, const char *e, long long *out) {
  int neg = 0;
  long long v = 0;
  if (p < e && *p == '-') { neg = 1; p++; }
  const char *digits = p;
  while (p < e && *p >= '0' && *p <= '9') { if (v > (1LL << 40)) fail("RESP number too large"); v = v * 10 + (*p - '0'); p++; }
  if (e - p < 2) return NULL;
  if (p == digits || p[0] != '\r' || p[1] != '\n') fail("bad RESP from redis");
  *out = neg ? -v : v;
  return p + 2;
}

typedef struct { const char *p; size_t n; } elem_t;

/* One whole reply (an array of bulk strings and integers, as subscribe mode sends) from
 * p[0..n); returns its length, or 0 when incomplete. */
static size_t resp_reply(const char *p, size_t n, elem_t *el, int *nel) {
  const char *e = p + n, *q = p + 1;
  long long count;
  if (n < 1) return 0;
  if (p[0] == '-') {
    const char *nl = memchr(p, '\n', n);
    if (!nl) return 0;
    fprintf(stderr, "floor: redis: %.*s\n", (int)(nl - p), p);
    exit(1);
  }
  if (p[0] != '*') fail("unexpected RESP reply");
  if (!(q = resp_number(q, e, &count))) return 0;
  if (count < 0 || count > 4) fail("unexpected RESP array");
  for (int i = 0; i < count; i++) {
    if (q >= e) return 0;
    long long len;
    char type = *q++;
    const char *start = q;
    if (!(q = resp_number(q, e, &len))) return 0;
    if (type == ':') { el[i].p = start; el[i].n = (size_t)(q - 2 - start); continue; }
    if (type != '$' || len < 0) fail("unexpected RESP element");
    if ((size_t)(e - q) < (size_t)len + 2) return 0;
    el[i].p = q; el[i].n = (size_t)len;
    q += len + 2;
  }
  *nel = (int)count;
  return (size_t)(q - p);
}

static void fan_out(const char *chan, size_t chan_len, const char *payload, size_t payload_len) {
  size_t pre = strlen(CHANNEL_PREFIX);
  if (chan_len <= pre || memcmp(chan, CHANNEL_PREFIX, pre) != 0) return;
  int k = job_find(chan + pre, chan_len - pre, 0);
  if (k < 0 || jobs[k].n == 0) return;
  job_t *j = &jobs[k];
  /* The frame, built once. */
  static const char head[] = "{\"type\":\"job_update\",\"job_id\":\"", mid[] = "\",\"data\":";
  size_t body = sizeof head - 1 + j->id_len + sizeof mid - 1 + payload_len + 1;
  if (frame_cap < body + 10) { frame_cap = body + 10; frame = xrealloc(frame, frame_cap); }
  size_t h = frame_head(frame, 1, body), o = h;
  memcpy(frame + o, head, sizeof head - 1); o += sizeof head - 1;
  memcpy(frame + o, j->id, j->id_len); o += j->id_len;
  memcpy(frame + o, mid, sizeof mid - 1); o += sizeof mid - 1;
  memcpy(frame + o, payload, payload_len); o += payload_len;
  frame[o++] = '}';
  /* One write() per subscriber; killed sockets leave the list only in reap(). */
  for (uint32_t i = 0; i < j->n; i++) send_bytes(j->subs[i], frame, o);
}

static void redis_readable(void) {
  if (redis_in_cap - redis_in_len < (1 << 16)) {
    if (redis_in_cap >= REDIS_BUF_MAX) fail("redis reply larger than the buffer");
    redis_in_cap *= 2;
    redis_in = xrealloc(redis_in, redis_in_cap);
  }
  ssize_t r = read(rfd, redis_in + redis_in_len, redis_in_cap - redis_in_len);
  if (r == 0) fail("redis closed the connection");
  if (r < 0) { if (errno == EAGAIN || errno == EINTR) return; die("read from redis"); }
  redis_in_len += (size_t)r;
  size_t at = 0;
  for (;;) {
    elem_t el[4];
    int nel = 0;
    size_t used = resp_reply(redis_in + at, redis_in_len - at, el, &nel);
    if (used == 0) break;
    at += used;
    if (nel == 3 && el[0].n == 7 && memcmp(el[0].p, "message", 7) == 0) {
      fan_out(el[1].p, el[1].n, el[2].p, el[2].n);
    } else if (nel == 3 && el[0].n == 9 && memcmp(el[0].p, "subscribe", 9) == 0) {
      size_t pre = strlen(CHANNEL_PREFIX);
      if (el[1].n <= pre) continue;
      int k = job_find(el[1].p + pre, el[1].n - pre, 0);
      if (k < 0 || jobs[k].live) continue;
      jobs[k].live = 1;
      for (uint32_t i = 0; i < jobs[k].n; i++) send_status(jobs[k].subs[i], &jobs[k]);
    }
  }
  memmove(redis_in, redis_in + at, redis_in_len - at);
  redis_in_len -= at;
}

/* ---- main -------------------------------------------------------------------------------------- */

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static int tcp_address(struct sockaddr_in *a, const char *host, const char *port) {
  char *end;
  long p = strtol(port, &end, 10);
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)p);
  return *end == 0 && p > 0 && p < 65536 && inet_pton(AF_INET, host, &a->sin_addr) == 1;
}

int main(int argc, char **argv) {
  struct sockaddr_in listen_addr, redis_addr;
  if (argc < 4 || argc > 5 || !tcp_address(&listen_addr, argc == 5 ? argv[4] : "127.0.0.1", argv[1]) || !tcp_address(&redis_addr, argv[2], argv[3])) {
    fprintf(stderr, "usage: floor LISTEN_PORT REDIS_HOST REDIS_PORT [LISTEN_HOST]   (IPv4 addresses)\n");
    return 2;
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) die("getrlimit");
  fd_cap = rl.rlim_cur > (1 << 20) ? 1 << 20 : (int)rl.rlim_cur;
  max_conns = fd_cap - 16; /* stdio, epoll, the listener, Redis, a margin */
  by_fd = calloc((size_t)fd_cap, sizeof *by_fd);
  dead = calloc((size_t)fd_cap, sizeof *dead);
  jobs = calloc(MAX_JOBS, sizeof *jobs);
  slots = malloc(JOB_SLOTS * sizeof *slots);
  redis_in_cap = 1 << 20;
  redis_in = malloc(redis_in_cap);
  if (!by_fd || !dead || !jobs || !slots || !redis_in) die("out of memory");
  memset(slots, 0xff, JOB_SLOTS * sizeof *slots);

  /* SIGTERM and SIGINT are blocked except inside epoll_pwait, so they end the loop cleanly. */
  struct sigaction sa = {0};
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  sigset_t blocked, during_wait;
  sigemptyset(&blocked); sigaddset(&blocked, SIGTERM); sigaddset(&blocked, SIGINT);
  sigprocmask(SIG_BLOCK, &blocked, &during_wait);
  sigdelset(&during_wait, SIGTERM); sigdelset(&during_wait, SIGINT);

  rfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (rfd < 0 || connect(rfd, (struct sockaddr *)&redis_addr, sizeof redis_addr) < 0) die("connect to redis");
  int one = 1;
  setsockopt(rfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(rfd, F_SETFL, O_NONBLOCK);

  lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0 || listen(lfd, 4096) < 0) die("listen");

  ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  ev.data.fd = rfd;
  epoll_ctl(ep, EPOLL_CTL_ADD, rfd, &ev);

  static struct epoll_event events[1024];
  while (!stop_flag) {
    int n = epoll_pwait(ep, events, 1024, -1, &during_wait);
    if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      uint32_t e = events[i].events;
      if (fd == lfd) { accept_all(); continue; }
      if (fd == rfd) {
        if ((e & (EPOLLERR | EPOLLHUP)) && !(e & EPOLLIN)) fail("redis connection failed");
        if (e & EPOLLIN) redis_readable();
        if (e & EPOLLOUT) redis_flush();
        continue;
      }
      conn_t *c = by_fd[fd];
      if (!c || c->dead) continue;
      if (e & EPOLLOUT) flush_conn(c);
      if (!c->dead && (e & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(c);
    }
    if (redis_out_len) redis_flush();
    reap();
  }

  /* Stop: a close frame (1001, going away) to every open socket, then close everything. */
  static const uint8_t going_away[] = {0x88, 2, 0x03, 0xe9};
  for (int fd = 0; fd < fd_cap; fd++) {
    conn_t *c = by_fd[fd];
    if (!c) continue;
    if (c->state == OPEN && c->out_len == 0 && write(fd, going_away, sizeof going_away) < 0) { /* best effort */ }
    close(fd);
    free(c->hs); free(c->in); free(c->out); free(c);
  }
  close(lfd);
  close(rfd);
  for (int k = 0; k < njobs; k++) free(jobs[k].subs);
  return 0;
}
