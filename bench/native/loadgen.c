/* jobwire bench load generator: one epoll loop holding thousands of WebSocket client
 * connections from its own 127.0.0.x source address (IP_BIND_ADDRESS_NO_PORT: the port is
 * picked at connect time, per destination, so ports never run out and bind() never scans).
 * Every socket parses frame headers and counts job_update frames by one byte; only probe
 * sockets read the publisher's CLOCK_MONOTONIC stamp (the payload's last field "t") and record
 * receive - sent into a histogram. Nothing else is decoded.
 *
 * Driven by bench/run.ts: one command per line on stdin, one JSON reply per line on stdout.
 *   connect HOST PORT PATH SRCADDR COUNT OFFSET STRIDE JOBS JOBPREFIX PROBE_EVERY SUBSCRIBE CONCURRENCY [MAX_HZ]
 *   subscribe | reset | report | close | record PATH | record stop
 * Socket k of this process is socket i = OFFSET + k*STRIDE of the scenario; it watches job
 * i % JOBS and is a probe when (i / JOBS) % PROBE_EVERY == 0, so probes sit at every fan-out
 * position. MAX_HZ > 0 adds "max_hz":MAX_HZ to every subscribe_job.
 *
 * Between "record PATH" and "record stop" (the rate-cap scenario, bench/ratecap.ts), every
 * subscribed socket also reads the seq of each job_update and job_status it receives (the
 * payload's "seq", the first "seq" of the frame: job ids cannot hold quotes) and keeps the
 * highest, which "report" gives per job as the lowest over the job's sockets ("held"); and
 * every probe socket appends one record_t per such frame to PATH. "record stop" closes PATH,
 * lists the probe sockets (so that one that received nothing is accounted for too) and gives
 * every subscribed socket's job and highest seq. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "common.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { CONNECTING, HANDSHAKE, OPEN, CLOSED };

/* Enough of a frame's start for {"type":"job_update","job_id":"<id>","data":{"seq":<seq> with
 * ids of up to 40 characters; other sockets keep the first 14 bytes (the type). */
#define HEAD_SEQ 104
#define HEAD_TYPE 14

typedef struct {
  int fd, state, job;
  uint32_t held; /* the highest seq received while recording */
  uint8_t probe, acked, waiting_ack, in_frame, opcode, hdr_len, head_len, tail_len;
  uint8_t hdr[14];
  uint8_t head[HEAD_SEQ];
  char tail[48];
  uint64_t remaining;
  char *hs;
  int hs_len;
} conn_t;

static int ep;
static conn_t *conns;
static int nconns, cap;
static int jobs_count;
static char job_prefix[64];
static uint64_t *per_job, *subs_per_job;
static uint64_t updates, other_frames, closed_by_server;
static int closing;
static hist_t hist;
static double cpu_at_reset;
static double last_update_us; /* when a probe (while recording: any socket) last got a job_update */

/* One frame received by a probe socket while recording (little-endian, 32 bytes). */
typedef struct {
  uint32_t job, sock, seq, kind; /* kind: 0 job_update, 1 job_status */
  double recv_us, stamp_us;      /* stamp_us: the frame's "t", NaN when absent */
} record_t;
#define RECORDS_MAX 4000000 /* 128 MB of file: far above what a scenario sizes its probes for */
static FILE *record_file;
static uint64_t records, records_dropped, seq_unparsed;
static int max_hz;

/* the current connect or subscribe command */
static int phase; /* 0 idle, 1 connecting, 2 subscribing */
static int want_subscribe, target, started, ok, failed, in_flight, concurrency;
static int plan_offset, plan_stride, probe_every;
static double phase_started;
static char errors[5][96];
static int nerrors;
static struct sockaddr_in dst, src;
static char path[256], host[64];
static int port;

static void note_error(const char *what) {
  if (nerrors < 5) snprintf(errors[nerrors++], sizeof errors[0], "%s", what);
}

static void send_frame_text(conn_t *c, const char *text) {
  uint8_t buf[140];
  size_t n = strlen(text);
  if (n > 125) return;
  buf[0] = 0x81; buf[1] = 0x80 | (uint8_t)n; memset(buf + 2, 0, 4); /* zero mask key */
  memcpy(buf + 6, text, n);
  if (write(c->fd, buf, 6 + n) != (ssize_t)(6 + n)) note_error("short write of subscribe");
}

