/* jobwire bench publisher: reports progress for a set of jobs at a fixed rate, through Redis
 * exactly as a producer does (EVALSHA of src/producer/progress.lua, or a plain PUBLISH), each
 * message stamped, right before it is written, with CLOCK_MONOTONIC microseconds as the
 * payload's last field "t". Messages go out at their due times (ppoll with microsecond
 * timeouts); replies are counted as they come back, in order.
 *
 *   publisher REDIS_HOST REDIS_PORT SCRIPT_PATH
 *   stdin:  run RATE DURATION_MS script|publish JOBS JOBPREFIX KEYPREFIX CHANNELPREFIX
 *   stdout: {"type":"done","sent":..,"failed":..,"perJob":{..},"cpuMicros":..,"lagMs":..,"elapsedMs":..} */
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

static int rfd;
static char sha[41];
static char *out;
static size_t out_len, out_cap;

static void die(const char *what) {
  fprintf(stderr, "publisher: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void append(const char *s, size_t n) {
  if (out_len + n > out_cap) { out_cap = (out_len + n) * 2 + 4096; out = realloc(out, out_cap); }
  memcpy(out + out_len, s, n); out_len += n;
}

static void bulk(const char *s, size_t n) {
  char head[32];
  int h = snprintf(head, sizeof head, "$%zu\r\n", n);
  append(head, (size_t)h); append(s, n); append("\r\n", 2);
}

static void flush_out(void) {
  size_t done = 0;
  while (done < out_len) {
    ssize_t w = write(rfd, out + done, out_len - done);
    if (w > 0) { done += (size_t)w; continue; }
    if (w < 0 && errno != EAGAIN && errno != EINTR) die("write to redis");
    struct pollfd p = {.fd = rfd, .events = POLLOUT};
    poll(&p, 1, 100);
  }
  out_len = 0;
}

/* Reads one RESP reply line (blocking; setup only). */
static void read_line(char *buf, size_t cap) {
  size_t n = 0;
  while (n + 1 < cap) {
    ssize_t r = read(rfd, buf + n, 1);
    if (r <= 0) die("read from redis");
    if (buf[n] == '\n') break;
    n++;
  }
  buf[n] = 0;
}

static void load_script(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) die(path);
  fseek(f, 0, SEEK_END); long size = ftell(f); rewind(f);
  char *lua = malloc((size_t)size);
  if (fread(lua, 1, (size_t)size, f) != (size_t)size) die("read script");
  fclose(f);
  append("*3\r\n", 4); bulk("SCRIPT", 6); bulk("LOAD", 4); bulk(lua, (size_t)size);
  flush_out();
  char line[128];
  read_line(line, sizeof line);
  if (line[0] != '$') { fprintf(stderr, "publisher: SCRIPT LOAD failed: %s\n", line); exit(1); }
  read_line(line, sizeof line);
  memcpy(sha, line, 40); sha[40] = 0;
  free(lua);
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: publisher REDIS_HOST REDIS_PORT SCRIPT_PATH\n"); return 2; }
  rfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
  inet_pton(AF_INET, argv[1], &a.sin_addr);
  if (connect(rfd, (struct sockaddr *)&a, sizeof a) < 0) die("connect to redis");
  int one = 1;
  setsockopt(rfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  load_script(argv[3]);
  fcntl(rfd, F_SETFL, O_NONBLOCK);

  char cmd[512];
  while (fgets(cmd, sizeof cmd, stdin)) {
    double rate; long duration_ms; int jobs; char via[16], prefix[64], key_prefix[64], chan_prefix[64];
    if (sscanf(cmd, "run %lf %ld %15s %d %63s %63s %63s", &rate, &duration_ms, via, &jobs, prefix, key_prefix, chan_prefix) != 7) {
      fprintf(stderr, "publisher: bad command: %s", cmd);
      continue;
    }
    int script = strcmp(via, "script") == 0;
    long total = (long)(rate * (double)duration_ms / 1000.0 + 0.5);
    uint64_t *per_job = calloc((size_t)jobs, sizeof *per_job);
    long sent = 0, replied = 0, failed = 0;
    char first_error[128] = "";
    double cpu0 = cpu_us(), start = now_us(), lag = 0;
    char rbuf[65536]; size_t rlen = 0;
    char payload[160], key[160], chan[160];
    double deadline = start + (double)duration_ms * 1000 + 10e6;
    while (replied < total && now_us() < deadline) {
      double now = now_us();
      long due = (long)((now - start) * rate / 1e6);
      if (due > total) due = total;
      while (sent < due) {
        int job = (int)(sent % jobs);
        int pl = snprintf(payload, sizeof payload, "{\"status\":\"processing\",\"progress\":%.1f,\"message\":\"transcoding\",\"t\":%.3f}",
                          (double)(sent % 100) + 0.5, now_us());
        int cl = snprintf(chan, sizeof chan, "%s%s%d", chan_prefix, prefix, job);
        if (script) {
          int kl = snprintf(key, sizeof key, "%sjob:%s%d", key_prefix, prefix, job);
          append("*6\r\n", 4); bulk("EVALSHA", 7); bulk(sha, 40); bulk("1", 1); bulk(key, (size_t)kl); bulk(chan, (size_t)cl); bulk(payload, (size_t)pl);
        } else {
          append("*3\r\n", 4); bulk("PUBLISH", 7); bulk(chan, (size_t)cl); bulk(payload, (size_t)pl);
        }
        sent++;
      }
      if (out_len) flush_out();
      if (sent == total && lag == 0) lag = now_us() - start - (double)duration_ms * 1000;
      /* Sleep until the next message is due or a reply arrives. */
      double next_due = start + (double)(sent + 1) * 1e6 / rate;
      double wait_us = sent < total ? next_due - now_us() : 1000;
      if (wait_us < 0) wait_us = 0;
      struct timespec ts = {.tv_sec = (time_t)(wait_us / 1e6), .tv_nsec = (long)((wait_us - (double)(long)(wait_us / 1e6) * 1e6) * 1000)};
      struct pollfd p = {.fd = rfd, .events = POLLIN};
      if (ppoll(&p, 1, &ts, NULL) > 0) {
        ssize_t r = read(rfd, rbuf + rlen, sizeof rbuf - rlen);
        if (r > 0) {
          rlen += (size_t)r;
          size_t at = 0;
          char *nl;
          while ((nl = memchr(rbuf + at, '\n', rlen - at))) {
            int job = (int)(replied % jobs);
            if (rbuf[at] == '-') {
              failed++;
              if (!first_error[0]) snprintf(first_error, sizeof first_error, "%.*s", (int)(nl - (rbuf + at) - 1), rbuf + at + 1);
            } else {
              per_job[job]++;
            }
            replied++;
            at = (size_t)(nl - rbuf) + 1;
          }
          memmove(rbuf, rbuf + at, rlen - at); rlen -= at;
        }
      }
    }
    printf("{\"type\":\"done\",\"sent\":%ld,\"failed\":%ld,\"unanswered\":%ld,\"cpuMicros\":%.0f,\"lagMs\":%.3f,\"elapsedMs\":%.1f,\"error\":\"",
           replied - failed, failed, total - replied, cpu_us() - cpu0, lag > 0 ? lag / 1000 : 0, (now_us() - start) / 1000);
    for (char *e = first_error; *e; e++) if (*e != '"' && *e != '\\') putchar(*e);
    printf("\",\"perJob\":{");
    for (int j = 0; j < jobs; j++) printf("%s\"%s%d\":%llu", j ? "," : "", prefix, j, (unsigned long long)per_job[j]);
    printf("}}\n");
    fflush(stdout);
    free(per_job);
  }
  return 0;
}
