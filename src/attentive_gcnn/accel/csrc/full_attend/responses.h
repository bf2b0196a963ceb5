// The intermediate responses in lane tiles: the conv geometry and the helpers that the forward passes
// (channel_pass.cpp) and their backward (backward.cpp) share.
#pragma once

#include "full_attend.h"
#include "lanes.h"

#include <vector>

namespace attentive_gcnn {

// The geometry of the layer's conv: ft[b, q, c, l, y, x] = sum_t bank[q, c, l, t] xin[b, (c, l), y s + d ty - p,
// x s + d tx - p] (q = (o, j), Q = Co * |H| filters); rows and cols: the padded input the conv reads.
struct ConvGeometry {
  int64_t B, Ci, L, Yi, Xi, Q, k, stride, pad, d, Yo, Xo, rows, cols;
};

inline ConvGeometry conv_geometry(const Tensor& xin, const Tensor& bank, int64_t stride, int64_t padding, int64_t dilation) {
  TORCH_CHECK(xin.dim() == 4, "xin must be [B, Ci * L, Y, X]");
  TORCH_CHECK(bank.dim() == 6 && bank.size(4) == bank.size(5), "bank must be [Co, |H|, Ci, L, k, k]");
  check(xin, xin, "xin");
  check(bank, xin, "bank");
  TORCH_CHECK(xin.size(1) == bank.size(2) * bank.size(3), "xin's channels must be Ci * L of the bank");
  TORCH_CHECK(stride >= 1 && dilation >= 1 && padding >= 0, "bad stride, padding or dilation");
  ConvGeometry g{};
  g.B = xin.size(0);
  g.Ci = bank.size(2);
  g.L = bank.size(3);
  g.Yi = xin.size(2);
  g.Xi = xin.size(3);
  g.Q = bank.size(0) * bank.size(1);
  g.k = bank.size(4);
  g.stride = stride;
  g.pad = padding;
  g.d = dilation;
  g.Yo = (g.Yi + 2 * padding - dilation * (g.k - 1) - 1) / stride + 1;
  g.Xo = (g.Xi + 2 * padding - dilation * (g.k - 1) - 1) / stride + 1;
  TORCH_CHECK(g.Yo > 0 && g.Xo > 0, "empty conv output");
  g.rows = (g.Yo - 1) * stride + dilation * (g.k - 1) + 1;  // the padded input rows and columns the conv reads
  g.cols = (g.Xo - 1) * stride + dilation * (g.k - 1) + 1;
  return g;
}

// The lane tiles of the Ci input planes of (l, samples b0 ... b0 + lanes - 1), zero-padded by g.pad.
template <typename T>
void fill_input_tiles(LaneTiles<T>& xt, const T* xp, const ConvGeometry& g, int64_t l, int64_t b0, int lanes) {
  xt.shape(g.Ci, g.rows, g.cols);
  for (int64_t c = 0; c < g.Ci; ++c)
    xt.fill(c, xp + (b0 * g.Ci * g.L + c * g.L + l) * g.Yi * g.Xi, g.Ci * g.L * g.Yi * g.Xi, lanes, g.Yi, g.Xi,
            g.pad, g.pad);
}

// Each tap's offset in a lane tile of the geometry's columns, in elements.
inline std::vector<int64_t> tap_offsets(const ConvGeometry& g, int n) {
  std::vector<int64_t> off(g.k * g.k);
  for (int64_t t = 0; t < g.k * g.k; ++t) off[t] = (g.d * (t / g.k) * g.cols + g.d * (t % g.k)) * n;
  return off;
}

// The channel map a [B, Co, |H|, Ci, L] (undefined: none), checked and contiguous.
inline Tensor channel_map(const ConvGeometry& g, const Tensor& xin, const Maybe& a_) {
  const Tensor a = a_.has_value() && a_->defined() ? a_->contiguous() : Tensor();
  if (a.defined()) {
    check(a, xin, "a");
    TORCH_CHECK(a.numel() == g.B * g.Q * g.Ci * g.L, "a must be [B, Co, |H|, Ci, L]");
  }
  return a;
}

// The winning channels c* of max_c a ft, [B, L, Co, |H|, Yo, Xo] (uint8 or int32), checked and contiguous.
inline Tensor winning_channels(const ConvGeometry& g, const Tensor& channel_) {
  const Tensor channel = channel_.contiguous();
  TORCH_CHECK(channel.numel() == g.B * g.L * g.Q * g.Yo * g.Xo, "channel must be [B, L, Co, |H|, Yo, Xo]");
  TORCH_CHECK(channel.scalar_type() == at::kByte || channel.scalar_type() == at::kInt,
              "channel must be uint8 or int32");
  return channel;
}

// The spatial map's filters w_x [L * Q, S, k, k] (odd k, S statistics) of a stride-1 chunk of the layer, checked.
inline void check_map_filters(const ConvGeometry& g, const Tensor& xin, const Tensor& w_x, int64_t S,
                              int64_t map_dilation) {
  check(w_x, xin, "w_x");
  TORCH_CHECK(w_x.dim() == 4 && w_x.size(0) == g.L * g.Q && w_x.size(1) == S && w_x.size(2) == w_x.size(3) &&
                  w_x.size(2) % 2 == 1 && map_dilation >= 1,
              "w_x must be [L * Co * |H|, 1 or 2 statistics, k, k] with odd k");
}

// sel[b, l, q, y, x] = a[b, q, c*, l] ft[b, q, c*, l, y, x] (a = 1 if undefined), c* = channel[b, l, q, y, x]:
// max_c a ft, recomputed from the winning channel's k x k window (the SelectedResponses of accel/full.py without
// its stored winner). selected_forward gives sel [B, L, Co, |H|, Yo, Xo]; selected_backward its gradients with respect
// to xin [B, Ci * L, Yi, Xi], bank [Co, |H|, Ci, L, k, k] and a [B, Co, |H|, Ci, L] (each undefined where not
// needed): each output position sends its gradient to the window and filter of its winning channel only.
struct Selected {
  ConvGeometry g;
  Tensor a, channel;
  int64_t P, kk;
  std::vector<int64_t> offsets;  // of the k x k taps in a padded plane