static void send_subscribe(conn_t *c) {
  char msg[200];
  if (max_hz > 0) snprintf(msg, sizeof msg, "{\"type\":\"subscribe_job\",\"job_id\":\"%s%d\",\"max_hz\":%d}", job_prefix, c->job, max_hz);
  else snprintf(msg, sizeof msg, "{\"type\":\"subscribe_job\",\"job_id\":\"%s%d\"}", job_prefix, c->job);
  c->waiting_ack = 1;
  send_frame_text(c, msg);
}

static void finish_one(int success) {
  if (success) ok++; else failed++;
  in_flight--;
}

static void close_conn(conn_t *c, int by_server) {
  if (c->state == CLOSED) return;
  if (phase == 1 && (c->state != OPEN || c->waiting_ack)) { finish_one(0); note_error("closed during connect"); }
  else if (phase == 2 && c->waiting_ack) { in_flight--; failed++; }
  c->state = CLOSED;
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->hs); c->hs = NULL;
  if (by_server && !closing) closed_by_server++;
}

/* The publisher's stamp: the number after the frame's last "t":, or NaN. */
static double frame_stamp(const conn_t *c) {
  for (int i = c->tail_len - 4; i >= 0; i--) {
    if (memcmp(c->tail + i, "\"t\":", 4) == 0) {
      char num[48]; int n = c->tail_len - i - 4;
      memcpy(num, c->tail + i + 4, (size_t)n); num[n] = 0;
      return strtod(num, NULL);
    }
  }
  return NAN;
}

/* While recording: the frame's seq raises what the socket holds; a probe logs the frame. */
static void record_frame(conn_t *c, uint32_t kind, double recv) {
  const uint8_t *at = memmem(c->head, c->head_len, "\"seq\":", 6);
  if (at == NULL) { if (kind == 0) seq_unparsed++; return; } /* a job_status of no state has none */
  char num[16]; size_t n = (size_t)(c->head + c->head_len - (at + 6));
  if (n > sizeof num - 1) n = sizeof num - 1;
  memcpy(num, at + 6, n); num[n] = 0;
  char *end;
  unsigned long seq = strtoul(num, &end, 10);
  if (end == num || (*end != ',' && *end != '}')) { seq_unparsed++; return; }
  if (seq > c->held) c->held = (uint32_t)seq;
  if (!c->probe) return;
  if (records >= RECORDS_MAX) { records_dropped++; return; }
  record_t r = {(uint32_t)c->job, (uint32_t)(c - conns), (uint32_t)seq, kind, recv, frame_stamp(c)};
  fwrite(&r, sizeof r, 1, record_file);
  records++;
}

static void on_frame(conn_t *c) {
  if (c->opcode == 1 || c->opcode == 2) {
    if (c->waiting_ack) {
      c->waiting_ack = 0; c->acked = 1; subs_per_job[c->job]++;
      if (phase == 1) finish_one(1);
      else if (phase == 2) { in_flight--; ok++; }
      return;
    }
    if (c->head_len > 13 && c->head[13] == 'u') {
      updates++; per_job[c->job]++;
      if (!c->probe && !record_file) return; /* the common case: counted, nothing read */
      double recv = now_us();
      last_update_us = recv;
      if (c->probe && c->tail_len > 4) {
        double stamp = frame_stamp(c);
        if (!isnan(stamp)) hist_record(&hist, recv - stamp);
      }
      if (record_file) record_frame(c, 0, recv);
    } else {
      other_frames++;
      if (record_file && c->head_len > 13 && c->head[13] == 's') record_frame(c, 1, now_us());
    }
  } else if (c->opcode == 9) {
    static const uint8_t pong[6] = {0x8a, 0x80, 0, 0, 0, 0};
    if (write(c->fd, pong, sizeof pong) < 0) note_error("pong write failed");
  } else if (c->opcode == 8) {
    close_conn(c, 1);
  }
}

