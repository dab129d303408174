/* N-API surface of the native backend. Every function takes typed arrays (by reference, no copy)
 * and numbers, checks only what C needs to stay memory-safe (types and buffer lengths against the
 * geometry), and calls a kernel. Shape validation and allocation happen in TypeScript
 * (src/ops); the typed declaration of this surface is src/backends/native/binding.ts. */
#include <node_api.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include "conv.h"
#include "gemm.h"
#include "ops.h"
#include "pool.h"

#define MAX_ARGS 20

typedef struct {
  napi_env env;
  napi_value argv[MAX_ARGS];
  size_t argc;
  int failed;
} args_t;

static int fail(args_t *a, const char *msg) {
  if (!a->failed) napi_throw_type_error(a->env, NULL, msg);
  a->failed = 1;
  return 0;
}

static int get_args(napi_env env, napi_callback_info info, args_t *a, size_t want) {
  a->env = env;
  a->argc = MAX_ARGS;
  a->failed = 0;
  napi_get_cb_info(env, info, &a->argc, a->argv, NULL, NULL);
  if (a->argc < want) return fail(a, "native: too few arguments");
  return 1;
}

/* The data of typed-array argument i of `type` (its length in *len; an empty array's data may be
 * NULL), or NULL after failing with "native: expected <what>": callers test a->failed. */
static void *typed(args_t *a, size_t i, napi_typedarray_type type, const char *what, size_t *len) {
  bool is_ta = false;
  napi_is_typedarray(a->env, a->argv[i], &is_ta);
  napi_typedarray_type got = type;
  void *data = NULL;
  *len = 0;
  if (is_ta) napi_get_typedarray_info(a->env, a->argv[i], &got, len, &data, NULL, NULL);
  if (!is_ta || got != type) {
    char msg[64];
    snprintf(msg, sizeof msg, "native: expected %s", what);
    fail(a, msg);
    return NULL;
  }
  return data;
}

/* Float32Array argument i with at least `need` elements; NULL allowed when `nullable`. */
static float *f32(args_t *a, size_t i, size_t need, int nullable) {
  if (a->failed) return NULL;
  napi_valuetype t;
  napi_typeof(a->env, a->argv[i], &t);
  if (t == napi_null || t == napi_undefined) {
    if (!nullable) fail(a, "native: expected a Float32Array, got null");
    return NULL;
  }
  size_t len;
  float *data = typed(a, i, napi_float32_array, "a Float32Array", &len);
  if (a->failed) return NULL;
  if (len < need) return fail(a, "native: buffer shorter than the geometry requires"), NULL;
  return data;
}

static int32_t *i32(args_t *a, size_t i, size_t need) {
  if (a->failed) return NULL;
  size_t len;
  int32_t *data = typed(a, i, napi_int32_array, "an Int32Array", &len);
  if (a->failed) return NULL;
  if (len < need) return fail(a, "native: Int32Array shorter than required"), NULL;
  return data;
}

/* Uint16Array argument i with at least `need` elements, or NULL when absent, null or undefined. */
static uint16_t *u16_opt(args_t *a, size_t i, size_t need) {
  if (a->failed || a->argc <= i) return NULL;
  napi_valuetype t;
  napi_typeof(a->env, a->argv[i], &t);
  if (t == napi_null || t == napi_undefined) return NULL;
  size_t len;
  uint16_t *data = typed(a, i, napi_uint16_array, "a Uint16Array", &len);
  if (a->failed) return NULL;
  if (len < need) return fail(a, "native: mask shorter than the geometry requires"), NULL;
  return data;
}

static double num(args_t *a, size_t i) {
  double v = 0;
  if (a->failed) return 0;
  if (napi_get_value_double(a->env, a->argv[i], &v) != napi_ok) fail(a, "native: expected a number");
  return v;
}

static int flag(args_t *a, size_t i) {
  bool b = false;
  if (a->failed) return 0;
  napi_valuetype t;
  napi_typeof(a->env, a->argv[i], &t);
  if (t == napi_boolean) napi_get_value_bool(a->env, a->argv[i], &b);
  else return num(a, i) != 0;
  return b;
}

/* Whether argument i is null or undefined (absent). */
static int absent(args_t *a, size_t i) {
  napi_valuetype t;
  napi_typeof(a->env, a->argv[i], &t);
  return t == napi_null || t == napi_undefined;
}

/* Optional trailing boolean: false when absent (undefined). */
static int opt_flag(args_t *a, size_t i) {
  if (a->failed || absent(a, i)) return 0;
  return flag(a, i);
}

