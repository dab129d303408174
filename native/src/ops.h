/* The non-convolution kernels of src/kernels/kernels.ts on raw float buffers. */
#ifndef RESNET_OPS_H
#define RESNET_OPS_H
#include <stdint.h>

/* relu: y = relu(batch_norm(x)) in the same pass; residual (may be NULL, not y): batch_norm(x) +
 * residual before the relu (a residual block's join). relu_bits (may be NULL; with relu): the relu's
 * mask, one bit per element (set where y > 0 or NaN: where the gradient passes), (hw + 15) / 16
 * 16-bit words per (image, channel), bit l of word w for element 16 w + l; written only by the AVX-512
 * path (maps of at least 16 pixels), and only for tensors larger than a core's L2 (below it, reading y
 * back is cheap and the bits' stores cost more than they save): returns 1 when written, else 0. */
int bn_train(float *y, float *mean, float *invstd, float *var_unbiased, const float *x, const float *gamma,
             const float *beta, int n, int c, long hw, float eps, int relu, const float *residual, uint16_t *relu_bits);
/* bn_train's statistics without its output: mean, invstd and var_unbiased as bn_train writes them (the
 * same bits), and per channel the scale and shift of its y = x * scale + shift (multiply, then add), so
 * that a consumer may apply the batch norm (and relu) itself while it reads x (conv.h: conv2d_forward_pre). */
void bn_stats(float *mean, float *invstd, float *var_unbiased, float *scale, float *shift, const float *x,
              const float *gamma, const float *beta, int n, int c, long hw, float eps);
/* relu(x * scale[c] + shift[c]) of an [n][c][hw] tensor (multiply, add, then max(0, .) with NaN kept: the
 * batch norm's own operations, the same bits), in a buffer it mallocs (the caller frees it): the input
 * of a batch norm + relu that was never stored, for the paths that read it. */
float *bn_relu_made(const float *x, const float *scale, const float *shift, int n, int c, long hw);
void bn_eval(float *y, const float *x, const float *rm, const float *rv, const float *gamma, const float *beta, int n,
             int c, long hw, float eps, int relu);
/* relu_y (may be NULL): the output of a fused relu; dy is then the gradient of that output. With
 * relu_from_x, beta is the forward's (NULL: none), and the training paths that can recompute the
 * relu's input from x, mean, invstd, gamma and beta with the forward's operations do so instead of
 * reading relu_y (RESNET_BN_READ_MASK set: they read it). relu_from_x = 2 with relu_y NULL: the relu's
 * output was never stored (bn_stats and conv2d_forward_pre): the paths that cannot recompute make it.
 * masked_out (may be NULL; with relu_y and without relu_from_x): also gets the masked gradient, dy where relu_y > 0 (or NaN), else 0, as
 * relu_bwd would write it (a residual join's gradient, which its shortcut needs too). relu_bits (may be
 * NULL; with relu_y): the mask bn_train wrote, which the paths that can read instead of relu_y (1/32 of
 * its bytes). */
void bn_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, const float *mean,
                 const float *invstd, const float *gamma, int training, int n, int c, long hw, const float *relu_y,
                 int relu_from_x, const float *beta, float *masked_out, const uint16_t *relu_bits);

void relu_fwd(float *y, const float *x, long n);
void relu_bwd(float *dx, const float *dy, const float *y, long n);
void add_fwd(float *y, const float *a, const float *b, long n);
void add_relu_fwd(float *y, const float *a, const float *b, long n);

typedef struct {
  int n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
} pool_p;
/* argmax may be NULL (inference): then no indices are written and a faster separable path runs. */
void maxpool_fwd(float *y, int32_t *argmax, const float *x, const pool_p *p);
void maxpool_bwd(float *dx, const float *dy, const int32_t *argmax, const pool_p *p);
/* Max pool and global average pool (to [n][c]) on the inference plan's blocked activations
 * (conv.h: [n][c/16][h+2][w+2][16] with a zero border, c a multiple of 16); the pool writes its
 * output's interior only. */
void maxpool_fwd_blocked(float *y, const float *x, const pool_p *p);
void avgpool_global_blocked(float *y, const float *x, int n, int c, int h, int w);
void adaptive_avgpool_fwd(float *y, const float *x, int n, int c, int h, int w, int oh, int ow);
void adaptive_avgpool_bwd(float *dx, const float *dy, int n, int c, int h, int w, int oh, int ow);

void log_softmax_fwd(float *y, const float *x, int rows, int cols);
void log_softmax_bwd(float *dx, const float *dy, const float *y, int rows, int cols);

/* Rows [r0, r1) of skh x skw kernels cut to the window [ky0, +dkh) x [kx0, +dkw): dst[r][i][j] =
 * src[r][ky0 + i][kx0 + j] (conv2d_crop_kernels and sgd_step's window). */
void crop_kernel_rows(float *dst, const float *src, long r0, long r1, int skh, int skw, int ky0, int kx0, int dkh, int dkw);
/* The window [ky0, +dkh) x [kx0, +dkw) of each of `rows` skh x skw kernels, into dst. */
typedef struct {
  float *dst;
  long rows;
  int skh, skw, ky0, kx0, dkh, dkw;
} sgd_crop;
void sgd_step(float *param, const float *grad, float *buf, long n, float lr, float momentum, float dampening,
              float weight_decay, int nesterov, int first_step, const sgd_crop *crop);
/* The zero-padding shortcut (option A): y[b][c + front][oy][ox] = x[b][c][oy*s][ox*s], zeros in the
 * other channels; adjoint: x (gradient) from y, zeros elsewhere. Both fully written. */
void zero_pad_subsample(float *y, float *x, int n, int cin, int h, int w, int cout, int stride, int adjoint);
#endif
