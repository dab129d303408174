/* 2-D convolution on NCHW float32 tensors: forward (with an optional fused epilogue), and the two
 * backward passes. Geometry as in src/kernels/kernels.ts (Conv2dParams). */
#ifndef RESNET_CONV_H
#define RESNET_CONV_H

typedef struct {
  int n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow;
} conv_p;

/* y = conv(x, w) + bias[co] (+ residual) (then relu). bias/residual may be NULL; y may alias
 * residual. */
void conv2d_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                    const conv_p *p);
/* Weights packed once for conv2d_forward_packed (inference: per model, not per call). The packed
 * buffer holds conv2d_packed_size floats; conv2d_pack_weights returns the panel height it used,
 * which conv2d_forward_packed checks (a mismatch, e.g. after the ISA was forced, falls back to w). */
long conv2d_packed_size(const conv_p *p);
int conv2d_pack_weights(float *wp, const float *w, const conv_p *p);
/* As conv2d_forward with the weights given packed (wp, panel height mr); w may then be NULL. */
void conv2d_forward_packed(float *y, const float *x, const float *w, const float *wp, int mr, const float *bias,
                           const float *residual, int relu, const conv_p *p);
/* dx = conv^T(dy, w) (overwrites dx). */
void conv2d_backward_input(float *dx, const float *dy, const float *w, const conv_p *p);
/* dw = sum over batch and pixels of dy x patches (overwrites dw). */
void conv2d_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);
#endif