static napi_value undef(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

/* conv geometry from an Int32Array of 16: n cin h w cout kh kw sh sw ph pw dh dw groups oh ow */
static int conv_geom(args_t *a, size_t i, conv_p *p) {
  int32_t *g = i32(a, i, 16);
  if (!g) return 0;
  memcpy(p, g, sizeof(conv_p));
  if (p->groups < 1 || p->cin % p->groups || p->cout % p->groups || p->oh < 0 || p->ow < 0 || p->n < 0)
    return fail(a, "native: invalid convolution geometry");
  return 1;
}

#define SZ(x) ((size_t)(x))

/* Element counts of a convolution's input, output and weight. */
static void conv_sizes(const conv_p *p, size_t *nx, size_t *ny, size_t *nw);

/* The shared start of the convolution entry points: at least `want` arguments, the geometry at
 * argument `gi`, and the element counts of x, y and w. */
static int conv_args(napi_env env, napi_callback_info info, args_t *a, size_t want, size_t gi, conv_p *p, size_t *nx,
                     size_t *ny, size_t *nw) {
  if (!get_args(env, info, a, want) || !conv_geom(a, gi, p)) return 0;
  conv_sizes(p, nx, ny, nw);
  return 1;
}

/* Element counts of a convolution's input, output and weight. */
static void conv_sizes(const conv_p *p, size_t *nx, size_t *ny, size_t *nw) {
  *nx = SZ(p->n) * p->cin * p->h * p->w;
  *ny = SZ(p->n) * p->cout * p->oh * p->ow;
  *nw = SZ(p->cout) * (p->cin / p->groups) * p->kh * p->kw;
}

/* Packed weights (argument ia) in the layout given by argument il, sized for geometry p; NULL (and
 * a.failed) on a bad layout or buffer. */
static const float *packed_arg(args_t *a, size_t ia, size_t il, const conv_p *p, int *layout) {
  *layout = (int)num(a, il);
  if (a->failed) return NULL;
  long size = conv2d_layout_size(p, *layout);
  if (size < 0) return fail(a, "native: invalid packed-weight layout"), NULL;
  return f32(a, ia, (size_t)size, 0);
}

static napi_value js_conv2d(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  size_t nx, ny, nw;
  if (!conv_args(env, info, &a, 7, 6, &p, &nx, &ny, &nw)) return NULL;
  /* optional pre-packed weights (argument 7) with their layout (argument 8); w may then be null */
  int layout = 0;
  const float *wp = absent(&a, 7) ? NULL : packed_arg(&a, 7, 8, &p, &layout);
  if (a.failed) return NULL;
  float *y = f32(&a, 0, ny, 0);
  const float *x = f32(&a, 1, nx, 0), *w = f32(&a, 2, nw, wp != NULL), *b = f32(&a, 3, p.cout, 1);
  const float *res = f32(&a, 4, ny, 1);
  int relu = flag(&a, 5);
  if (a.failed) return NULL;
  conv2d_forward_packed(y, x, w, wp, layout, b, res, relu, &p);
  return undef(env);
}

/* Floats of a packing for geometry p with the optional flags blocked (argument i) and winograd
 * (i + 1), as convPackWeights writes it; -1 and a.failed when blocked weights cannot be made. */
static long packed_floats(args_t *a, size_t i, const conv_p *p) {
  const int blocked = opt_flag(a, i), wino = opt_flag(a, i + 1);
  if (a->failed) return -1;
  if (blocked && p->groups != 1) return fail(a, "native: blocked weights need groups = 1"), -1;
  return blocked ? conv2d_layout_size(p, conv2d_blocked_layout(p, wino)) : conv2d_packed_size(p);
}

/* convPackedLength(geometry[, blocked[, winograd]]): floats that convPackWeights(..., blocked, winograd) writes for this
 * convolution's weights. */
static napi_value js_conv_packed_length(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  if (!get_args(env, info, &a, 1) || !conv_geom(&a, 0, &p)) return NULL;
  const long size = packed_floats(&a, 1, &p);
  if (a.failed) return NULL;
  napi_value r;
  napi_create_double(env, (double)size, &r);
  return r;
}

/* convPackLayout(geometry): the packed layout that conv2d reads for this geometry. */
static napi_value js_conv_pack_layout(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  if (!get_args(env, info, &a, 1) || !conv_geom(&a, 0, &p)) return NULL;
  napi_value r;
  napi_create_int32(env, conv2d_pack_layout(&p), &r);
  return r;
}

/* convUnpackWeights(w, packed, layout, geometry): the plain weights back from packed ones. */
static napi_value js_conv_unpack_weights(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  size_t nx, ny, nw;
  if (!conv_args(env, info, &a, 4, 3, &p, &nx, &ny, &nw)) return NULL;
  int layout = 0;
  const float *wp = packed_arg(&a, 1, 2, &p, &layout);
  float *w = f32(&a, 0, nw, 0);
  if (a.failed) return NULL;
  conv2d_unpack_weights(w, wp, layout, &p);
  return undef(env);
}

/* convPackWeights(dst, w, geometry[, blocked[, winograd]]) -> layout, to pass back to conv2d with dst
 * (blocked: for conv2dBlocked, Winograd where the geometry takes it and `winograd`;
 * convPackedLength(geometry, blocked, winograd) floats). */
static napi_value js_conv_pack_weights(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  size_t nx, ny, nw;
  if (!conv_args(env, info, &a, 3, 2, &p, &nx, &ny, &nw)) return NULL;
  const int blocked = opt_flag(&a, 3), wino = opt_flag(&a, 4);
  const long size = packed_floats(&a, 3, &p);
  if (a.failed) return NULL;
  float *dst = f32(&a, 0, (size_t)size, 0);
  const float *w = f32(&a, 1, nw, 0);
  if (a.failed) return NULL;
  napi_value r;
  napi_create_int32(env, blocked ? conv2d_pack_weights_blocked(dst, w, &p, wino) : conv2d_pack_weights(dst, w, &p), &r);
  return r;
}

/* convBlockedOk(geometry, xBlocked[, winograd]): whether conv2dBlocked takes this geometry (with weights packed
 * with the same `winograd`). */
static napi_value js_conv_blocked_ok(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  if (!get_args(env, info, &a, 2) || !conv_geom(&a, 0, &p)) return NULL;
  int xb = flag(&a, 1), wino = opt_flag(&a, 2);
  if (a.failed) return NULL;
  napi_value r;
  napi_get_boolean(env, conv2d_blocked_ok(&p, xb, wino), &r);
  return r;
}

/* conv2dBlocked(y, x, bias, residual, relu, geometry, packed, layout, xBlocked): blocked output
 * (NCHW16c), input blocked or NCHW; bias and residual may be null. */
static napi_value js_conv2d_blocked(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  size_t nx, ny, nw;
  if (!conv_args(env, info, &a, 9, 5, &p, &nx, &ny, &nw)) return NULL;
  int layout = 0;
  const float *wp = packed_arg(&a, 6, 7, &p, &layout);
  int relu = flag(&a, 4), xb = flag(&a, 8);
  if (a.failed) return NULL;
  /* blocked buffers carry the zero border (conv.h) */
  ny = SZ(p.n) * p.cout * (p.oh + 2 * CONV_BLK_BORDER) * (p.ow + 2 * CONV_BLK_BORDER);
  if (xb) nx = SZ(p.n) * p.cin * (p.h + 2 * CONV_BLK_BORDER) * (p.w + 2 * CONV_BLK_BORDER);
  float *y = f32(&a, 0, ny, 0);
  const float *x = f32(&a, 1, nx, 0), *b = f32(&a, 2, p.cout, 1), *res = f32(&a, 3, ny, 1);
  if (a.failed) return NULL;
  if (conv2d_forward_blocked(y, x, wp, layout, b, res, relu, &p, xb) != 0) {
    fail(&a, "native: this convolution cannot run on blocked activations (see convBlockedOk) or its weights are not packed for it");
    return NULL;
  }
  return undef(env);
}

static napi_value js_conv2d_bwd_input(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  size_t nx, ny, nw;
  if (!conv_args(env, info, &a, 4, 3, &p, &nx, &ny, &nw)) return NULL;
  float *dx = f32(&a, 0, nx, 0);
  const float *dy = f32(&a, 1, ny, 0), *w = f32(&a, 2, nw, 0);
  const float *addend = a.argc > 4 && !absent(&a, 4) ? f32(&a, 4, nx, 0) : NULL; /* optional: dx = ... + addend */
  if (a.failed) return NULL;
  conv2d_backward_input_add(dx, dy, w, &p, addend);
  return undef(env);
}

/* conv2dBackwardWeight(dw, x, dy, p, scale?, shift?): with scale and shift, the input is
 * relu(x * scale[c] + shift[c]) (conv.h: conv2d_backward_weight_pre) */
static napi_value js_conv2d_bwd_weight(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  size_t nx, ny, nw;
  if (!conv_args(env, info, &a, 4, 3, &p, &nx, &ny, &nw)) return NULL;
  float *dw = f32(&a, 0, nw, 0);
  const float *x = f32(&a, 1, nx, 0), *dy = f32(&a, 2, ny, 0);
  const float *s = a.argc > 4 && !absent(&a, 4) ? f32(&a, 4, p.cin, 0) : NULL, *t = s ? f32(&a, 5, p.cin, 0) : NULL;
  if (a.failed) return NULL;
  if (s) conv2d_backward_weight_pre(dw, x, dy, s, t, &p);
  else conv2d_backward_weight(dw, x, dy, &p);
  return undef(env);
}

/* conv2dPre(y, x, w, bias|null, scale, shift, p): the convolution of relu(x * scale[c] + shift[c]) */
static napi_value js_conv2d_pre(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  size_t nx, ny, nw;
  if (!conv_args(env, info, &a, 7, 6, &p, &nx, &ny, &nw)) return NULL;
  float *y = f32(&a, 0, ny, 0);
  const float *x = f32(&a, 1, nx, 0), *w = f32(&a, 2, nw, 0), *b = f32(&a, 3, p.cout, 1);
  const float *s = f32(&a, 4, p.cin, 0), *t = f32(&a, 5, p.cin, 0);
  if (a.failed) return NULL;
  conv2d_forward_pre(y, x, w, b, s, t, &p);
  return undef(env);
}

/* conv2dReadsPre(p): whether the prologue is applied while the input is read */
static napi_value js_conv2d_reads_pre(napi_env env, napi_callback_info info) {
  args_t a;
  conv_p p;
  size_t nx, ny, nw;
  if (!conv_args(env, info, &a, 1, 0, &p, &nx, &ny, &nw)) return NULL;
  napi_value out;
  napi_get_boolean(env, conv2d_reads_pre(&p) != 0, &out);
  return out;
}

/* batchNormStats(mean, invStd, varU, scale, shift, x, gamma|null, beta|null, n, c, hw, eps) */
static napi_value js_bn_stats(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 12)) return NULL;
  int n = (int)num(&a, 8), c = (int)num(&a, 9);
  long hw = (long)num(&a, 10);
  size_t tot = SZ(n) * c * hw;
  float *mean = f32(&a, 0, c, 0), *inv = f32(&a, 1, c, 0), *vu = f32(&a, 2, c, 0), *s = f32(&a, 3, c, 0), *t = f32(&a, 4, c, 0);
  const float *x = f32(&a, 5, tot, 0), *g = f32(&a, 6, c, 1), *b = f32(&a, 7, c, 1);
  float eps = (float)num(&a, 11);
  if (a.failed) return NULL;
  bn_stats(mean, inv, vu, s, t, x, g, b, n, c, hw, eps);
  return undef(env);
}