static void parse(conn_t *c, const uint8_t *p, size_t len) {
  size_t i = 0;
  while (i < len && c->state != CLOSED) {
    if (!c->in_frame) {
      c->hdr[c->hdr_len++] = p[i++];
      if (c->hdr_len < 2) continue;
      uint8_t l7 = c->hdr[1] & 0x7f;
      size_t need = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
      if (c->hdr_len < need) continue;
      c->opcode = c->hdr[0] & 0x0f;
      c->remaining = l7 == 126 ? ((uint64_t)c->hdr[2] << 8 | c->hdr[3])
        : l7 == 127 ? ((uint64_t)c->hdr[6] << 24 | (uint64_t)c->hdr[7] << 16 | (uint64_t)c->hdr[8] << 8 | c->hdr[9]) : l7;
      c->hdr_len = 0; c->head_len = 0; c->tail_len = 0; c->in_frame = 1;
      if (c->remaining == 0) { c->in_frame = 0; on_frame(c); }
      continue;
    }
    size_t n = len - i < c->remaining ? len - i : (size_t)c->remaining;
    size_t head_cap = record_file ? HEAD_SEQ : HEAD_TYPE;
    if (c->head_len < head_cap) {
      size_t room = head_cap - c->head_len;
      size_t h = room < n ? room : n;
      memcpy(c->head + c->head_len, p + i, h); c->head_len += (uint8_t)h;
    }
    if (c->probe) {
      if (n >= sizeof c->tail) { memcpy(c->tail, p + i + n - sizeof c->tail, sizeof c->tail); c->tail_len = sizeof c->tail; }
      else {
        size_t keep = c->tail_len < sizeof c->tail - n ? c->tail_len : sizeof c->tail - n;
        memmove(c->tail, c->tail + c->tail_len - keep, keep);
        memcpy(c->tail + keep, p + i, n); c->tail_len = (uint8_t)(keep + n);
      }
    }
    c->remaining -= n; i += n;
    if (c->remaining == 0) { c->in_frame = 0; on_frame(c); }
  }
}

static void start_socket(void) {
  if (nconns == cap) { cap = cap ? cap * 2 : 1024; conns = realloc(conns, (size_t)cap * sizeof *conns); }
  int k = started++;
  int i = plan_offset + k * plan_stride;
  conn_t *c = &conns[nconns];
  memset(c, 0, sizeof *c);
  c->job = i % jobs_count;
  c->probe = (uint8_t)((i / jobs_count) % probe_every == 0);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  in_flight++;
  if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0 ||
      (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS)) {
    note_error(strerror(errno)); close(c->fd); c->state = CLOSED; finish_one(0); nconns++; return;
  }
  c->state = CONNECTING;
  struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)nconns};
  epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
  nconns++;
}

static uint8_t rbuf[1 << 16];

static void on_event(conn_t *c, uint32_t events) {
  if (c->state == CONNECTING) {
    int err = 0; socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) { note_error(strerror(err)); close_conn(c, 0); return; }
    if (!(events & EPOLLOUT)) return;
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: jobwire.json\r\n\r\n", path, host, port);
    if (write(c->fd, req, (size_t)n) != n) { note_error("short write of upgrade"); close_conn(c, 0); return; }
    c->state = HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return;
  }
  ssize_t n = read(c->fd, rbuf, sizeof rbuf);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { close_conn(c, 1); return; }
  if (n < 0) return;
  if (c->state == HANDSHAKE) {
    c->hs = realloc(c->hs, (size_t)(c->hs_len + n + 1));
    memcpy(c->hs + c->hs_len, rbuf, (size_t)n); c->hs_len += (int)n; c->hs[c->hs_len] = 0;
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) { if (c->hs_len > 4096) { note_error("oversized upgrade response"); close_conn(c, 0); } return; }
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
      char what[64]; snprintf(what, sizeof what, "upgrade refused: %.40s", c->hs); note_error(what); close_conn(c, 0); return;
    }
    size_t rest = (size_t)(c->hs + c->hs_len - (end + 4));
    uint8_t tmp[4096]; size_t r = rest < sizeof tmp ? rest : sizeof tmp;
    memcpy(tmp, end + 4, r);
    free(c->hs); c->hs = NULL; c->hs_len = 0;
    c->state = OPEN;
    if (want_subscribe) send_subscribe(c); else finish_one(1);
    if (r) parse(c, tmp, r);
    return;
  }
  parse(c, rbuf, (size_t)n);
}

