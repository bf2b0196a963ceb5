// The spatial attention's map of the full attention on its own (the layer's strides other than 1; at stride 1
// attend_forward and attend_backward compute it inside the channel pass): the planewise conv of the statistics,
// where every plane p has its own filter over (sum_c a ft, max_c a ft): logits[b, p] = sum_s w[p, s] (*)
// stat_s[b, p], stride 1, padding d * (k // 2), dilation d; its sigmoid and the weighting sum_l sigmoid(logits)
// summed (optionally subtracted from the plain sum, and scaled), forward and backward, each in one pass.
#include "full_attend.h"
#include "lanes.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

namespace attentive_gcnn {

namespace {

// The planewise conv: P planes of S statistics [B, P, Y, X], w [P, S, k, k], 'same' padding d (k // 2).
struct PlaneGeometry {
  int64_t B, P, Y, X, S, k, d, pad, Yo, Xo;
};

PlaneGeometry planewise_geometry(const std::vector<Tensor>& inputs, const Tensor& w, int64_t dilation) {
  TORCH_CHECK(!inputs.empty(), "planewise conv: no inputs");
  const Tensor& x0 = inputs[0];
  TORCH_CHECK(x0.dim() == 4, "planewise conv: inputs must be [B, P, Y, X]");
  TORCH_CHECK(w.dim() == 4 && w.size(2) == w.size(3), "planewise conv: w must be [P, S, k, k]");
  TORCH_CHECK(w.size(0) == x0.size(1) && w.size(1) == static_cast<int64_t>(inputs.size()),
              "planewise conv: w [P, S, k, k] must match P planes and S inputs");
  TORCH_CHECK(dilation >= 1, "planewise conv: dilation must be positive");
  for (const Tensor& t : inputs) {
    check(t, x0, "planewise conv input");
    TORCH_CHECK(t.sizes() == x0.sizes(), "planewise conv: inputs of different shapes");
  }
  check(w, x0, "planewise conv weight");
  PlaneGeometry g{x0.size(0), x0.size(1), x0.size(2), x0.size(3), w.size(1), w.size(2), dilation, 0, 0, 0};
  g.pad = dilation * (g.k / 2);
  g.Yo = g.Y + 2 * g.pad - dilation * (g.k - 1);
  g.Xo = g.X + 2 * g.pad - dilation * (g.k - 1);
  TORCH_CHECK(g.Yo > 0 && g.Xo > 0, "planewise conv: empty output");
  return g;
}

// The geometry of the spatial map's planewise conv over summed and maximum (undefined: one statistic), which must
// keep the map's size.
PlaneGeometry map_geometry(const Tensor& summed, const Tensor& maximum, const Tensor& w, int64_t dilation) {
  const PlaneGeometry g = maximum.defined() ? planewise_geometry({summed, maximum}, w, dilation)
                                            : planewise_geometry({summed}, w, dilation);
  TORCH_CHECK(g.Yo == g.Y && g.Xo == g.X, "attention map: the spatial kernel must keep the map's size (odd k)");
  return g;
}

}  // namespace

// The spatial attention of the full attention, fused: logits = planewise conv of (summed, maximum) by w (planes
// p = (l, q), l-major, 'same' padding), a = sigmoid(logits), out[b, q] = sum_l a summed. summed, maximum: [B, L * Q,
// Y, X] (maximum may be undefined: one statistic); returns out [B, Q, Y, X] and a [B, L * Q, Y, X]. With plain
// [B, Q, Y, X], out = plain - sum_l a summed; either times scale.
// One task per filter q and block of samples, over l.
std::tuple<Tensor, Tensor> attention_map_forward(const Tensor& summed, const Maybe& maximum_, const Tensor& w,
                                                 const Maybe& plain_, int64_t orientations, int64_t dilation,
                                                 double scale) {
  const int64_t L = orientations;
  const Tensor maximum = maximum_.has_value() && maximum_->defined() ? maximum_->contiguous() : Tensor();
  const bool with_max = maximum.defined();  // else one statistic (w [P, 1, k, k])
  const PlaneGeometry g = map_geometry(summed, maximum, w, dilation);
  const int64_t Q = g.P / L, YX = g.Y * g.X;
  TORCH_CHECK(L >= 1 && L * Q == g.P, "attention map: the planes must be L * Q");
  Tensor out = at::empty({g.B, Q, g.Y, g.X}, summed.options());
  Tensor a = at::empty_like(summed);
  Tensor plain;
  if (plain_.has_value() && plain_->defined()) {
    plain = plain_->contiguous();
    check(plain, summed, "plain");
    TORCH_CHECK(plain.numel() == out.numel(), "attention map: plain must be [B, Q, Y, X]");
  }
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "attention_map_forward", [&] {
    using T = scalar_t;
    using V = typename Simd<T>::V;
    constexpr int n = Simd<T>::n;
    const T *sp = summed.data_ptr<T>(), *mp = with_max ? maximum.data_ptr<T>() : nullptr, *wp = w.data_ptr<T>();
    T *op = out.data_ptr<T>(), *ap = a.data_ptr<T>();
    const int64_t S = g.S;
    const T* pp = plain.defined() ? plain.data_ptr<T>() : nullptr;
    const int R = lane_block(g.X);
    const int64_t blocks = (g.B + n - 1) / n, kk = g.k * g.k;
    const int64_t rows = g.Y + g.d * (g.k - 1), cols = round_up(g.X, R) + g.d * (g.k - 1);
    at::parallel_for(0, Q * blocks, 1, [&](int64_t begin, int64_t end) {
      LaneTiles<T> tiles;
      tiles.shape(S, rows, cols);
      std::vector<T> logits(YX * n), acc(YX * n), pl(pp ? YX * n : 0);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t q = item / blocks, b0 = (item % blocks) * n;
        const int lanes = static_cast<int>(std::min<int64_t>(n, g.B - b0));
        for (int64_t l = 0; l < L; ++l) {
          const int64_t p = l * Q + q, plane = (b0 * g.P + p) * YX, stride_b = g.P * YX;
          tiles.fill(0, sp + plane, stride_b, lanes, g.Y, g.X, g.pad, g.pad);
          if (mp) tiles.fill(1, mp + plane, stride_b, lanes, g.Y, g.X, g.pad, g.pad);
          lane_correlate_any<T>(R, tiles, 0, S, wp + p * S * kk, g.k, g.d, g.pad, g.pad + g.Y, g.Y, g.X,
                                logits.data());
          const T* s = tiles.tile(0);
          for (int64_t y = 0; y < g.Y; ++y) {
            for (int64_t x = 0; x < g.X; ++x) {
              const int64_t i = (y * g.X + x) * n;
              const V av = T(1) / (T(1) + lane_exp<T>(-loadu<V>(logits.data() + i)));
              storeu(logits.data() + i, av);
              const V sv = loadu<V>(s + ((y + g.pad) * cols + x + g.pad) * n);
              storeu(acc.data() + i, l == 0 ? av * sv : loadu<V>(acc.data() + i) + av * sv);
            }
          }
          from_lanes<T>(ap + plane, logits.data(), lanes, YX, stride_b);
        }
        if (pp) {  // scale (plain - sum_l a summed)
          to_lanes<T>(pl.data(), pp + (b0 * Q + q) * YX, Q * YX, lanes, YX);
          for (int64_t i = 0; i < YX * n; i += n)
            storeu(acc.data() + i, (loadu<V>(pl.data() + i) - loadu<V>(acc.data() + i)) * static_cast<T>(scale));
        } else if (scale != 1.0) {
          for (int64_t i = 0; i < YX * n; i += n) storeu(acc.data() + i, loadu<V>(acc.data() + i) * static_cast<T>(scale));
        }
        from_lanes<T>(op + (b0 * Q + q) * YX, acc.data(), lanes, YX, Q * YX);
      }
    });
  });
  return {out, a};
}