/* batchNormTrain(y, mean, invStd, varU, x, gamma|null, beta|null, n, c, hw, eps, relu?, residual?, reluBits?):
 * whether reluBits was written */
static napi_value js_bn_train(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 11)) return NULL;
  int n = (int)num(&a, 7), c = (int)num(&a, 8);
  long hw = (long)num(&a, 9);
  size_t tot = SZ(n) * c * hw;
  float *y = f32(&a, 0, tot, 0), *mean = f32(&a, 1, c, 0), *inv = f32(&a, 2, c, 0), *vu = f32(&a, 3, c, 0);
  const float *x = f32(&a, 4, tot, 0), *g = f32(&a, 5, c, 1), *b = f32(&a, 6, c, 1);
  float eps = (float)num(&a, 10);
  int relu = opt_flag(&a, 11);
  const float *res = a.argc > 12 ? f32(&a, 12, tot, 1) : NULL;
  uint16_t *bits = u16_opt(&a, 13, SZ(n) * c * ((hw + 15) / 16));
  if (a.failed) return NULL;
  if (res == y) return fail(&a, "native: batchNormTrain's residual must not be its output"), NULL;
  if (bits && !relu) return fail(&a, "native: batchNormTrain's reluBits needs relu"), NULL;
  napi_value out;
  napi_get_boolean(env, bn_train(y, mean, inv, vu, x, g, b, n, c, hw, eps, relu, res, bits) != 0, &out);
  return out;
}

