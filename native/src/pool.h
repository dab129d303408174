/* A small fixed-size thread pool. pool_run(fn, ctx) splits a job into parts (up to 8 per thread) and
 * hands them out by ranges (pool_ranges below: a thread's own parts first, then what the others
 * left): fn(ctx, part, parts) does its share of the work for
 * that part (pool_split) and must write outputs disjoint from other parts'. A slowed or descheduled
 * thread then takes fewer parts instead of holding the others up. Nested calls from inside a task
 * run serially, as fn(ctx, 0, 1). */
#ifndef RESNET_POOL_H
#define RESNET_POOL_H
#include <stddef.h>

typedef void (*pool_fn)(void *ctx, int tid, int nthreads);

/* Number of threads tasks run on (default: online cores, or RESNET_NUM_THREADS). */
int pool_threads(void);
/* Sets the thread count (>= 1); takes effect for the next pool_run. */
void pool_set_threads(int n);
/* Runs fn's parts on pool_threads() threads, or fn(ctx, 0, 1) on the caller alone when nested or n == 1. */
void pool_run(pool_fn fn, void *ctx);
/* Runs fn on at most `limit` threads, in at most `limit` parts. */
void pool_run_n(pool_fn fn, void *ctx, int limit);
/* Same, for an fn that hands its work out dynamically (each call takes items until none are left, and
 * a thread that takes none must leave nothing undone): returns as soon as the caller's call returns and
 * the workers that started have finished, without waiting for workers that have not started (on an
 * oversubscribed machine they may not be scheduled for milliseconds). Such workers skip the job. */
void pool_run_dynamic(pool_fn fn, void *ctx, int limit);
/* Items [0, total) handed out with affinity: cut into `ranges` contiguous ranges (at multiples of
 * `unit` items), range r belonging to thread r (tid % ranges); a thread takes its own range's items
 * in order, then what is left of the others' (a slowed or descheduled thread's share goes to the
 * others, as with one shared counter). Successive calls that cut their work alike (a network's
 * layers, each reading its input where the previous one wrote it) then keep each part of the data on
 * the core that wrote it, where one shared counter hands it to whichever thread comes first. */
#define POOL_MAX_RANGES 8
typedef struct {
  long total, unit;
  int ranges;
  int desc; /* each range's items from its last down (set after pool_ranges_init) */
  _Atomic long next[POOL_MAX_RANGES];
} pool_ranges;
/* ranges (the threads the job runs on) is clamped to [1, POOL_MAX_RANGES] and to the number of units;
 * RESNET_AFFINITY=0 makes it 1, one shared counter (for measurements). */
void pool_ranges_init(pool_ranges *r, long total, long unit, int ranges);
/* A thread's position in the ranges: start it with pool_cursor_at. */
typedef struct {
  int r, left;
} pool_cursor;
pool_cursor pool_cursor_at(const pool_ranges *r, int tid);
/* The thread's next item, or -1 when every range is empty. */
long pool_ranges_next(pool_ranges *r, pool_cursor *c);
/* Split [0, total) into n nearly equal parts, aligned to `align`: part tid is [*lo, *hi). */
void pool_split(long total, int tid, int n, long align, long *lo, long *hi);
/* The round trip of one cache line between the calling thread and worker 1, in nanoseconds: the
 * fastest of 8 sets of 200 round trips, measured on each call (about a millisecond); 0 with one thread
 * or from inside a task. A diagnostic for benchmarks: cores that share a last-level cache hand a line
 * over in ~50-200 ns a round trip; cores of different chiplets (AMD's CCDs) or sockets take ~400-600
 * ns, and then what one core writes the other reads at about memory's speed. A VM's two vCPUs can move
 * between the two from one minute to the next. */
double pool_handoff_ns(void);
/* Memory of its own for a large buffer: `bytes` rounded up to whole 4 KB pages (*len), 2 MB-aligned,
 * zero-filled, advised for transparent huge pages (Linux); NULL where mmap is not available or fails.
 * Given back with unmap_large(p, *len). */
void *map_large(size_t bytes, size_t *len);
void unmap_large(void *p, size_t len);
#endif
