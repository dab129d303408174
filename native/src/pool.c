/* Thread pool: persistent pthreads woken by a generation counter. Workers spin briefly before
 * sleeping on a condition variable, so back-to-back kernels (a forward pass is ~100 of them) do
 * not pay a futex wake each time. Every job hands its work out dynamically (pool_run_n: in parts),
 * by ranges where it can (pool_ranges: each thread's own range first, then the others' leftovers). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "pool.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sched.h>
#include <time.h>

#define MAX_THREADS 64 /* src/kernels/registry.ts MAX_THREADS mirrors it */
#define SPIN_ITERS 20000

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t run_mu = PTHREAD_MUTEX_INITIALIZER; /* one pool_run at a time */
static atomic_long generation = 0;
static int started = 0;          /* worker threads created */
static int wanted = 0;           /* configured thread count (0 = not yet decided) */
static int active_n = 1;         /* threads taking part in the current job */
static pool_fn job_fn;
static void *job_ctx;
static _Thread_local int in_task = 0;

static int default_threads(void) {
  const char *env = getenv("RESNET_NUM_THREADS");
  if (env) {
    int n = atoi(env);
    if (n >= 1) return n > MAX_THREADS ? MAX_THREADS : n;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return n > MAX_THREADS ? MAX_THREADS : (int)n;
}

int pool_threads(void) {
  if (wanted == 0) wanted = default_threads();
  return wanted;
}

void pool_set_threads(int n) {
  if (n < 1) n = 1;
  if (n > MAX_THREADS) n = MAX_THREADS;
  wanted = n;
}

/* Entry word of the current job: generation << 32 | CLOSED | number of workers inside fn. A worker
 * enters only a job whose generation it has seen and that is not closed, so job_fn/job_ctx/active_n
 * are those of that generation while it runs (the caller changes them only after every entered worker
 * has left). */
#define CLOSED (1ull << 31)
static atomic_ullong entry = 0;

static void *worker(void *arg) {
  int tid = (int)(long)arg;
  long seen = 0;
  in_task = 1;
  for (;;) {
    long g;
    int spins = 0;
    while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen && spins < SPIN_ITERS) {
      spins++;
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    if (g == seen) {
      pthread_mutex_lock(&mu);
      while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen) pthread_cond_wait(&wake_cv, &mu);
      pthread_mutex_unlock(&mu);
    }
    seen = g;
    unsigned long long e = atomic_load_explicit(&entry, memory_order_acquire);
    int entered = 0;
    while ((long)(e >> 32) == (g & 0xffffffffL) && !(e & CLOSED)) {
      if (atomic_compare_exchange_weak_explicit(&entry, &e, e + 1, memory_order_acq_rel, memory_order_acquire)) {
        entered = 1;
        break;
      }
    }
    if (!entered) continue; /* a newer job (picked up on the next turn) or one already closed */
    if (tid < active_n) job_fn(job_ctx, tid, active_n);
    unsigned long long left = atomic_fetch_sub_explicit(&entry, 1, memory_order_acq_rel) - 1;
    if ((left & CLOSED) && (left & (CLOSED - 1)) == 0) {
      pthread_mutex_lock(&mu);
      pthread_cond_signal(&done_cv);
      pthread_mutex_unlock(&mu);
    }
  }
  return NULL;
}

static void ensure_started(int n) {
  while (started < n - 1) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, worker, (void *)(long)(started + 1)) != 0) {
      pthread_attr_destroy(&attr);
      break;
    }
    pthread_attr_destroy(&attr);
    started++;
  }
}

/* Runs fn, which hands its work out itself (each call takes items until none are left), on up to
 * `limit` threads: returns when the caller's call has returned and the workers that entered have left. */