/* batchNormEval(y, x, rm, rv, gamma|null, beta|null, n, c, hw, eps, relu?) */
static napi_value js_bn_eval(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 10)) return NULL;
  int n = (int)num(&a, 6), c = (int)num(&a, 7);
  long hw = (long)num(&a, 8);
  size_t tot = SZ(n) * c * hw;
  float *y = f32(&a, 0, tot, 0);
  const float *x = f32(&a, 1, tot, 0), *rm = f32(&a, 2, c, 0), *rv = f32(&a, 3, c, 0), *g = f32(&a, 4, c, 1),
              *b = f32(&a, 5, c, 1);
  float eps = (float)num(&a, 9);
  int relu = opt_flag(&a, 10);
  if (a.failed) return NULL;
  bn_eval(y, x, rm, rv, g, b, n, c, hw, eps, relu);
  return undef(env);
}

/* batchNormBackward(dx, dgamma|null, dbeta|null, dy, x, mean, invStd, gamma|null, training, n, c, hw, reluY?, beta?,
 * maskedOut?, reluBits?) */
static napi_value js_bn_backward(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 12)) return NULL;
  int n = (int)num(&a, 9), c = (int)num(&a, 10);
  long hw = (long)num(&a, 11);
  size_t tot = SZ(n) * c * hw;
  float *dx = f32(&a, 0, tot, 0), *dg = f32(&a, 1, c, 1), *db = f32(&a, 2, c, 1);
  const float *dy = f32(&a, 3, tot, 0), *x = f32(&a, 4, tot, 0), *mean = f32(&a, 5, c, 0), *inv = f32(&a, 6, c, 0),
              *g = f32(&a, 7, c, 1);
  int training = flag(&a, 8);
  /* argument 12: the fused relu's output, null (no relu), or true: a fused relu whose output was never
   * stored, recomputed from x (with beta) */
  napi_valuetype t12;
  napi_typeof(env, a.argv[12], &t12);
  const int made_y = t12 == napi_boolean && opt_flag(&a, 12);
  const float *relu_y = t12 == napi_boolean ? NULL : f32(&a, 12, tot, 1);
  /* argument 13 (optional): the forward's beta, which lets the kernel recompute the relu's mask;
   * null: the forward had none; absent (undefined): read relu_y */
  int from_x = 0;
  const float *beta = NULL;
  if (a.argc > 13) {
    napi_valuetype t;
    napi_typeof(env, a.argv[13], &t);
    from_x = t != napi_undefined;
    beta = f32(&a, 13, c, 1);
  }
  if (made_y && !from_x) fail(&a, "native: batchNormBackward's reluY true (recompute) needs beta");
  if (t12 == napi_boolean && !made_y) fail(&a, "native: batchNormBackward's reluY must be a Float32Array, null or true");
  if (made_y) from_x = 2;
  /* argument 14 (optional): where the masked gradient goes too; only with relu_y read (beta absent) */
  float *masked = a.argc > 14 ? f32(&a, 14, tot, 1) : NULL;
  if (masked && (!relu_y || from_x)) fail(&a, "native: batchNormBackward's maskedOut needs reluY and no beta");
  /* argument 15 (optional): the relu's mask bits as batchNormTrain wrote them; with relu_y */
  const uint16_t *bits = u16_opt(&a, 15, SZ(n) * c * ((hw + 15) / 16));
  if (bits && !relu_y) fail(&a, "native: batchNormBackward's reluBits needs reluY");
  if (a.failed) return NULL;
  bn_backward(dx, dg, db, dy, x, mean, inv, g, training, n, c, hw, relu_y, from_x, beta, masked, bits);
  return undef(env);
}

