/* jobwire bench publisher: reports progress for a set of jobs at a fixed rate, through Redis
 * exactly as a producer does (EVALSHA of src/producer/progress.lua, or a plain PUBLISH), each
 * message stamped, right before it is written, with CLOCK_MONOTONIC microseconds as the
 * payload's last field "t". Messages go out at their due times (ppoll with microsecond
 * timeouts); replies are counted as they come back, in order on each connection.
 *
 *   publisher REDIS_HOST REDIS_PORT[,REDIS_PORT...] SCRIPT_PATH
 *   stdin:  run RATE DURATION_MS script|publish JOBS JOBPREFIX KEYPREFIX CHANNELPREFIX [ROUTE] [OPTION...]
 *   stdout: {"type":"done","sent":..,"failed":..,"perJob":{..},"cpuMicros":..,"lagMs":..,"elapsedMs":..,"logged":..}
 *
 * Options (the rate-cap scenario, bench/ratecap.ts):
 *   seq=1       with publish: the payload's first field is "seq", this process's own counter per
 *               job index (strictly increasing for the life of the process, across runs), as
 *               the producer script would number it
 *   last=1      each job's last update of the run says "status":"completed" (terminal)
 *   log=PATH    one pub_record_t per update Redis accepted: its job, its seq (the script's reply,
 *               or the seq=1 counter) and its stamp "t", so that a reader can tell when each
 *               state was published
 *   tick=US     wake at most every US microseconds and send what is due then (each update
 *               still stamped as it is written): at tens of thousands of updates a second a
 *               wake-up per update would cost this process half a core
 *
 * Redis Cluster: one port per master, and ROUTE names each job's master, one letter per job
 * ('a' = the first port). The script then runs in the cluster layout (key
 * <prefix>job:{<channel>}, ARGV[9] SPUBLISH), as the gateway's producers do there. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include "common.h"

#define MAX_CONNS 16
#define MAX_JOBS 4096

/* One Redis connection (one per master on a cluster), with the jobs whose replies are due on
 * it, in the order they were sent. */
/* An update sent and not yet answered. */
typedef struct {
  int job;
  uint32_t seq; /* seq=1: the seq it carries */
  double stamp; /* its "t" */
} due_t;

typedef struct {
  int fd;
  char *out;
  size_t out_len, out_cap;
  char rbuf[65536];
  size_t rlen;
  due_t *due;
  long head, tail;
} conn_t;

/* log=PATH: one per accepted update (little-endian, 16 bytes). */
typedef struct {
  uint32_t job, seq;
  double stamp;
} pub_record_t;

static conn_t conns[MAX_CONNS];
static int nconns;
static char sha[41];
static uint32_t next_seq[MAX_JOBS]; /* seq=1: the last seq given per job index */

static void die(const char *what) {
  fprintf(stderr, "publisher: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void append(conn_t *c, const char *s, size_t n) {
  if (c->out_len + n > c->out_cap) { c->out_cap = (c->out_len + n) * 2 + 4096; c->out = realloc(c->out, c->out_cap); }
  memcpy(c->out + c->out_len, s, n); c->out_len += n;
}

static void bulk(conn_t *c, const char *s, size_t n) {
  char head[32];
  int h = snprintf(head, sizeof head, "$%zu\r\n", n);
  append(c, head, (size_t)h); append(c, s, n); append(c, "\r\n", 2);
}

static void flush_out(conn_t *c) {
  size_t done = 0;
  while (done < c->out_len) {
    ssize_t w = write(c->fd, c->out + done, c->out_len - done);
    if (w > 0) { done += (size_t)w; continue; }
    if (w < 0 && errno != EAGAIN && errno != EINTR) die("write to redis");
    struct pollfd p = {.fd = c->fd, .events = POLLOUT};
    poll(&p, 1, 100);
  }
  c->out_len = 0;
}

/* Reads one RESP reply line (blocking; setup only). */
static void read_line(conn_t *c, char *buf, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    ssize_t r = read(c->fd, buf + n, 1);
    if (r <= 0) die("read from redis");
    if (buf[n] == '\n') break;
    n++;
  }
  buf[n] = 0;
}

