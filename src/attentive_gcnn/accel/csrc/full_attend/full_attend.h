// The fused CPU kernels of the lean full attention (attentive_gcnn/accel/full.py) and of small convs: what each
// source file of this directory exports, and the options that cross the Python boundary (bindings.cpp).
//
// xin [B, Ci * L, Yi, Xi] is the folded conv input (channel-major), bank [Co, |H|, Ci, L, k, k] the transformed
// filters; the intermediate responses are ft[b, o, j, c, l] = xin[b, (c, l)] (*) bank[o, j, c, l], and q = (o, j)
// runs over the Q = Co * |H| filters. No kernel builds ft. Gradients that are not asked for come back undefined.
//
// - lane_conv.cpp: a plain stride-1 conv with few channels, forward and backward.
// - spatial_map.cpp: the spatial attention's map on its own (other strides): the planewise conv over the statistics
//   (sum_c a ft, max_c a ft), its sigmoid and the weighting sum_l sigmoid(logits) summed (optionally subtracted from
//   the plain sum, and scaled), forward and backward.
// - channel_pass.cpp: the forward passes over the responses: the spatial maxima of ft and their arg-maxes; the
//   channel pass (c* of max_c a ft, that maximum, sum_c a ft, and optionally the plain sum sum_{c, l} ft); a whole
//   stride-1 chunk of the layer (the channel pass and, on its tiles, the spatial map); the selected responses
//   a[c*] ft[c*] recomputed from the winning channel's window.
// - backward.cpp: the gradients of the spatial maxima and of the selected responses, and the backward of a whole
//   stride-1 chunk of the layer in one pass.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace attentive_gcnn {

using at::Tensor;
using Maybe = std::optional<Tensor>;

// A stride-1 chunk of the full attention's layer, as attend_forward computes it and attend_backward differentiates
// it: out = scale (plain - sum_l a_x summed) (with_plain) or scale sum_l a_x summed, a_x = sigmoid(planewise conv of
// the statistics, 'same' padding, dilation map_dilation).
struct AttendOptions {
  int64_t padding = 0, dilation = 1;  // the layer's conv (stride 1)
  int64_t map_dilation = 1;           // the spatial map's conv
  bool with_plain = false;            // the output includes the plain sum sum_{c, l} ft
  bool single = false;                // one statistic: the layer has Ci * L = 1, so max_c a ft = sum_c a ft
  double scale = 1.0;                 // the layer's Haar factor
};

// lane_conv.cpp: out[b, o] = sum_i w[o, i] (*) x[b, i], stride 1, padding p in [0, d (k - 1)], dilation d;
// x [B, Ci, Y, X], w [Co, Ci, k, k] -> [B, Co, Yo, Xo].
Tensor lane_conv_forward(const Tensor& x, const Tensor& w, int64_t padding, int64_t dilation);
std::tuple<Tensor, Tensor> lane_conv_backward(const Tensor& grad, const Tensor& x, const Tensor& w, int64_t padding,
                                              int64_t dilation, bool need_x, bool need_w);

// spatial_map.cpp: summed, maximum [B, L * Q, Y, X] (planes l-major; maximum undefined: one statistic), w [L * Q, S,
// k, k], plain [B, Q, Y, X] (undefined: none) -> (out [B, Q, Y, X], a [B, L * Q, Y, X]).
std::tuple<Tensor, Tensor> attention_map_forward(const Tensor& summed, const Maybe& maximum, const Tensor& w,
                                                 const Maybe& plain, int64_t orientations, int64_t dilation,
                                                 double scale);
std::tuple<Tensor, Tensor, Tensor> attention_map_backward(const Tensor& grad_out, const Tensor& summed,
                                                          const Maybe& maximum, const Tensor& a, const Tensor& w,
                                                          int64_t orientations, int64_t dilation, bool with_plain,
                                                          double scale, bool need_x, bool need_w);

// channel_pass.cpp
std::tuple<Tensor, Tensor> spatial_argmax(const Tensor& xin, const Tensor& bank, int64_t stride, int64_t padding,
                                          int64_t dilation);
std::tuple<Tensor, Tensor, Tensor, Tensor> channel_argmax(const Tensor& xin, const Tensor& bank, const Maybe& a,
                                                          int64_t stride, int64_t padding, int64_t dilation,
                                                          bool with_plain);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> attend_forward(const Tensor& xin, const Tensor& bank,
                                                                  const Maybe& a, const Tensor& w_x,
                                                                  const AttendOptions& opt);
Tensor selected_forward(const Tensor& xin, const Tensor& bank, const Maybe& a, const Tensor& channel, int64_t stride,
                        int64_t padding, int64_t dilation);

// backward.cpp
std::tuple<Tensor, Tensor> spatial_max_backward(const Tensor& grad, const Tensor& xin, const Tensor& bank,
                                                const Tensor& pos, int64_t stride, int64_t padding, int64_t dilation,
                                                bool need_x, bool need_w);
std::tuple<Tensor, Tensor, Tensor> selected_backward(const Tensor& grad, const Tensor& xin, const Tensor& bank,
                                                     const Maybe& a, const Tensor& channel, int64_t stride,
                                                     int64_t padding, int64_t dilation, bool need_x, bool need_w,
                                                     bool need_a);
std::tuple<Tensor, Tensor, Tensor, Tensor> attend_backward(const Tensor& grad_out, const Tensor& xin,
                                                           const Tensor& bank, const Maybe& a, const Maybe& channel,
                                                           const Tensor& summed, const Maybe& maximum,
                                                           const Tensor& a_x, const Tensor& w_x,
                                                           const AttendOptions& opt, bool need_x, bool need_w,
                                                           bool need_a, bool need_w_x);

}  // namespace attentive_gcnn