/* elementwise(op, y, a, b|null): 0 relu(y, x) 1 reluBackward(dx, dy, y) 2 add 3 addRelu */
static napi_value js_elementwise(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 3)) return NULL;
  int op = (int)num(&a, 0);
  float *y = f32(&a, 1, 0, 0);
  if (a.failed) return NULL;
  size_t n;
  napi_get_typedarray_info(env, a.argv[1], NULL, &n, NULL, NULL, NULL);
  const float *x = f32(&a, 2, n, 0);
  const float *b = op == 0 ? NULL : (a.argc > 3 ? f32(&a, 3, n, 0) : (fail(&a, "native: missing operand"), NULL));
  if (a.failed) return NULL;
  switch (op) {
    case 0: relu_fwd(y, x, (long)n); break;
    case 1: relu_bwd(y, x, b, (long)n); break;
    case 2: add_fwd(y, x, b, (long)n); break;
    case 3: add_relu_fwd(y, x, b, (long)n); break;
    default: fail(&a, "native: unknown elementwise op"); return NULL;
  }
  return undef(env);
}

/* zeroPadSubsample(y, x, n, cin, h, w, cout, stride, adjoint): the option-A shortcut (ops.h). */
static napi_value js_zero_pad(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 9)) return NULL;
  const int n = (int)num(&a, 2), cin = (int)num(&a, 3), h = (int)num(&a, 4), w = (int)num(&a, 5), cout = (int)num(&a, 6);
  const int stride = (int)num(&a, 7), adj = flag(&a, 8);
  if (a.failed) return NULL;
  if (n < 0 || cin < 0 || h < 0 || w < 0 || cout < cin || stride < 1) return fail(&a, "native: bad zero-pad shortcut geometry"), NULL;
  const size_t ny = SZ(n) * cout * ((h + stride - 1) / stride) * ((w + stride - 1) / stride), nx = SZ(n) * cin * h * w;
  float *y = f32(&a, 0, ny, 0), *x = f32(&a, 1, nx, 0);
  if (a.failed) return NULL;
  zero_pad_subsample(y, x, n, cin, h, w, cout, stride, adj);
  return undef(env);
}

/* cropKernels(dst, src, rows, skh, skw, ky0, kx0, dkh, dkw) */
static napi_value js_crop_kernels(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 9)) return NULL;
  const double rows = num(&a, 2);
  const int skh = (int)num(&a, 3), skw = (int)num(&a, 4), ky0 = (int)num(&a, 5), kx0 = (int)num(&a, 6);
  const int dkh = (int)num(&a, 7), dkw = (int)num(&a, 8);
  if (a.failed) return NULL;
  if (!(rows >= 0 && rows <= 1e15) || skh < 1 || skw < 1 || dkh < 1 || dkw < 1 || ky0 < 0 || kx0 < 0 || ky0 + dkh > skh ||
      kx0 + dkw > skw)
    return fail(&a, "native: bad kernel window"), NULL;
  float *dst = f32(&a, 0, (size_t)rows * dkh * dkw, 0);
  const float *src = f32(&a, 1, (size_t)rows * skh * skw, 0);
  if (a.failed) return NULL;
  conv2d_crop_kernels(dst, src, (long)rows, skh, skw, ky0, kx0, dkh, dkw);
  return undef(env);
}

/* pool geometry Int32Array(14): n c h w kh kw sh sw ph pw dh dw oh ow */
static napi_value js_maxpool(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 4)) return NULL;
  int32_t *g = i32(&a, 3, 14);
  if (!g) return NULL;
  pool_p p;
  memcpy(&p, g, sizeof p);
  size_t ny = SZ(p.n) * p.c * p.oh * p.ow, nx = SZ(p.n) * p.c * p.h * p.w;
  float *y = f32(&a, 0, ny, 0);
  int32_t *am = absent(&a, 1) ? NULL : i32(&a, 1, ny); /* null: no argmax */
  const float *x = f32(&a, 2, nx, 0);
  if (a.failed) return NULL;
  maxpool_fwd(y, am, x, &p);
  return undef(env);
}

/* maxPool2dBlocked(y, x, geometry), avgPoolGlobalBlocked(y, x, n, c, h, w): blocked inputs (with the
 * zero border, conv.h), c a multiple of 16; the average pool writes [n][c]. */