// The backward of the spatial attention's map and weighting, fused: with logits = planewise conv of (summed,
// maximum) by w (planes p = (l, q), 'same' padding), a = sigmoid(logits) (saved) and out[b, q] = sum_l a summed,
// given grad_out [B, Q, Y, X]: the logits' gradient g a (1 - a) summed is formed in the lane tiles (never stored),
// and grad_summed = g a + its planewise input gradient, grad_maximum, grad_w. summed, maximum, a: [B, L * Q, Y, X]
// (planes l-major), w [L * Q, 2, k, k]. with_plain: the output was plain - sum_l a summed; scale: it was scaled
// (g = +-scale grad_out).
std::tuple<Tensor, Tensor, Tensor> attention_map_backward(const Tensor& grad_out_, const Tensor& summed,
                                                          const Maybe& maximum_, const Tensor& a, const Tensor& w,
                                                          int64_t orientations, int64_t dilation, bool with_plain,
                                                          double scale, bool need_x, bool need_w) {
  const int64_t L = orientations;
  const Tensor maximum = maximum_.has_value() && maximum_->defined() ? maximum_->contiguous() : Tensor();
  const bool with_max = maximum.defined();  // else one statistic (w [P, 1, k, k])
  const PlaneGeometry g = map_geometry(summed, maximum, w, dilation);
  check(a, summed, "a");
  TORCH_CHECK(a.sizes() == summed.sizes(), "attention map: a must have the shape of summed");
  const Tensor grad_out = grad_out_.contiguous();
  check(grad_out, summed, "grad_out");
  const int64_t Q = g.P / L, YX = g.Y * g.X;
  TORCH_CHECK(L * Q == g.P && grad_out.numel() == g.B * Q * YX, "attention map: grad_out must be [B, Q, Y, X]");
  Tensor grad_summed = need_x ? at::empty_like(summed) : Tensor();
  Tensor grad_maximum = need_x && with_max ? at::empty_like(maximum) : Tensor();
  Tensor grad_w = need_w ? at::empty_like(w) : Tensor();
  if (!need_x && !need_w) return {grad_summed, grad_maximum, grad_w};
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "attention_map_backward", [&] {
    using T = scalar_t;
    using V = typename Simd<T>::V;
    constexpr int n = Simd<T>::n;
    const T *gp = grad_out.data_ptr<T>(), *sp = summed.data_ptr<T>(), *mp = with_max ? maximum.data_ptr<T>() : nullptr;
    const T *ap = a.data_ptr<T>(), *wp = w.data_ptr<T>();
    T* gsp = need_x ? grad_summed.data_ptr<T>() : nullptr;
    T* gmp = need_x && with_max ? grad_maximum.data_ptr<T>() : nullptr;
    T* dwp = need_w ? grad_w.data_ptr<T>() : nullptr;
    const std::array<const T*, 2> in{sp, mp};
    const std::array<T*, 2> gi{gsp, gmp};
    const int64_t kk = g.k * g.k, S = g.S;
    const int64_t dpad = g.d * (g.k - 1) - g.pad;  // the input gradient: correlation with the flipped filters
    const int R = lane_block(g.X);
    const int64_t g_rows = g.Y + g.d * (g.k - 1), g_cols = round_up(g.X, R) + g.d * (g.k - 1);
    const int64_t x_rows = g.Y + g.d * (g.k - 1), x_cols = g.X + g.d * (g.k - 1);
    const T factor = static_cast<T>(with_plain ? -scale : scale);
    // the input gradients for every plane first, then the filter gradient: reading the inputs of a plane right
    // after writing its input gradient, in one pass, was measured 2x slower for shapes whose planes lie a multiple
    // of 4 KiB apart
    for (int pass = need_x ? 0 : 1; pass < (need_w ? 2 : 1); ++pass) {
      at::parallel_for(0, g.P, 1, [&](int64_t begin, int64_t end) {
        LaneTiles<T> lt, xt;
        lt.shape(1, g_rows, g_cols);
        if (pass == 1) xt.shape(S, x_rows, x_cols);
        std::vector<T> buf(pass == 0 ? YX * n : 0), flipped(S * kk), go(YX * n), av(YX * n), sv(YX * n);
        std::vector<V> dW(pass == 1 ? S * kk : 0);
        for (int64_t p = begin; p < end; ++p) {
          flip_filters(flipped.data(), wp + p * S * kk, S, kk);
          std::fill(dW.begin(), dW.end(), V{});
          for (int64_t b0 = 0; b0 < g.B; b0 += n) {
            const int lanes = static_cast<int>(std::min<int64_t>(n, g.B - b0));
            const int64_t plane = (b0 * g.P + p) * YX, stride_b = g.P * YX;
            to_lanes<T>(go.data(), gp + (b0 * Q + p % Q) * YX, Q * YX, lanes, YX);
            if (factor != T(1)) {
              for (int64_t i = 0; i < YX * n; i += n) storeu(go.data() + i, loadu<V>(go.data() + i) * factor);
            }
            to_lanes<T>(av.data(), ap + plane, stride_b, lanes, YX);
            to_lanes<T>(sv.data(), sp + plane, stride_b, lanes, YX);
            logits_grad_tile(lt.tile(0), g_cols, dpad, go.data(), av.data(), sv.data(), g.Y, g.X);
            if (pass == 0) {
              for (int64_t s = 0; s < S; ++s) {
                lane_correlate_any<T>(R, lt, 0, 1, flipped.data() + s * kk, g.k, g.d, dpad, dpad + g.Y, g.Y, g.X,
                                      buf.data());
                if (s == 0) {  // + g a, the weighting's gradient of summed
                  for (int64_t i = 0; i < YX * n; i += n)
                    storeu(buf.data() + i, loadu<V>(buf.data() + i) + loadu<V>(go.data() + i) * loadu<V>(av.data() + i));
                }
                from_lanes<T>(gi[s] + plane, buf.data(), lanes, YX, stride_b);
              }
            } else {
              for (int64_t s = 0; s < S; ++s) xt.fill(s, in[s] + plane, stride_b, lanes, g.Y, g.X, g.pad, g.pad);
              lane_weight_grad_any<T>(xt, S, lt, 0, dpad, dpad, g.k, g.d, g.pad, g.pad + g.Y, g.Y, g.X, dW.data());
            }
          }
          if (pass == 1) {
            for (int64_t i = 0; i < S * kk; ++i) dwp[p * S * kk + i] = hsum<T>(dW[i], n);
          }
        }
      });
    }
  });
  return {grad_summed, grad_maximum, grad_w};
}

}  // namespace attentive_gcnn
