/* In-process A/B of the convolution passes: a baseline build (every global symbol renamed old_*, see
 * abconv.sh) against the current sources, calls alternating one by one in one process, the fastest
 * call of each. This VM's slow phases (up to 2x, seconds to minutes) land on both variants alike,
 * which separate runs of convbench cannot promise.
 * Usage (abconv.sh builds it): abconv [filter-substring] [iterations per pass, default 60]; the shapes
 * and their passes are shapes.h's (NCHW, plain weights: the training paths and calls without a packing;
 * BLK=1: the forward on blocked activations with weights packed once, as the inference plan runs it,
 * Winograd where it applies; WINO=0 without). */
#include "conv.h"
#include "shapes.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void old_conv2d_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu, const conv_p *p);
void old_conv2d_backward_input(float *dx, const float *dy, const float *w, const conv_p *p);
void old_conv2d_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);
int old_conv2d_forward_blocked(float *y, const float *x, const float *wp, int layout, const float *bias, const float *residual,
                               int relu, const conv_p *p, int x_blocked);

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
static float frand(void) { return (float)rand() / RAND_MAX - 0.5f; }

/* COLD=1: caches flushed before every call (64 MB written), as in a training step, where a layer's
 * input was written a whole other layer ago */
static void flush_caches(void) {
  static char *junk;
  static int cold = -1;
  if (cold < 0) cold = getenv("COLD") && atoi(getenv("COLD"));
  if (!cold) return;
  if (!junk && !(junk = malloc(64 << 20))) abort();
  memset(junk, cold++, 64 << 20);
}

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : "";
  const int iters = argc > 2 ? atoi(argv[2]) : 60;
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    if (!strstr(shapes[s].name, filter)) continue;
    const conv_p *p = &shapes[s].p;
    const long nx = (long)p->n * p->cin * p->h * p->w, ny = (long)p->n * p->cout * p->oh * p->ow;
    const long nw = (long)p->cout * (p->cin / p->groups) * p->kh * p->kw;
    float *x = malloc(nx * 4), *y = malloc(ny * 4), *w = malloc(nw * 4), *dx = malloc(nx * 4), *dw = malloc(nw * 4), *dy = malloc(ny * 4);
    if (!x || !y || !w || !dx || !dw || !dy) abort();
    for (long i = 0; i < nx; i++) x[i] = frand();
    for (long i = 0; i < ny; i++) dy[i] = frand();
    for (long i = 0; i < nw; i++) w[i] = frand();
    const int blk = getenv("BLK") && atoi(getenv("BLK")), wino = !getenv("WINO") || atoi(getenv("WINO"));
    float *wp = NULL, *xb = NULL, *yb = NULL;
    int layout = 0;
    if (blk && !conv2d_blocked_ok(p, 1, wino)) {
      free(x); free(y); free(w); free(dx); free(dw); free(dy);
      continue;
    }
    if (blk) {
      layout = conv2d_blocked_layout(p, wino);
      wp = malloc(sizeof(float) * (size_t)conv2d_layout_size(p, layout));
      const long bx = (long)p->n * p->cin * (p->h + 2) * (p->w + 2), by = (long)p->n * p->cout * (p->oh + 2) * (p->ow + 2);
      xb = calloc((size_t)bx, 4);
      yb = calloc((size_t)by, 4);
      if (!wp || !xb || !yb) abort();
      conv2d_pack_weights_blocked(wp, w, p, wino);
      for (long i = 0; i < bx; i++) xb[i] = frand() * 0.01f; /* the border too: timing only */
    }
    printf("%-24s", shapes[s].name);
    for (int m = 0; m < 3; m++) {
      if (!(shapes[s].modes >> m & 1) || (blk && m > 0)) continue;
      double best[2] = {1e9, 1e9};
      for (int it = 0; it < iters; it++)
        for (int v = 0; v < 2; v++) {
          flush_caches();
          const double t = now();
          if (m == 0 && blk) (v ? conv2d_forward_blocked : old_conv2d_forward_blocked)(yb, xb, wp, layout, NULL, NULL, 0, p, 1);
          else if (m == 0) (v ? conv2d_forward : old_conv2d_forward)(y, x, w, NULL, NULL, 0, p);
          else if (m == 1) (v ? conv2d_backward_input : old_conv2d_backward_input)(dx, dy, w, p);
          else (v ? conv2d_backward_weight : old_conv2d_backward_weight)(dw, x, dy, p);
          const double dt = now() - t;
          if (dt < best[v]) best[v] = dt;
        }
      printf("  %s %6.3f -> %6.3f ms (%+3.0f%%)", m == 0 ? "fwd" : m == 1 ? "bwdI" : "bwdW", best[0] * 1e3, best[1] * 1e3,
             (best[1] / best[0] - 1) * 100);
    }
    printf("\n");
    fflush(stdout);
    free(x); free(y); free(w); free(dx); free(dw); free(dy); free(wp); free(xb); free(yb);
  }
  return 0;
}