  Selected(const Tensor& xin, const Tensor& bank, const Maybe& a_, const Tensor& channel_, int64_t stride,
           int64_t padding, int64_t dilation)
      : g(conv_geometry(xin, bank, stride, padding, dilation)),
        a(channel_map(g, xin, a_)),
        channel(winning_channels(g, channel_)),
        P(g.Yo * g.Xo),
        kk(g.k * g.k),
        offsets(kk) {
    for (int64_t ty = 0; ty < g.k; ++ty)
      for (int64_t tx = 0; tx < g.k; ++tx) offsets[ty * g.k + tx] = g.d * (ty * g.cols + tx);
    if (channel.scalar_type() == at::kByte)
      c8 = channel.data_ptr<uint8_t>();
    else
      c32 = channel.data_ptr<int32_t>();
  }

  const uint8_t* c8 = nullptr;
  const int32_t* c32 = nullptr;

  int64_t winner(int64_t i) const { return c8 ? c8[i] : c32[i]; }

  // Calls f(i, q, c, at) for every output position i = (b, l, q, y, x) of task bl: its winning channel c and the
  // offset `at` of its window in the padded planes of (b, :, l).
  template <typename F>
  void each_position(int64_t bl, F&& f) const {
    for (int64_t q = 0; q < g.Q; ++q) {
      const int64_t row = (bl * g.Q + q) * P;
      for (int64_t y = 0; y < g.Yo; ++y) {
        for (int64_t x = 0; x < g.Xo; ++x) {
          const int64_t i = row + y * g.Xo + x, c = winner(i);
          f(i, q, c, c * g.rows * g.cols + y * g.stride * g.cols + x * g.stride);
        }
      }
    }
  }

  // Zero-padded copies of the Ci input planes of task bl = (b, l).
  template <typename T>
  void fill(PaddedPlanes<T>& xs, const T* xp, int64_t bl, std::vector<const T*>& src) const {
    const int64_t b = bl / g.L, l = bl % g.L;
    for (int64_t c = 0; c < g.Ci; ++c) src[c] = xp + ((b * g.Ci + c) * g.L + l) * g.Yi * g.Xi;
    xs.fill(src.data(), g.Ci, g.Yi, g.Xi, g.pad, g.pad, g.rows, g.cols);
  }
};

}  // namespace attentive_gcnn