static void run(pool_fn fn, void *ctx, int limit) {
  int n = pool_threads();
  if (limit < n) n = limit;
  if (n <= 1 || in_task) {
    fn(ctx, 0, 1);
    return;
  }
  pthread_mutex_lock(&run_mu);
  ensure_started(n);
  if (started < n - 1) n = started + 1;
  /* workers that entered the previous job have all left it (the caller waited for them) */
  job_fn = fn;
  job_ctx = ctx;
  active_n = n;
  long g = atomic_load_explicit(&generation, memory_order_relaxed) + 1;
  atomic_store_explicit(&entry, (unsigned long long)(g & 0xffffffffL) << 32, memory_order_release);
  pthread_mutex_lock(&mu);
  atomic_store_explicit(&generation, g, memory_order_release);
  pthread_cond_broadcast(&wake_cv);
  pthread_mutex_unlock(&mu);

  in_task = 1;
  fn(ctx, 0, n);
  in_task = 0;

  /* short spin only: on an oversubscribed machine a descheduled worker must not be waited for by
   * burning the caller's time slice */
  int spins = 0;
  /* the work is handed out inside fn, and the caller has taken all that was left: workers that have
   * not started yet are shut out; wait only for those inside */
  unsigned long long e = atomic_fetch_or_explicit(&entry, CLOSED, memory_order_acq_rel) | CLOSED;
  while ((e & (CLOSED - 1)) != 0 && spins < SPIN_ITERS / 4) {
    spins++;
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
    e = atomic_load_explicit(&entry, memory_order_acquire);
  }
  if ((e & (CLOSED - 1)) != 0) {
    pthread_mutex_lock(&mu);
    while ((atomic_load_explicit(&entry, memory_order_acquire) & (CLOSED - 1)) != 0) pthread_cond_wait(&done_cv, &mu);
    pthread_mutex_unlock(&mu);
  }
  pthread_mutex_unlock(&run_mu);
}

/* A static job's parts (fn(ctx, part, parts), each part splitting its work with pool_split) handed
 * out dynamically: when one core is slowed or descheduled (this VM's noisy phases, another process),
 * the other takes more parts instead of waiting for a fixed half. Measured with a busy process on one
 * core: the Winograd transforms of 64 channels on 56x56 at batch 8, 33 ms with fixed halves, 10-14 ms
 * so. Every task writes disjoint outputs per part, so the results do not depend on who ran what. */
#define PARTS_PER_THREAD 8
typedef struct {
  pool_fn fn;
  void *ctx;
  int parts;
  pool_ranges items;
} parts_job;
static void parts_task(void *c, int tid, int n) {
  (void)n;
  parts_job *j = c;
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long k = pool_ranges_next(&j->items, &cur);
    if (k < 0) break;
    j->fn(j->ctx, (int)k, j->parts);
  }
}

void pool_run_n(pool_fn fn, void *ctx, int limit) {
  int n = pool_threads();
  if (limit < n) n = limit;
  if (n <= 1 || in_task) {
    fn(ctx, 0, 1);
    return;
  }
  parts_job j;
  j.fn = fn;
  j.ctx = ctx;
  j.parts = limit < PARTS_PER_THREAD * n ? limit : PARTS_PER_THREAD * n;
  pool_ranges_init(&j.items, j.parts, 1, n);
  run(parts_task, &j, n);
}
void pool_run_dynamic(pool_fn fn, void *ctx, int limit) { run(fn, ctx, limit); }

void pool_run(pool_fn fn, void *ctx) { pool_run_n(fn, ctx, MAX_THREADS); }

/* ---- The threads' handoff time (pool_handoff_ns) ---------------------------------------------- */
#define HANDOFF_ROUNDS 200 /* round trips per set */
#define HANDOFF_SETS 8
#define HANDOFF_WAIT_NS 50000000L /* worker 1 not there within 50 ms (descheduled): that is the result */
typedef struct {
  _Alignas(64) atomic_long line; /* the cache line handed back and forth: 2i + 1 from thread 0, 2i + 2 back */
  _Alignas(64) atomic_int ready, quit;
  double best_ns;
} handoff_job;
static long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000L + t.tv_nsec;
}
static void handoff_task(void *ctx, int tid, int n) {
  handoff_job *h = ctx;
  const long total = (long)HANDOFF_ROUNDS * HANDOFF_SETS;
  if (n < 2 || tid > 1) return;
  if (tid == 1) {
    atomic_store_explicit(&h->ready, 1, memory_order_release);
    for (long i = 0; i < total; i++) {
      while (atomic_load_explicit(&h->line, memory_order_acquire) != 2 * i + 1)
        if (atomic_load_explicit(&h->quit, memory_order_relaxed)) return;
      atomic_store_explicit(&h->line, 2 * i + 2, memory_order_release);
    }
    return;
  }
  const long t_start = now_ns();
  long spins = 0;
  while (!atomic_load_explicit(&h->ready, memory_order_acquire))
    if (++spins % 1024 == 0 && now_ns() - t_start > HANDOFF_WAIT_NS) {
      atomic_store_explicit(&h->quit, 1, memory_order_relaxed);
      h->best_ns = (double)HANDOFF_WAIT_NS;
      return;
    }
  double best = 1e30;
  for (long s = 0; s < HANDOFF_SETS; s++) {
    const long t0 = now_ns();
    for (long i = s * HANDOFF_ROUNDS; i < (s + 1) * HANDOFF_ROUNDS; i++) {
      atomic_store_explicit(&h->line, 2 * i + 1, memory_order_release);
      while (atomic_load_explicit(&h->line, memory_order_acquire) != 2 * i + 2) {
      }
    }
    const double per = (double)(now_ns() - t0) / HANDOFF_ROUNDS;
    if (per < best) best = per;
  }
  h->best_ns = best;
}
double pool_handoff_ns(void) {
  if (pool_threads() < 2 || in_task) return 0;
  handoff_job h;
  memset(&h, 0, sizeof h);
  run(handoff_task, &h, 2);
  return h.best_ns;
}