static napi_value js_maxpool_blocked(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 3)) return NULL;
  int32_t *g = i32(&a, 2, 14);
  if (!g) return NULL;
  pool_p p;
  memcpy(&p, g, sizeof p);
  if (p.c % 16 || p.n < 0 || p.c < 0) return fail(&a, "native: blocked max pool needs a multiple of 16 channels"), NULL;
  const int B = CONV_BLK_BORDER;
  size_t ny = SZ(p.n) * p.c * (p.oh + 2 * B) * (p.ow + 2 * B), nx = SZ(p.n) * p.c * (p.h + 2 * B) * (p.w + 2 * B);
  float *y = f32(&a, 0, ny, 0);
  const float *x = f32(&a, 1, nx, 0);
  if (a.failed) return NULL;
  maxpool_fwd_blocked(y, x, &p);
  return undef(env);
}

static napi_value js_avgpool_global_blocked(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 6)) return NULL;
  int n = (int)num(&a, 2), c = (int)num(&a, 3), h = (int)num(&a, 4), w = (int)num(&a, 5);
  if (a.failed) return NULL;
  if (n < 0 || c < 0 || c % 16 || h < 1 || w < 1) return fail(&a, "native: blocked average pool needs a multiple of 16 channels"), NULL;
  float *y = f32(&a, 0, SZ(n) * c, 0);
  const float *x = f32(&a, 1, SZ(n) * c * (h + 2 * CONV_BLK_BORDER) * (w + 2 * CONV_BLK_BORDER), 0);
  if (a.failed) return NULL;
  avgpool_global_blocked(y, x, n, c, h, w);
  return undef(env);
}

static napi_value js_maxpool_bwd(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 4)) return NULL;
  int32_t *g = i32(&a, 3, 14);
  if (!g) return NULL;
  pool_p p;
  memcpy(&p, g, sizeof p);
  size_t ny = SZ(p.n) * p.c * p.oh * p.ow, nx = SZ(p.n) * p.c * p.h * p.w;
  float *dx = f32(&a, 0, nx, 0);
  const float *dy = f32(&a, 1, ny, 0);
  int32_t *am = i32(&a, 2, ny);
  if (a.failed) return NULL;
  for (size_t i = 0; i < ny; i++)
    if (am[i] >= p.h * p.w) return fail(&a, "native: argmax index out of range"), NULL;
  maxpool_bwd(dx, dy, am, &p);
  return undef(env);
}

/* adaptiveAvgPool2d(y, x, n, c, h, w, oh, ow, backward) — backward: (dx, dy, ...) */
static napi_value js_avgpool(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 9)) return NULL;
  int n = (int)num(&a, 2), c = (int)num(&a, 3), h = (int)num(&a, 4), w = (int)num(&a, 5), oh = (int)num(&a, 6),
      ow = (int)num(&a, 7), bwd = flag(&a, 8);
  size_t ni = SZ(n) * c * h * w, no = SZ(n) * c * oh * ow;
  float *out = f32(&a, 0, bwd ? ni : no, 0);
  const float *in = f32(&a, 1, bwd ? no : ni, 0);
  if (a.failed) return NULL;
  if (bwd) adaptive_avgpool_bwd(out, in, n, c, h, w, oh, ow);
  else adaptive_avgpool_fwd(out, in, n, c, h, w, oh, ow);
  return undef(env);
}

/* gemm(c, a, b, m, n, k, transA, transB, alpha, beta) */
static napi_value js_gemm(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 10)) return NULL;
  int m = (int)num(&a, 3), n = (int)num(&a, 4), k = (int)num(&a, 5), ta = flag(&a, 6), tb = flag(&a, 7);
  float alpha = (float)num(&a, 8), beta = (float)num(&a, 9);
  float *c = f32(&a, 0, SZ(m) * n, 0);
  const float *A = f32(&a, 1, SZ(m) * k, 0), *B = f32(&a, 2, SZ(k) * n, 0);
  if (a.failed) return NULL;
  sgemm(ta, tb, m, n, k, alpha, A, ta ? m : k, B, tb ? k : n, beta, c, n);
  return undef(env);
}

/* logSoftmax(y, x, rows, cols, backward, yForBackward) — backward: (dx, dy, rows, cols, 1, y) */
static napi_value js_log_softmax(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 5)) return NULL;
  int rows = (int)num(&a, 2), cols = (int)num(&a, 3), bwd = flag(&a, 4);
  size_t tot = SZ(rows) * cols;
  float *out = f32(&a, 0, tot, 0);
  const float *in = f32(&a, 1, tot, 0);
  const float *y = bwd ? (a.argc > 5 ? f32(&a, 5, tot, 0) : (fail(&a, "native: missing y"), NULL)) : NULL;
  if (a.failed) return NULL;
  if (bwd) log_softmax_bwd(out, in, y, rows, cols);
  else log_softmax_fwd(out, in, rows, cols);
  return undef(env);
}

/* sgdStep(param, grad, buf|null, lr, momentum, dampening, weightDecay, nesterov, firstStep
 *         [, cropDst|null, rows, skh, skw, ky0, kx0, kh, kw]) */