static void load_script(conn_t *c, const char *lua, size_t size) {
  append(c, "*3\r\n", 4); bulk(c, "SCRIPT", 6); bulk(c, "LOAD", 4); bulk(c, lua, size);
  flush_out(c);
  char line[128];
  read_line(c, line, sizeof line);
  if (line[0] != '$') { fprintf(stderr, "publisher: SCRIPT LOAD failed: %s\n", line); exit(1); }
  read_line(c, line, sizeof line);
  memcpy(sha, line, 40); sha[40] = 0;
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: publisher REDIS_HOST REDIS_PORT[,REDIS_PORT...] SCRIPT_PATH\n"); return 2; }
  FILE *f = fopen(argv[3], "rb");
  if (!f) die(argv[3]);
  fseek(f, 0, SEEK_END); long size = ftell(f); rewind(f);
  char *lua = malloc((size_t)size);
  if (fread(lua, 1, (size_t)size, f) != (size_t)size) die("read script");
  fclose(f);
  for (char *port = strtok(argv[2], ","); port && nconns < MAX_CONNS; port = strtok(NULL, ",")) {
    conn_t *c = &conns[nconns++];
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect to redis");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    load_script(c, lua, (size_t)size);
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
  }
  free(lua);

  char cmd[8192];
  while (fgets(cmd, sizeof cmd, stdin)) {
    double rate; long duration_ms; int jobs; char via[16], prefix[64], key_prefix[64], chan_prefix[64], route[MAX_JOBS + 1] = "";
    int used = 0;
    int fields = sscanf(cmd, "run %lf %ld %15s %d %63s %63s %63s%n", &rate, &duration_ms, via, &jobs, prefix, key_prefix, chan_prefix, &used);
    /* What follows: the route (no '='), then options. */
    int own_seq = 0, last_terminal = 0, bad_option = 0;
    double tick_us = 0;
    char log_path[1024] = "";
    for (char *tok = fields == 7 ? strtok(cmd + used, " \n") : NULL; tok; tok = strtok(NULL, " \n")) {
      if (strncmp(tok, "seq=", 4) == 0) own_seq = strcmp(tok + 4, "1") == 0;
      else if (strncmp(tok, "last=", 5) == 0) last_terminal = strcmp(tok + 5, "1") == 0;
      else if (strncmp(tok, "log=", 4) == 0) snprintf(log_path, sizeof log_path, "%s", tok + 4);
      else if (strncmp(tok, "tick=", 5) == 0) tick_us = atof(tok + 5);
      else if (!strchr(tok, '=') && !route[0] && strlen(tok) <= MAX_JOBS) strcpy(route, tok);
      else bad_option = 1;
    }
    int cluster = route[0] != 0;
    if (fields != 7 || bad_option || jobs < 1 || jobs > MAX_JOBS || (cluster && (int)strlen(route) != jobs)) {
      fprintf(stderr, "publisher: bad command: %s", cmd);
      continue;
    }
    int bad_route = 0;
    for (int j = 0; cluster && j < jobs; j++) if (route[j] < 'a' || route[j] - 'a' >= nconns) bad_route = 1;
    if (bad_route) { fprintf(stderr, "publisher: the route names a port it was not given\n"); continue; }
    int script = strcmp(via, "script") == 0;
    if (own_seq && script) { fprintf(stderr, "publisher: seq=1 is for publish (the script numbers updates itself)\n"); continue; }
    if (log_path[0] && !script && !own_seq) { fprintf(stderr, "publisher: log= needs a seq: script, or publish with seq=1\n"); continue; }
    FILE *log = NULL;
    if (log_path[0] && !(log = fopen(log_path, "wb"))) { fprintf(stderr, "publisher: %s: %s\n", log_path, strerror(errno)); continue; }
    if (log) setvbuf(log, NULL, _IOFBF, 1 << 20);
    long total = (long)(rate * (double)duration_ms / 1000.0 + 0.5);
    uint64_t *per_job = calloc((size_t)jobs, sizeof *per_job);
    for (int i = 0; i < nconns; i++) { conns[i].due = malloc((size_t)(total + 1) * sizeof(due_t)); conns[i].head = conns[i].tail = 0; conns[i].rlen = 0; }
    long sent = 0, replied = 0, failed = 0, logged = 0;
    char first_error[128] = "";
    double cpu0 = cpu_us(), start = now_us(), lag = 0;
    char payload[200], key[200], chan[160];
    double deadline = start + (double)duration_ms * 1000 + 10e6;
    double woke = 0;
    while (replied < total && now_us() < deadline) {
      double now = woke = now_us();
      long due = (long)((now - start) * rate / 1e6);
      if (due > total) due = total;
      while (sent < due) {
        int job = (int)(sent % jobs);
        conn_t *c = &conns[cluster ? route[job] - 'a' : 0];
        int terminal = last_terminal && sent >= total - jobs;
        uint32_t seq = own_seq ? ++next_seq[job] : 0;
        double stamp = now_us();
        char seq_field[24] = "";
        if (own_seq) snprintf(seq_field, sizeof seq_field, "\"seq\":%u,", seq);
        int pl = snprintf(payload, sizeof payload, "{%s\"status\":\"%s\",\"progress\":%.1f,\"message\":\"transcoding\",\"t\":%.3f}",
                          seq_field, terminal ? "completed" : "processing", terminal ? 100.0 : (double)(sent % 100) + 0.5, stamp);
        int cl = snprintf(chan, sizeof chan, "%s%s%d", chan_prefix, prefix, job);
        if (script && cluster) {
          int kl = snprintf(key, sizeof key, "%sjob:{%s}", key_prefix, chan);
          append(c, "*13\r\n", 5); bulk(c, "EVALSHA", 7); bulk(c, sha, 40); bulk(c, "1", 1); bulk(c, key, (size_t)kl); bulk(c, chan, (size_t)cl); bulk(c, payload, (size_t)pl);
          for (int k = 0; k < 6; k++) bulk(c, "", 0);
          bulk(c, "SPUBLISH", 8);
        } else if (script) {
          int kl = snprintf(key, sizeof key, "%sjob:%s%d", key_prefix, prefix, job);
          append(c, "*6\r\n", 4); bulk(c, "EVALSHA", 7); bulk(c, sha, 40); bulk(c, "1", 1); bulk(c, key, (size_t)kl); bulk(c, chan, (size_t)cl); bulk(c, payload, (size_t)pl);
        } else {
          append(c, "*3\r\n", 4); bulk(c, "PUBLISH", 7); bulk(c, chan, (size_t)cl); bulk(c, payload, (size_t)pl);
        }
        c->due[c->tail++] = (due_t){job, seq, stamp};
        sent++;
      }
      for (int i = 0; i < nconns; i++) if (conns[i].out_len) flush_out(&conns[i]);
      if (sent == total && lag == 0) lag = now_us() - start - (double)duration_ms * 1000;
      /* Sleep until the next message is due or a reply arrives. */
      double next_due = start + (double)(sent + 1) * 1e6 / rate;
      if (next_due < woke + tick_us) next_due = woke + tick_us;
      double wait_us = sent < total ? next_due - now_us() : 1000;
      if (wait_us < 0) wait_us = 0;
      struct timespec ts = {.tv_sec = (time_t)(wait_us / 1e6), .tv_nsec = (long)((wait_us - (double)(long)(wait_us / 1e6) * 1e6) * 1000)};
      struct pollfd p[MAX_CONNS];
      for (int i = 0; i < nconns; i++) p[i] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
      /* With a tick, replies do not wake us while updates are still due: they are read (the
       * sockets are non-blocking) at the next tick. */
      int ticking = tick_us > 0 && sent < total;
      if (ppoll(p, ticking ? 0 : (nfds_t)nconns, &ts, NULL) > 0 || ticking) {
        for (int i = 0; i < nconns; i++) {
          if (!ticking && !(p[i].revents & POLLIN)) continue;
          conn_t *c = &conns[i];
          ssize_t r = read(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen);
          if (r <= 0) continue;
          c->rlen += (size_t)r;
          size_t at = 0;
          char *nl;
          /* Every reply here is one line: an integer, or an error. */
          while ((nl = memchr(c->rbuf + at, '\n', c->rlen - at)) && c->head < c->tail) {
            due_t d = c->due[c->head++];
            if (c->rbuf[at] == '-') {
              failed++;
              if (!first_error[0]) snprintf(first_error, sizeof first_error, "%.*s", (int)(nl - (c->rbuf + at) - 1), c->rbuf + at + 1);
            } else {
              per_job[d.job]++;
              if (log) {
                /* The script answers the new seq (":N"); a PUBLISH, how many received it. */
                pub_record_t r = {(uint32_t)d.job, script ? (uint32_t)strtoul(c->rbuf + at + 1, NULL, 10) : d.seq, d.stamp};
                fwrite(&r, sizeof r, 1, log);
                logged++;
              }
            }
            replied++;
            at = (size_t)(nl - c->rbuf) + 1;
          }
          memmove(c->rbuf, c->rbuf + at, c->rlen - at); c->rlen -= at;
        }
      }
    }
    if (log) fclose(log);
    printf("{\"type\":\"done\",\"sent\":%ld,\"failed\":%ld,\"unanswered\":%ld,\"logged\":%ld,\"cpuMicros\":%.0f,\"lagMs\":%.3f,\"elapsedMs\":%.1f,\"error\":\"",
           replied - failed, failed, total - replied, logged, cpu_us() - cpu0, lag > 0 ? lag / 1000 : 0, (now_us() - start) / 1000);
    for (char *e = first_error; *e; e++) if (*e != '"' && *e != '\\') putchar(*e);
    printf("\",\"perJob\":{");
    for (int j = 0; j < jobs; j++) printf("%s\"%s%d\":%llu", j ? "," : "", prefix, j, (unsigned long long)per_job[j]);
    printf("}}\n");
    fflush(stdout);
    free(per_job);
    for (int i = 0; i < nconns; i++) free(conns[i].due);
  }
  return 0;
}
