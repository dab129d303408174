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
/* Weights packed once for conv2d_forward_packed (inference: per model, not per call), in the layout
 * that the forward pass picks for this geometry (all of conv_p matters, spatial sizes included):
 * conv2d_pack_layout names it, conv2d_packed_size gives its floats, conv2d_pack_weights writes it
 * and returns the layout. conv2d_forward_packed checks the layout it is given; a mismatch (another
 * input size, or the ISA forced since) falls back to the plain weights, unpacking them if need be. */
#define CONV_LAYOUT_PROW 1032   /* pixel-row panels: K x 32 output channels each */
#define CONV_LAYOUT_PROW16 1016 /* pixel-row panels of 16 channels; other values: A-panel height */
int conv2d_pack_layout(const conv_p *p);
long conv2d_packed_size(const conv_p *p);
/* Floats of weights packed in `layout` for this geometry; -1 when the layout cannot hold them. */
long conv2d_layout_size(const conv_p *p, int layout);
int conv2d_pack_weights(float *wp, const float *w, const conv_p *p);
void conv2d_unpack_weights(float *w, const float *wp, int layout, const conv_p *p);
/* As conv2d_forward with the weights given packed (wp, in `layout`); w may then be NULL. */
void conv2d_forward_packed(float *y, const float *x, const float *w, const float *wp, int layout, const float *bias,
                           const float *residual, int relu, const conv_p *p);
/* dx = conv^T(dy, w) (overwrites dx). */
void conv2d_backward_input(float *dx, const float *dy, const float *w, const conv_p *p);
/* dw = sum over batch and pixels of dy x patches (overwrites dw). */
void conv2d_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);
#endif
