/* Shared by the native load generator and publisher: the clock, a log-linear latency
 * histogram, and a tiny JSON-lines writer for replies to bench/run.ts. */
#ifndef JOBWIRE_BENCH_COMMON_H
#define JOBWIRE_BENCH_COMMON_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

/* CLOCK_MONOTONIC in microseconds: the clock Node's process.hrtime() reads too. */
static inline double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static inline double cpu_us(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}

/* Log-linear histogram of microsecond values: values below 256 exactly, above that 128
 * linear sub-buckets per power of two, so a recorded value is off by less than 0.4%. */
#define HIST_SUB 128
#define HIST_EXP 30
#define HIST_BUCKETS (2 * HIST_SUB + HIST_EXP * HIST_SUB)
typedef struct { uint32_t counts[HIST_BUCKETS]; uint64_t total; } hist_t;

static inline void hist_record(hist_t *h, double us) {
  uint64_t v = us < 1 ? 1 : (uint64_t)us;
  int idx;
  if (v < 2 * HIST_SUB) {
    idx = (int)v;
  } else {
    int e = 0;
    while ((v >> e) >= 2 * HIST_SUB) e++;
    if (e > HIST_EXP) { e = HIST_EXP; v = ((uint64_t)2 * HIST_SUB - 1) << e; }
    idx = 2 * HIST_SUB + (e - 1) * HIST_SUB + (int)((v >> e) - HIST_SUB);
  }
  h->counts[idx]++;
  h->total++;
}

/* The value a bucket stands for (its midpoint), for the reader on the Node side. */
static inline uint64_t hist_value(int idx) {
  if (idx < 2 * HIST_SUB) return (uint64_t)idx;
  int e = (idx - 2 * HIST_SUB) / HIST_SUB + 1;
  uint64_t mantissa = (uint64_t)(HIST_SUB + (idx - 2 * HIST_SUB) % HIST_SUB);
  return (mantissa << e) + (((uint64_t)1 << e) >> 1);
}

/* Writes [[value,count],...] of the non-empty buckets. */
static inline void hist_print(FILE *out, const hist_t *h) {
  int first = 1;
  fputc('[', out);
  for (int i = 0; i < HIST_BUCKETS; i++)
    if (h->counts[i]) {
      fprintf(out, "%s[%llu,%u]", first ? "" : ",", (unsigned long long)hist_value(i), h->counts[i]);
      first = 0;
    }
  fputc(']', out);
}

#endif
