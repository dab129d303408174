/* Convolution micro-benchmark + correctness check against a naive reference.
 * Build: gcc -O3 -std=c11 -D_GNU_SOURCE -Inative/src native/bench/convbench.c native/src/conv*.c \
 *            native/src/gemm.c native/src/ops.c native/src/pool.c -o /tmp/convbench -lpthread -lm
 * Run:   T=1 /tmp/convbench [filter-substring]   (T = threads; SECS = seconds per measurement;
 *        CPUTIME=1 times CPU time, for T=1 on a loaded machine; NOCHECK=1 skips the correctness check;
 *        RES=1 times the forward with bias + residual + relu, as the inference plan runs it;
 *        PACKED=1 packs the weights once first, as the inference plan does; INPLACE=1 with both: the
 *        output overwrites the residual, as the plan runs a block's last conv; BLK=1: blocked
 *        activations, the plan's layout on AVX-512; CALLMIN=1: the fastest single call instead of the
 *        best average over a third of SECS, for A/B comparisons on a noisy machine) */
#include "conv.h"
#include "pool.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
/* CPUTIME=1: process CPU time instead of wall time (with T=1, removes time slices lost to other processes) */
static double now(void) {
  static int cpu = -1;
  if (cpu < 0) cpu = getenv("CPUTIME") && atoi(getenv("CPUTIME"));
  struct timespec t;
  clock_gettime(cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
#include "shapes.h"

static void ref_fwd(float *y, const float *x, const float *w, const conv_p *p) {
  int cig = p->cin / p->groups, cog = p->cout / p->groups;
  for (int n = 0; n < p->n; n++)
    for (int co = 0; co < p->cout; co++) {
      int g = co / cog;
      for (int oy = 0; oy < p->oh; oy++)
        for (int ox = 0; ox < p->ow; ox++) {
          double s = 0;
          for (int c = 0; c < cig; c++)
            for (int ky = 0; ky < p->kh; ky++)
              for (int kx = 0; kx < p->kw; kx++) {
                int iy = oy * p->sh - p->ph + ky * p->dh, ix = ox * p->sw - p->pw + kx * p->dw;
                if (iy < 0 || iy >= p->h || ix < 0 || ix >= p->w) continue;
                s += (double)x[(((long)n * p->cin + g * cig + c) * p->h + iy) * p->w + ix] *
                     w[(((long)co * cig + c) * p->kh + ky) * p->kw + kx];
              }
          y[(((long)n * p->cout + co) * p->oh + oy) * p->ow + ox] = (float)s;
        }
    }
}
static void ref_bwd(float *dx, float *dw, const float *x, const float *dy, const float *w, const conv_p *p) {
  int cig = p->cin / p->groups, cog = p->cout / p->groups;
  long nx = (long)p->n * p->cin * p->h * p->w, nw = (long)p->cout * cig * p->kh * p->kw;
  double *ddx = calloc(nx, sizeof(double)), *ddw = calloc(nw, sizeof(double));
  for (int n = 0; n < p->n; n++)
    for (int co = 0; co < p->cout; co++) {
      int g = co / cog;
      for (int oy = 0; oy < p->oh; oy++)
        for (int ox = 0; ox < p->ow; ox++) {
          double d = dy[(((long)n * p->cout + co) * p->oh + oy) * p->ow + ox];
          for (int c = 0; c < cig; c++)
            for (int ky = 0; ky < p->kh; ky++)
              for (int kx = 0; kx < p->kw; kx++) {
                int iy = oy * p->sh - p->ph + ky * p->dh, ix = ox * p->sw - p->pw + kx * p->dw;
                if (iy < 0 || iy >= p->h || ix < 0 || ix >= p->w) continue;
                long xi = (((long)n * p->cin + g * cig + c) * p->h + iy) * p->w + ix;
                long wi = (((long)co * cig + c) * p->kh + ky) * p->kw + kx;
                ddx[xi] += d * w[wi];
                ddw[wi] += d * x[xi];
              }
        }
    }
  for (long i = 0; i < nx; i++) dx[i] = (float)ddx[i];
  for (long i = 0; i < nw; i++) dw[i] = (float)ddw[i];
  free(ddx); free(ddw);
}
static float frand(void) { return (float)rand() / RAND_MAX * 2 - 1; }
static double relerr(const float *a, const float *b, long n) {
  double num = 0, den = 0;
  for (long i = 0; i < n; i++) { double d = a[i] - b[i]; num = fmax(num, fabs(d)); den = fmax(den, fabs(b[i])); }
  return num / (den > 0 ? den : 1);
}
/* max |err| / max |ref| on small odd shapes for all three passes */
static int check(void) {
  conv_p cs[] = {S(3, 16, 28, 16, 3, 1, 1), S(2, 1, 28, 16, 3, 1, 1), S(3, 16, 28, 32, 3, 2, 1), S(5, 64, 7, 64, 3, 1, 1),
                 S(7, 5, 9, 7, 3, 2, 1), S(1, 3, 11, 6, 5, 2, 2), S(2, 8, 6, 12, 1, 1, 0), S(7, 17, 1, 9, 3, 1, 1),
                 S(2, 13, 5, 11, 3, 1, 0), S(4, 16, 4, 16, 3, 1, 1), S(33, 32, 2, 16, 3, 1, 1), S(2, 24, 13, 8, 1, 2, 0),
                 {2, 8, 9, 9, 12, 3, 3, 1, 1, 2, 2, 2, 2, 1, 0, 0}, {2, 5, 11, 10, 6, 3, 3, 2, 2, 2, 1, 2, 2, 1, 0, 0},
                 {3, 6, 7, 8, 10, 3, 3, 1, 2, 0, 3, 1, 3, 1, 0, 0}, {1, 4, 20, 20, 8, 7, 7, 2, 2, 3, 3, 1, 1, 1, 0, 0},
                 S(3, 8, 8, 12, 1, 1, 0), S(5, 3, 10, 20, 3, 2, 0), S(3, 9, 1, 7, 3, 1, 1), S(4, 6, 2, 10, 3, 2, 1),
                 S(2, 5, 1, 4, 5, 1, 2), {2, 4, 1, 3, 6, 3, 3, 1, 1, 2, 1, 2, 1, 1, 0, 0}, {2, 6, 3, 2, 4, 3, 3, 2, 1, 1, 1, 1, 1, 2, 0, 0}, S(2, 6, 12, 9, 2, 2, 0), S(2, 7, 9, 5, 4, 3, 2),
                 {2, 8, 9, 7, 12, 3, 3, 1, 2, 2, 1, 2, 1, 4, 9, 4},
                 /* Winograd F(4x4) on NCHW (>= 32 channels, whole blocks): odd maps, cut edge tiles */
                 S(3, 32, 9, 48, 3, 1, 1), S(2, 48, 5, 32, 3, 1, 1), {2, 64, 3, 11, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0, 0}};
  int bad = 0;
  for (unsigned c = 0; c < sizeof cs / sizeof *cs; c++) {
    conv_p p = cs[c];
    p.oh = (p.h + 2 * p.ph - p.dh * (p.kh - 1) - 1) / p.sh + 1;
    p.ow = (p.w + 2 * p.pw - p.dw * (p.kw - 1) - 1) / p.sw + 1;
    long nx = (long)p.n * p.cin * p.h * p.w, ny = (long)p.n * p.cout * p.oh * p.ow, nw = (long)p.cout * (p.cin / p.groups) * p.kh * p.kw;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *dy = malloc(ny * 4), *y = malloc(ny * 4), *yr = malloc(ny * 4);
    float *dx = malloc(nx * 4), *dxr = malloc(nx * 4), *dw = malloc(nw * 4), *dwr = malloc(nw * 4);
    for (long i = 0; i < nx; i++) x[i] = frand();
    for (long i = 0; i < nw; i++) w[i] = frand();
    for (long i = 0; i < ny; i++) dy[i] = frand();
    memset(dx, 0x7f, nx * 4); memset(dw, 0x7f, nw * 4); memset(y, 0x7f, ny * 4);
    ref_fwd(yr, x, w, &p); ref_bwd(dxr, dwr, x, dy, w, &p);
    conv2d_forward(y, x, w, NULL, NULL, 0, &p);
    conv2d_backward_input(dx, dy, w, &p);
    conv2d_backward_weight(dw, x, dy, &p);
    double e0 = relerr(y, yr, ny), e1 = relerr(dx, dxr, nx), e2 = relerr(dw, dwr, nw);
    int ok = e0 < 1e-5 && e1 < 1e-5 && e2 < 1e-5;
    if (!ok || getenv("VERBOSE"))
      printf("check n%d c%d->%d %dx%d k%d s%d p%d g%d: fwd %.2e bwdI %.2e bwdW %.2e %s\n", p.n, p.cin, p.cout, p.h, p.w, p.kh, p.sh,
             p.ph, p.groups, e0, e1, e2, ok ? "ok" : "FAIL");
    bad += !ok;
    free(x); free(w); free(dy); free(y); free(yr); free(dx); free(dxr); free(dw); free(dwr);
  }
  printf("correctness: %s\n", bad ? "FAILED" : "ok");
  return bad;
}

int main(int argc, char **argv) {
  pool_set_threads(getenv("T") ? atoi(getenv("T")) : 1);
  double secs = getenv("SECS") ? atof(getenv("SECS")) : 0.4;
  if (!getenv("NOCHECK") && check()) return 1;
  /* MODES=1|2|4 (sums of): forward, backward-input, weight gradient only (for profiling one pass) */
  const int modes = getenv("MODES") ? atoi(getenv("MODES")) : 7;
  for (unsigned c = 0; c < sizeof shapes / sizeof *shapes; c++) {
    if (argc > 1 && !strstr(shapes[c].name, argv[1])) continue;
    conv_p p = shapes[c].p;
    long nx = (long)p.n * p.cin * p.h * p.w, ny = (long)p.n * p.cout * p.oh * p.ow, nw = (long)p.cout * p.cin * p.kh * p.kw;
    /* BLK=1: blocked activations (NCHW16c with a zero border, blocked input when cin is a multiple of
     * 16), as the inference plan runs on AVX-512 (the data is random, so only the time means anything) */
    const int blk = getenv("BLK") && atoi(getenv("BLK")) && conv2d_blocked_ok(&p, p.cin % 16 == 0, 1);
    if (blk) {
      const int B = CONV_BLK_BORDER;
      if (p.cin % 16 == 0) nx = (long)p.n * p.cin * (p.h + 2 * B) * (p.w + 2 * B);
      ny = (long)p.n * p.cout * (p.oh + 2 * B) * (p.ow + 2 * B);
    }
    float *x = malloc(nx * 4), *y = malloc(ny * 4), *w = malloc(nw * 4), *dx = malloc(nx * 4), *dw = malloc(nw * 4);
    for (long i = 0; i < nx; i++) x[i] = frand();
    for (long i = 0; i < nw; i++) w[i] = frand();
    for (long i = 0; i < ny; i++) y[i] = frand();
    /* RES=1: forward with the inference epilogue (bias, a separate residual buffer, relu) */
    int res = getenv("RES") && atoi(getenv("RES"));
    int packed = getenv("PACKED") && atoi(getenv("PACKED"));
    /* INPLACE=1 (with RES=1 PACKED=1): the output overwrites the residual, as the inference plan runs
     * a block's last conv (the residual then grows each run; only the time matters here) */
    int inplace = res && getenv("INPLACE") && atoi(getenv("INPLACE"));
    const int callmin = getenv("CALLMIN") && atoi(getenv("CALLMIN"));
    if (blk) packed = 1;
    float *wpk = packed ? malloc((blk ? conv2d_layout_size(&p, conv2d_blocked_layout(&p, 1)) : conv2d_packed_size(&p)) * 4) : NULL;
    int layout = blk ? conv2d_pack_weights_blocked(wpk, w, &p, 1) : packed ? conv2d_pack_weights(wpk, w, &p) : 0;
    float *r = malloc(ny * 4), *bias = malloc(p.cout * 4);
    for (long i = 0; i < ny; i++) r[i] = frand();
    for (int i = 0; i < p.cout; i++) bias[i] = frand();
    double fl = 2.0 * p.n * p.cout * p.oh * p.ow * p.cin * p.kh * p.kw;
    printf("%-24s", shapes[c].name);
    for (int m = 0; m < 3; m++) {
      if (!(shapes[c].modes >> m & 1) || !(modes >> m & 1)) continue;
      double best = 1e9;
      for (int rep = 0; rep < 3; rep++) {
        int reps = 0;
        double t0 = now(), tc = t0;
        do {
          if (m == 0 && blk) conv2d_forward_blocked(inplace ? r : y, x, wpk, layout, res ? bias : NULL, res ? r : NULL, res, &p, p.cin % 16 == 0);
          else if (m == 0 && packed) conv2d_forward_packed(inplace ? r : y, x, NULL, wpk, layout, res ? bias : NULL, res ? r : NULL, res, &p);
          else if (m == 0) conv2d_forward(y, x, w, res ? bias : NULL, res ? r : NULL, res, &p);
          else if (m == 1) conv2d_backward_input(dx, y, w, &p);
          else conv2d_backward_weight(dw, x, y, &p);
          reps++;
          const double t1 = now();
          if (callmin && t1 - tc < best) best = t1 - tc; /* CALLMIN=1: the fastest single call */
          tc = t1;
        } while (now() - t0 < secs / 3);
        double dt = (now() - t0) / reps;
        if (!callmin && dt < best) best = dt;
      }
      printf("  %s %7.2fms %5.1f GF/s", m == 0 ? "fwd" : m == 1 ? "bwdI" : "bwdW", best * 1e3, fl / best / 1e9);
    }
    printf("\n");
    fflush(stdout);
    free(x); free(y); free(w); free(dx); free(dw); free(r); free(bias); free(wpk);
  }
  return 0;
}