static napi_value js_sgd(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 9)) return NULL;
  float *param = f32(&a, 0, 0, 0);
  if (a.failed) return NULL;
  size_t n;
  napi_get_typedarray_info(env, a.argv[0], NULL, &n, NULL, NULL, NULL);
  const float *grad = f32(&a, 1, n, 0);
  float *buf = f32(&a, 2, n, 1);
  float lr = (float)num(&a, 3), mom = (float)num(&a, 4), damp = (float)num(&a, 5), wd = (float)num(&a, 6);
  int nest = flag(&a, 7), first = flag(&a, 8);
  if (a.failed) return NULL;
  sgd_crop crop;
  const sgd_crop *cp = NULL;
  if (a.argc > 9) {
    napi_valuetype t;
    napi_typeof(env, a.argv[9], &t);
    if (t != napi_null && t != napi_undefined) {
      if (a.argc < 17) return fail(&a, "native: sgdStep's window needs rows, skh, skw, ky0, kx0, kh, kw"), NULL;
      const double rows = num(&a, 10);
      crop.skh = (int)num(&a, 11), crop.skw = (int)num(&a, 12), crop.ky0 = (int)num(&a, 13), crop.kx0 = (int)num(&a, 14);
      crop.dkh = (int)num(&a, 15), crop.dkw = (int)num(&a, 16);
      if (a.failed) return NULL;
      if (!(rows >= 0) || crop.skh < 1 || crop.skw < 1 || crop.dkh < 1 || crop.dkw < 1 || crop.ky0 < 0 || crop.kx0 < 0 ||
          crop.ky0 + crop.dkh > crop.skh || crop.kx0 + crop.dkw > crop.skw || rows * crop.skh * crop.skw != (double)n)
        return fail(&a, "native: sgdStep's window does not fit the parameter"), NULL;
      crop.rows = (long)rows;
      crop.dst = f32(&a, 9, SZ(crop.rows) * crop.dkh * crop.dkw, 0);
      if (a.failed) return NULL;
      cp = &crop;
    }
  }
  sgd_step(param, grad, buf, (long)n, lr, mom, damp, wd, nest, first, cp);
  return undef(env);
}

static napi_value js_set_threads(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 1)) return NULL;
  int n = (int)num(&a, 0);
  if (a.failed) return NULL;
  pool_set_threads(n);
  return undef(env);
}

static napi_value js_get_threads(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_int32(env, pool_threads(), &v);
  return v;
}

static napi_value js_handoff_ns(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_double(env, pool_handoff_ns(), &v);
  return v;
}

static napi_value js_l2_bytes(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_double(env, (double)l2_bytes(), &v);
  return v;
}

static napi_value js_isa(napi_env env, napi_callback_info info) {
  args_t a;
  napi_value v;
  const char *name;
  get_args(env, info, &a, 0);
  if (a.argc >= 1) {
    int which = (int)num(&a, 0);
    if (a.failed) return NULL;
    name = sgemm_force_isa(which);
  } else {
    name = sgemm_isa();
  }
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &v);
  return v;
}

/* Node allocates ArrayBuffer memory with malloc/calloc. glibc serves blocks above its mmap threshold
 * (128 KB, adapted up to 32 MB) with fresh mmaps and unmaps them on free, and returns the top of the
 * heap to the system past its trim threshold: every step of a training loop then touches new pages
 * (about 6,700 page faults and 25 ms of system time per ResNet-20 step at batch 128). With both
 * thresholds raised, freed activations are reused without faults; the price is that freed memory
 * stays with the process (its high-water mark) instead of going back to the system.
 * RESNET_MALLOC_TUNE=0 keeps glibc's defaults. */