static void reply_subscribers(void) {
  printf(",\"subscribers\":{");
  int first = 1;
  for (int j = 0; j < jobs_count; j++)
    if (subs_per_job[j]) { printf("%s\"%s%d\":%llu", first ? "" : ",", job_prefix, j, (unsigned long long)subs_per_job[j]); first = 0; }
  printf("}");
}

static void maybe_finish_phase(void) {
  if (phase == 1 && started == target && in_flight == 0) {
    printf("{\"type\":\"connected\",\"ok\":%d,\"failed\":%d,\"ms\":%.1f,\"errors\":[", ok, failed, (now_us() - phase_started) / 1000);
    for (int i = 0; i < nerrors; i++) printf("%s\"%s\"", i ? "," : "", errors[i]);
    printf("]");
    reply_subscribers();
    printf("}\n"); fflush(stdout); phase = 0;
  } else if (phase == 2 && in_flight == 0) {
    printf("{\"type\":\"subscribed\",\"ms\":%.1f", (now_us() - phase_started) / 1000);
    reply_subscribers();
    printf("}\n"); fflush(stdout); phase = 0;
  }
}

static void reset(void) {
  memset(&hist, 0, sizeof hist);
  updates = other_frames = closed_by_server = 0;
  last_update_us = 0;
  if (per_job) memset(per_job, 0, (size_t)jobs_count * sizeof *per_job);
  cpu_at_reset = cpu_us();
}

static void report(void) {
  int open = 0;
  for (int i = 0; i < nconns; i++) open += conns[i].state == OPEN;
  printf("{\"type\":\"report\",\"report\":{\"updates\":%llu,\"otherFrames\":%llu,\"closedByServer\":%llu,\"open\":%d,\"samples\":%llu,\"cpuMicros\":%.0f,\"perJob\":{",
    (unsigned long long)updates, (unsigned long long)other_frames, (unsigned long long)closed_by_server, open, (unsigned long long)hist.total, cpu_us() - cpu_at_reset);
  int first = 1;
  for (int j = 0; j < jobs_count; j++)
    if (per_job[j]) { printf("%s\"%s%d\":%llu", first ? "" : ",", job_prefix, j, (unsigned long long)per_job[j]); first = 0; }
  printf("},\"lastUpdateUs\":%.3f", last_update_us);
  if (record_file) {
    /* per job, the lowest seq any of its subscribed sockets holds */
    uint32_t *low = malloc((size_t)jobs_count * sizeof *low);
    for (int j = 0; j < jobs_count; j++) low[j] = UINT32_MAX;
    for (int i = 0; i < nconns; i++) if (conns[i].acked && conns[i].held < low[conns[i].job]) low[conns[i].job] = conns[i].held;
    printf(",\"held\":{");
    first = 1;
    for (int j = 0; j < jobs_count; j++)
      if (low[j] != UINT32_MAX) { printf("%s\"%s%d\":%u", first ? "" : ",", job_prefix, j, low[j]); first = 0; }
    printf("}");
    free(low);
  }
  printf(",\"histogram\":");
  hist_print(stdout, &hist);
  printf("}}\n"); fflush(stdout);
}

static void record_command(const char *arg) {
  if (strcmp(arg, "stop") == 0) {
    if (record_file) fclose(record_file);
    record_file = NULL;
    printf("{\"type\":\"recorded\",\"records\":%llu,\"dropped\":%llu,\"unparsed\":%llu,\"probes\":[",
      (unsigned long long)records, (unsigned long long)records_dropped, (unsigned long long)seq_unparsed);
    int first = 1;
    for (int i = 0; i < nconns; i++)
      if (conns[i].acked && conns[i].probe) { printf("%s[%d,%d]", first ? "" : ",", i, conns[i].job); first = 0; }
    printf("],\"sockets\":[");
    first = 1;
    for (int i = 0; i < nconns; i++)
      if (conns[i].acked) { printf("%s[%d,%u]", first ? "" : ",", conns[i].job, conns[i].held); first = 0; }
    printf("]}\n"); fflush(stdout);
    return;
  }
  if (record_file) fclose(record_file);
  record_file = fopen(arg, "wb");
  if (!record_file) {
    printf("{\"type\":\"error\",\"error\":\"cannot open %s\"}\n", strerror(errno)); fflush(stdout);
    return;
  }
  setvbuf(record_file, NULL, _IOFBF, 1 << 20);
  records = records_dropped = seq_unparsed = 0;
  for (int i = 0; i < nconns; i++) conns[i].held = 0;
  printf("{\"type\":\"recording\"}\n"); fflush(stdout);
}