static int pool_affinity(void) {
  static int on = -1;
  if (on < 0) on = !(getenv("RESNET_AFFINITY") && strcmp(getenv("RESNET_AFFINITY"), "0") == 0);
  return on;
}
void pool_ranges_init(pool_ranges *r, long total, long unit, int ranges) {
  if (unit < 1) unit = 1;
  const long units = (total + unit - 1) / unit;
  if (ranges > POOL_MAX_RANGES) ranges = POOL_MAX_RANGES;
  if (ranges > units) ranges = (int)units;
  if (ranges < 1 || !pool_affinity()) ranges = 1;
  r->total = total;
  r->unit = unit;
  r->ranges = ranges;
  r->desc = 0;
  for (int i = 0; i < POOL_MAX_RANGES; i++) atomic_init(&r->next[i], 0);
}
pool_cursor pool_cursor_at(const pool_ranges *r, int tid) {
  const pool_cursor c = {tid % r->ranges, r->ranges};
  return c;
}
long pool_ranges_next(pool_ranges *r, pool_cursor *c) {
  const long units = (r->total + r->unit - 1) / r->unit;
  while (c->left > 0) {
    long lo = units * c->r / r->ranges * r->unit, hi = units * (c->r + 1) / r->ranges * r->unit;
    if (hi > r->total) hi = r->total;
    const long it = lo + atomic_fetch_add_explicit(&r->next[c->r], 1, memory_order_relaxed);
    if (it < hi) return r->desc ? hi - 1 - (it - lo) : it;
    c->left--;
    c->r = (c->r + 1) % r->ranges;
  }
  return -1;
}

void pool_split(long total, int tid, int n, long align, long *lo, long *hi) {
  if (align < 1) align = 1;
  long units = (total + align - 1) / align;
  long base = units / n, extra = units % n;
  long u0 = tid * base + (tid < extra ? tid : extra);
  long u1 = u0 + base + (tid < extra ? 1 : 0);
  *lo = u0 * align;
  *hi = u1 * align;
  if (*lo > total) *lo = total;
  if (*hi > total) *hi = total;
}

#if defined(__linux__)
#include <stdint.h>
#include <sys/mman.h>
#define LARGE_ALIGN ((size_t)2 << 20)
void *map_large(size_t bytes, size_t *len) {
  const size_t n = (bytes + 4095) & ~(size_t)4095;
  char *m = mmap(NULL, n + LARGE_ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return NULL;
  char *al = (char *)(((uintptr_t)m + LARGE_ALIGN - 1) & ~(uintptr_t)(LARGE_ALIGN - 1));
  if (al > m) munmap(m, (size_t)(al - m));
  if (m + n + LARGE_ALIGN > al + n) munmap(al + n, (size_t)(m + n + LARGE_ALIGN - (al + n)));
  madvise(al, n, MADV_HUGEPAGE);
  *len = n;
  return al;
}
void unmap_large(void *p, size_t len) { munmap(p, len); }
#else
void *map_large(size_t bytes, size_t *len) {
  (void)bytes;
  *len = 0;
  return NULL;
}
void unmap_large(void *p, size_t len) { (void)p; (void)len; }
#endif
