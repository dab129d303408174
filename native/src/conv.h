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
#define CONV_LAYOUT_PLAIN 3000  /* the weights as they are: for the kernels that take plain weights
                                 * (pixels in lanes, Winograd on NCHW: it transforms them per call) */
#define CONV_LAYOUT_W2 4008    /* the AVX2 Winograd F(4x4, 3x3) (conv_wino2.c): G g G^T as its 16-channel
                                 * panels, then the weights as they are */
int conv2d_pack_layout(const conv_p *p);
long conv2d_packed_size(const conv_p *p);
/* Floats of weights packed in `layout` for this geometry; -1 when the layout cannot hold them. */
long conv2d_layout_size(const conv_p *p, int layout);
int conv2d_pack_weights(float *wp, const float *w, const conv_p *p);
void conv2d_unpack_weights(float *w, const float *wp, int layout, const conv_p *p);
/* As conv2d_forward with the weights given packed (wp, in `layout`); w may then be NULL. */
void conv2d_forward_packed(float *y, const float *x, const float *w, const float *wp, int layout, const float *bias,
                           const float *residual, int relu, const conv_p *p);
/* Blocked activations for the inference plan (AVX-512): NCHW16c with a zero border,
 * [n][c/16][h+2][w+2][16], 16 channels of a pixel side by side, so that output tiles store whole
 * vectors (no transposes) and convolutions read contiguous channel groups; the border (which the
 * kernels never write) stands in for padding up to one pixel, so no convolution copies its input
 * into padded planes. The output is always blocked; the input is blocked (x_blocked) or NCHW (the
 * stem).
 * conv2d_blocked_ok: whether this geometry runs so: AVX-512, and either the direct pixel-row path
 * (groups 1, cout a multiple of 16, output width a multiple of 7; for blocked input cin a multiple
 * of 16, padding <= 1, stride 1 or 2 along x) or, with `winograd` and blocked input, Winograd
 * F(2x2, 3x3) / F(4x4, 3x3) (3x3, stride 1, padding 1, whole channel blocks, any map size).
 * Weights are packed once by conv2d_pack_weights_blocked in the layout conv2d_blocked_layout names
 * (CONV_LAYOUT_WINO4 / _WINO2 for the Winograd geometries when `winograd`, else CONV_LAYOUT_PROW; it
 * depends on the kernel geometry and the channel counts, not the input size), of
 * conv2d_layout_size floats; conv2d_unpack_weights reads every layout.
 * conv2d_forward_blocked: y = conv(x) + bias (+ residual, same layout as y, may be y) (then relu),
 * y's interior only; where the fast path does not apply (another ISA forced, say) it converts to
 * NCHW and back (slow, right); -1 (nothing written) when groups != 1, the channel counts are not
 * whole blocks, or the layout is not one of the blocked ones for this geometry. */
#define CONV_BLK_BORDER 1
#define CONV_LAYOUT_WINO2 2032 /* Winograd F(2x2, 3x3): 16 pixel-row packings of G g G^T */
#define CONV_LAYOUT_WINO4 4032 /* Winograd F(4x4, 3x3): 36 of them */
int conv2d_blocked_ok(const conv_p *p, int x_blocked, int winograd);
int conv2d_blocked_layout(const conv_p *p, int winograd);
int conv2d_pack_weights_blocked(float *wp, const float *w, const conv_p *p, int winograd);
int conv2d_forward_blocked(float *y, const float *x, const float *wp, int layout, const float *bias, const float *residual,
                           int relu, const conv_p *p, int x_blocked);
/* dx = conv^T(dy, w) (overwrites dx). */
void conv2d_backward_input(float *dx, const float *dy, const float *w, const conv_p *p);
/* dst[r][i][j] = src[r][ky0 + i][kx0 + j] for rows r of skh x skw kernels, i < dkh, j < dkw. */
void conv2d_crop_kernels(float *dst, const float *src, long rows, int skh, int skw, int ky0, int kx0, int dkh, int dkw);
/* dx = conv^T(dy, w) + addend (addend may be dx itself; NULL: none): autograd's sum for an input used
 * twice (a residual block's), added in the kernels' own epilogue instead of a separate pass. */
void conv2d_backward_input_add(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend);
/* dw = sum over batch and pixels of dy x patches (overwrites dw). */
void conv2d_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);

/* The input prologue: the convolution of relu(x * pre_s[c] + pre_t[c]) (per input channel c; multiply,
 * then add, then max(0, .) with NaN kept: bn_train's own operations, so the same bits as convolving
 * its relu output), forward (+ bias) and weight gradient, for a batch norm + relu whose output is never
 * stored (ops.h: bn_stats). conv2d_reads_pre: whether the path these take applies it while reading x
 * (the NCHW Winograd path's input transforms); elsewhere a pass makes the input first (the same
 * results, one more pass and a buffer). */
int conv2d_reads_pre(const conv_p *p);
void conv2d_forward_pre(float *y, const float *x, const float *w, const float *bias, const float *pre_s, const float *pre_t,
                        const conv_p *p);
void conv2d_backward_weight_pre(float *dw, const float *x, const float *dy, const float *pre_s, const float *pre_t,
                                const conv_p *p);
/* Bytes of one core's L2 cache, read once: RESNET_L2_KB when set (measurements), else what the C
 * library reports (sysconf, from cpuid), else 1 MB; clamped to [256 KB, 16 MB]. Some kernels size
 * their blocking by it (the bench reports it). */
long l2_bytes(void);
#endif