static void command(char *line) {
  char srcaddr[64];
  int count, subscribe, jobs;
  int fields = sscanf(line, "connect %63s %d %255s %63s %d %d %d %d %63s %d %d %d %d", host, &port, path, srcaddr, &count, &plan_offset,
                      &plan_stride, &jobs, job_prefix, &probe_every, &subscribe, &concurrency, &max_hz);
  if (fields == 12 || fields == 13) {
    if (fields == 12) max_hz = 0;
    jobs_count = jobs;
    per_job = calloc((size_t)jobs, sizeof *per_job);
    subs_per_job = calloc((size_t)jobs, sizeof *subs_per_job);
    memset(&dst, 0, sizeof dst); dst.sin_family = AF_INET; dst.sin_port = htons((uint16_t)port); inet_pton(AF_INET, host, &dst.sin_addr);
    memset(&src, 0, sizeof src); src.sin_family = AF_INET; inet_pton(AF_INET, srcaddr, &src.sin_addr);
    want_subscribe = subscribe; target = count; started = ok = failed = in_flight = nerrors = 0;
    phase = 1; phase_started = now_us();
    reset();
    maybe_finish_phase();
  } else if (strncmp(line, "subscribe", 9) == 0) {
    want_subscribe = 1; ok = failed = in_flight = 0; phase = 2; phase_started = now_us();
    for (int i = 0; i < nconns; i++)
      if (conns[i].state == OPEN && !conns[i].acked && !conns[i].waiting_ack) { send_subscribe(&conns[i]); in_flight++; }
    maybe_finish_phase();
  } else if (strncmp(line, "reset", 5) == 0) {
    reset();
    printf("{\"type\":\"reset\"}\n"); fflush(stdout);
  } else if (strncmp(line, "report", 6) == 0) {
    report();
  } else if (strncmp(line, "record ", 7) == 0) {
    record_command(line + 7);
  } else if (strncmp(line, "close", 5) == 0) {
    closing = 1;
    for (int i = 0; i < nconns; i++) if (conns[i].state != CLOSED) close_conn(&conns[i], 0);
    printf("{\"type\":\"closed\"}\n"); fflush(stdout);
    exit(0);
  } else {
    fprintf(stderr, "loadgen: unknown command: %s\n", line);
  }
}

int main(void) {
  /* SCHED_BATCH: our wake-ups do not preempt the gateway. On one machine every frame the
   * gateway writes would otherwise wake this process, and on the gateway's own core it would
   * take over mid-fan-out; on a real network the readers are elsewhere. */
  struct sched_param none = {0};
  if (sched_setscheduler(0, SCHED_BATCH, &none) != 0) perror("loadgen: SCHED_BATCH");
  ep = epoll_create1(0);
  fcntl(0, F_SETFL, O_NONBLOCK);
  struct epoll_event sev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
  static char line[4096];
  size_t line_len = 0;
  struct epoll_event events[512];
  for (;;) {
    while (phase == 1 && started < target && in_flight < concurrency) start_socket();
    int n = epoll_wait(ep, events, 512, 50);
    for (int k = 0; k < n; k++) {
      if (events[k].data.u32 == UINT32_MAX) {
        ssize_t r = read(0, line + line_len, sizeof line - 1 - line_len);
        if (r == 0) exit(0); /* the orchestrator went away */
        if (r < 0) continue;
        line_len += (size_t)r;
        char *nl;
        while ((nl = memchr(line, '\n', line_len))) {
          *nl = 0;
          command(line);
          size_t used = (size_t)(nl - line) + 1;
          memmove(line, nl + 1, line_len - used); line_len -= used;
        }
        continue;
      }
      conn_t *c = &conns[events[k].data.u32];
      if (c->state != CLOSED) on_event(c, events[k].events);
    }
    maybe_finish_phase();
  }
}