static void tune_malloc(void) {
#if defined(__GLIBC__)
  const char *e = getenv("RESNET_MALLOC_TUNE");
  if (e && strcmp(e, "0") == 0) return;
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

/* Large float buffers on memory of their own (map_large, pool.c: 2 MB-aligned, advised for
 * transparent huge pages where THP is "madvise", zero-filled), unmapped by the ArrayBuffer's
 * finalizer. Every kernel streams its large buffers whole, and on 4 KB pages a stream costs a page
 * walk every 64 lines (whole process on huge pages through glibc's tunable, Intel VM: ResNet-20
 * training and ResNet-50 batch 8 step minima 3-6 % lower). For buffers that live long (parameters,
 * optimizer state, the inference plan's): Node runs the finalizers only when the event loop turns,
 * so short-lived ones would stay mapped through a synchronous loop (src/tensor/alloc.ts). Returns
 * null where it cannot or should not (no mmap, a runtime that refuses external buffers, or past the
 * budget below): the caller allocates as usual. */
/* What allocLarge has mapped and not yet seen finalized, across threads (workers have their own
 * envs). Past LARGE_BUDGET it declines: buffers dropped inside a synchronous loop wait for the event
 * loop to be unmapped, and without a bound such a loop (a plan compiled per image) would map memory
 * without end; past the bound it gets Node's memory, which the collector frees as it goes. */
#define LARGE_BUDGET ((size_t)1 << 30)
static _Atomic size_t large_live = 0;
static void large_free(napi_env env, void *data, void *hint) {
  const size_t len = (size_t)(uintptr_t)hint;
  unmap_large(data, len);
  large_live -= len;
  int64_t total;
  napi_adjust_external_memory(env, -(int64_t)len, &total);
}
static napi_value js_alloc_large(napi_env env, napi_callback_info info) {
  args_t a;
  if (!get_args(env, info, &a, 1)) return NULL;
  const double bytes = num(&a, 0);
  if (a.failed) return NULL;
  if (!(bytes >= 1 && bytes <= 4503599627370496.0 && bytes == (double)(int64_t)bytes)) {
    napi_throw_range_error(env, NULL, "native: allocLarge wants a positive whole number of bytes");
    return NULL;
  }
  napi_value out;
  napi_get_null(env, &out);
  if (large_live + (size_t)bytes > LARGE_BUDGET) return out;
  size_t len = 0;
  void *p = map_large((size_t)bytes, &len);
  if (!p) return out;
  large_live += len;
  if (napi_create_external_arraybuffer(env, p, (size_t)bytes, large_free, (void *)(uintptr_t)len, &out) != napi_ok) {
    unmap_large(p, len);
    large_live -= len;
    napi_get_null(env, &out);
    return out;
  }
  int64_t total;
  napi_adjust_external_memory(env, (int64_t)len, &total);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  tune_malloc();
  napi_property_descriptor props[] = {
    {"conv2d", NULL, js_conv2d, NULL, NULL, NULL, napi_default, NULL},
    {"convPackedLength", NULL, js_conv_packed_length, NULL, NULL, NULL, napi_default, NULL},
    {"convPackWeights", NULL, js_conv_pack_weights, NULL, NULL, NULL, napi_default, NULL},
    {"convPackLayout", NULL, js_conv_pack_layout, NULL, NULL, NULL, napi_default, NULL},
    {"convUnpackWeights", NULL, js_conv_unpack_weights, NULL, NULL, NULL, napi_default, NULL},
    {"convBlockedOk", NULL, js_conv_blocked_ok, NULL, NULL, NULL, napi_default, NULL},
    {"conv2dBlocked", NULL, js_conv2d_blocked, NULL, NULL, NULL, napi_default, NULL},
    {"maxPool2dBlocked", NULL, js_maxpool_blocked, NULL, NULL, NULL, napi_default, NULL},
    {"avgPoolGlobalBlocked", NULL, js_avgpool_global_blocked, NULL, NULL, NULL, napi_default, NULL},
    {"conv2dBackwardInput", NULL, js_conv2d_bwd_input, NULL, NULL, NULL, napi_default, NULL},
    {"conv2dBackwardWeight", NULL, js_conv2d_bwd_weight, NULL, NULL, NULL, napi_default, NULL},
    {"conv2dPre", NULL, js_conv2d_pre, NULL, NULL, NULL, napi_default, NULL},
    {"conv2dReadsPre", NULL, js_conv2d_reads_pre, NULL, NULL, NULL, napi_default, NULL},
    {"batchNormStats", NULL, js_bn_stats, NULL, NULL, NULL, napi_default, NULL},
    {"batchNormTrain", NULL, js_bn_train, NULL, NULL, NULL, napi_default, NULL},
    {"batchNormEval", NULL, js_bn_eval, NULL, NULL, NULL, napi_default, NULL},
    {"batchNormBackward", NULL, js_bn_backward, NULL, NULL, NULL, napi_default, NULL},
    {"elementwise", NULL, js_elementwise, NULL, NULL, NULL, napi_default, NULL},
    {"zeroPadSubsample", NULL, js_zero_pad, NULL, NULL, NULL, napi_default, NULL},
    {"cropKernels", NULL, js_crop_kernels, NULL, NULL, NULL, napi_default, NULL},
    {"maxPool2d", NULL, js_maxpool, NULL, NULL, NULL, napi_default, NULL},
    {"maxPool2dBackward", NULL, js_maxpool_bwd, NULL, NULL, NULL, napi_default, NULL},
    {"adaptiveAvgPool2d", NULL, js_avgpool, NULL, NULL, NULL, napi_default, NULL},
    {"gemm", NULL, js_gemm, NULL, NULL, NULL, napi_default, NULL},
    {"logSoftmax", NULL, js_log_softmax, NULL, NULL, NULL, napi_default, NULL},
    {"sgdStep", NULL, js_sgd, NULL, NULL, NULL, napi_default, NULL},
    {"setThreads", NULL, js_set_threads, NULL, NULL, NULL, napi_default, NULL},
    {"getThreads", NULL, js_get_threads, NULL, NULL, NULL, napi_default, NULL},
    {"isa", NULL, js_isa, NULL, NULL, NULL, napi_default, NULL},
    {"handoffNs", NULL, js_handoff_ns, NULL, NULL, NULL, napi_default, NULL},
    {"l2Bytes", NULL, js_l2_bytes, NULL, NULL, NULL, napi_default, NULL},
    {"allocLarge", NULL, js_alloc_large, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
