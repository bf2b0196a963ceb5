// A plain convolution with few channels (the attention maps' convs, a lifting conv on a grey image), stride 1, in
// lane tiles: out[b, o] = sum_i w[o, i] (*) x[b, i], padding p, dilation d; x [B, Ci, Y, X], w [Co, Ci, k, k] ->
// [B, Co, Yo, Xo]. One task per block of samples; the tiles of all input (or gradient) channels are filled once.
#include "full_attend.h"
#include "lanes.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace attentive_gcnn {

namespace {

struct SmallConvGeometry {
  int64_t B, Ci, Y, X, Co, k, p, d, Yo, Xo;
};

SmallConvGeometry small_conv_geometry(const Tensor& x, const Tensor& w, int64_t padding, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4 && w.dim() == 4 && w.size(2) == w.size(3), "lane conv: x [B, Ci, Y, X], w [Co, Ci, k, k]");
  TORCH_CHECK(w.size(1) == x.size(1), "lane conv: w's input channels must be x's");
  TORCH_CHECK(padding >= 0 && dilation >= 1 && padding <= dilation * (w.size(2) - 1),
              "lane conv: padding must be in [0, d (k - 1)], dilation positive");
  check(x, x, "x");
  check(w, x, "w");
  SmallConvGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), padding, dilation, 0, 0};
  g.Yo = g.Y + 2 * g.p - g.d * (g.k - 1);
  g.Xo = g.X + 2 * g.p - g.d * (g.k - 1);
  TORCH_CHECK(g.Yo > 0 && g.Xo > 0, "lane conv: empty output");
  return g;
}

}  // namespace

Tensor lane_conv_forward(const Tensor& x_, const Tensor& w_, int64_t padding, int64_t dilation) {
  const Tensor x = x_.contiguous(), w = w_.contiguous();
  const SmallConvGeometry g = small_conv_geometry(x, w, padding, dilation);
  Tensor out = at::empty({g.B, g.Co, g.Yo, g.Xo}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lane_conv_forward", [&] {
    using T = scalar_t;
    constexpr int n = Simd<T>::n;
    const T *xp = x.data_ptr<T>(), *wp = w.data_ptr<T>();
    T* op = out.data_ptr<T>();
    const int R = lane_block(g.Xo);
    const int64_t kk = g.k * g.k, YX = g.Y * g.X, P = g.Yo * g.Xo, blocks = (g.B + n - 1) / n;
    const int64_t rows = g.Yo + g.d * (g.k - 1), cols = round_up(g.Xo, R) + g.d * (g.k - 1);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      LaneTiles<T> xt;
      xt.shape(g.Ci, rows, cols);
      std::vector<T> buf(P * n);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b0 = item * n;
        const int lanes = static_cast<int>(std::min<int64_t>(n, g.B - b0));
        for (int64_t i = 0; i < g.Ci; ++i) xt.fill(i, xp + (b0 * g.Ci + i) * YX, g.Ci * YX, lanes, g.Y, g.X, g.p, g.p);
        for (int64_t o = 0; o < g.Co; ++o) {
          lane_correlate_any<T>(R, xt, 0, g.Ci, wp + o * g.Ci * kk, g.k, g.d, g.p, g.p + g.Y, g.Yo, g.Xo, buf.data());
          from_lanes<T>(op + (b0 * g.Co + o) * P, buf.data(), lanes, P, g.Co * P);
        }
      }
    });
  });
  return out;
}

// The gradients of lane_conv_forward: grad_x (correlation of the output gradient with the flipped filters) and
// grad_w (each undefined unless asked for).
std::tuple<Tensor, Tensor> lane_conv_backward(const Tensor& grad_, const Tensor& x_, const Tensor& w_, int64_t padding,
                                              int64_t dilation, bool need_x, bool need_w) {
  const Tensor x = x_.contiguous(), w = w_.contiguous(), grad = grad_.contiguous();
  const SmallConvGeometry g = small_conv_geometry(x, w, padding, dilation);
  check(grad, x, "grad");
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({g.B, g.Co, g.Yo, g.Xo}), "lane conv: grad of the wrong shape");
  Tensor grad_x = need_x ? at::empty_like(x) : Tensor();
  Tensor grad_w = need_w ? at::empty_like(w) : Tensor();
  if (!need_x && !need_w) return {grad_x, grad_w};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lane_conv_backward", [&] {
    using T = scalar_t;
    using V = typename Simd<T>::V;
    constexpr int n = Simd<T>::n;
    const T *xp = x.data_ptr<T>(), *wp = w.data_ptr<T>(), *gp = grad.data_ptr<T>();
    const int64_t kk = g.k * g.k, YX = g.Y * g.X, P = g.Yo * g.Xo, blocks = (g.B + n - 1) / n;
    const int64_t dpad = g.d * (g.k - 1) - g.p;  // the output gradient's padding for the input gradient
    const int R = lane_block(g.X);
    const int64_t g_rows = g.Y + g.d * (g.k - 1), g_cols = round_up(g.X, R) + g.d * (g.k - 1);
    const int64_t x_rows = g.Yo + g.d * (g.k - 1), x_cols = g.Xo + g.d * (g.k - 1);
    const int64_t wsize = g.Co * g.Ci * kk;
    std::vector<T> flipped(need_x ? g.Ci * g.Co * kk : 0);  // [i][o][t]: w[o, i] flipped, per input channel
    for (int64_t i = 0; i < g.Ci && need_x; ++i)
      for (int64_t o = 0; o < g.Co; ++o)
        for (int64_t t = 0; t < kk; ++t) flipped[(i * g.Co + o) * kk + t] = wp[(o * g.Ci + i) * kk + kk - 1 - t];
    const int threads = at::get_num_threads();
    std::vector<V> partial(need_w ? threads * wsize : 0, V{});
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      V* dw = need_w ? partial.data() + at::get_thread_num() * wsize : nullptr;
      LaneTiles<T> gt, xt;
      gt.shape(g.Co, g_rows, g_cols);
      if (need_w) xt.shape(g.Ci, x_rows, x_cols);
      std::vector<T> buf(need_x ? YX * n : 0);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b0 = item * n;
        const int lanes = static_cast<int>(std::min<int64_t>(n, g.B - b0));
        for (int64_t o = 0; o < g.Co; ++o) gt.fill(o, gp + (b0 * g.Co + o) * P, g.Co * P, lanes, g.Yo, g.Xo, dpad, dpad);
        if (need_x) {
          for (int64_t i = 0; i < g.Ci; ++i) {
            lane_correlate_any<T>(R, gt, 0, g.Co, flipped.data() + i * g.Co * kk, g.k, g.d, dpad, dpad + g.Yo, g.Y, g.X,
                                  buf.data());
            from_lanes<T>(grad_x.data_ptr<T>() + (b0 * g.Ci + i) * YX, buf.data(), lanes, YX, g.Ci * YX);
          }
        }
        if (need_w) {
          for (int64_t i = 0; i < g.Ci; ++i)
            xt.fill(i, xp + (b0 * g.Ci + i) * YX, g.Ci * YX, lanes, g.Y, g.X, g.p, g.p);
          for (int64_t o = 0; o < g.Co; ++o)
            lane_weight_grad_any<T>(xt, g.Ci, gt, o, dpad, dpad, g.k, g.d, g.p, g.p + g.Y, g.Yo, g.Xo,
                                    dw + o * g.Ci * kk);
        }
      }
    });
    if (need_w) sum_lane_partials<T>(partial, threads, wsize, grad_w.data_ptr<T>());
  });
  return {grad_x, grad_w};
}

}  // namespace attentive_gcnn
