// The backward of the full attention's fused passes:
//
// - spatial_max_backward: the gradients of the spatial maxima max_xy ft at their arg-maxes (spatial_argmax);
// - selected_backward: the gradients of the selected responses a[c*] ft[c*] (selected_forward);
// - attend_backward: the backward of a stride-1 chunk of the layer (attend_forward) in one pass: the spatial map's
//   and the weighting's, whose gradients of the channel statistics (sum_c a ft, max_c a ft, the plain sum) go on,
//   without leaving the lane tiles, to the gradients of the input, the filters and the channel map.
#include "full_attend.h"
#include "lanes.h"
#include "responses.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace attentive_gcnn {

// The gradients of the spatial maxima s[b, q, c, l] = ft[b, q, c, l] at the flat output position pos[b, q, c, l]
// (from spatial_argmax): grad, pos [B, Co, |H|, Ci, L] -> grad_x [B, Ci * L, Yi, Xi] and grad_w [Co, |H|, Ci, L,
// k, k] (each undefined unless needed). Each statistic sends its gradient to its k x k window and filter only. One
// task per input plane and block of n samples, in lane tiles; each lane (sample) has its own arg-max position.
std::tuple<Tensor, Tensor> spatial_max_backward(const Tensor& grad_, const Tensor& xin, const Tensor& bank,
                                                const Tensor& pos_, int64_t stride, int64_t padding, int64_t dilation,
                                                bool need_x, bool need_w) {
  const ConvGeometry g = conv_geometry(xin, bank, stride, padding, dilation);
  const Tensor grad = grad_.contiguous();
  const Tensor pos = pos_.contiguous();
  check(grad, xin, "grad");
  const int64_t n_stats = g.B * g.Q * g.Ci * g.L, kk = g.k * g.k, CL = g.Ci * g.L;
  TORCH_CHECK(grad.numel() == n_stats, "grad must be [B, Co, |H|, Ci, L]");
  TORCH_CHECK(pos.numel() == n_stats && pos.scalar_type() == at::kInt, "pos must be int32 [B, Co, |H|, Ci, L]");
  TORCH_CHECK(kk <= MAX_TAPS, "spatial_max_backward: filters of at most ", MAX_TAPS, " taps");
  Tensor grad_x = need_x ? at::empty_like(xin) : Tensor();
  Tensor grad_w = need_w ? at::empty_like(bank) : Tensor();
  if (!need_x && !need_w) return {grad_x, grad_w};
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "spatial_max_backward", [&] {
    using T = scalar_t;
    constexpr int n = Simd<T>::n;
    const T *gp = grad.data_ptr<T>(), *xp = xin.data_ptr<T>(), *wp = bank.data_ptr<T>();
    const int32_t* pp = pos.data_ptr<int32_t>();
    const int64_t blocks = (g.B + n - 1) / n, wsize = g.Q * CL * kk;
    // the padded input region a tile must hold: the rows and columns the conv reads, and all of the input
    const int64_t rows = std::max(g.rows, g.pad + g.Yi), cols = std::max(g.cols, g.pad + g.Xi);
    std::vector<int64_t> off(kk);
    for (int64_t t = 0; t < kk; ++t) off[t] = (g.d * (t / g.k) * cols + g.d * (t % g.k)) * n;
    const int threads = at::get_num_threads();
    std::vector<T> partial(need_w ? threads * wsize : 0, T(0));  // per-thread filter gradients
    at::parallel_for(0, blocks * CL, 1, [&](int64_t begin, int64_t end) {
      T* dw = need_w ? partial.data() + at::get_thread_num() * wsize : nullptr;
      LaneTiles<T> xt, dxt;
      if (need_w) xt.shape(1, rows, cols);
      if (need_x) dxt.shape(1, rows, cols);
      std::vector<T> interior(need_x ? g.Yi * g.Xi * n : 0);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b0 = (item / CL) * n, cl = item % CL;
        const int lanes = static_cast<int>(std::min<int64_t>(n, g.B - b0));
        if (need_w) xt.fill(0, xp + (b0 * CL + cl) * g.Yi * g.Xi, CL * g.Yi * g.Xi, lanes, g.Yi, g.Xi, g.pad, g.pad);
        if (need_x) std::fill(dxt.data.begin(), dxt.data.end(), T(0));
        const T* x = need_w ? xt.tile(0) : nullptr;
        T* dx = need_x ? dxt.tile(0) : nullptr;
        for (int64_t q = 0; q < g.Q; ++q) {
          const T* w = wp + (q * CL + cl) * kk;
          T* dwq = need_w ? dw + (q * CL + cl) * kk : nullptr;
          // the filter and its gradient in local arrays (no store to the tiles can alias them: registers)
          T wl[MAX_TAPS], acc[MAX_TAPS];
          for (int64_t t = 0; t < kk; ++t) {
            wl[t] = w[t];
            acc[t] = T(0);
          }
          for (int j = 0; j < lanes; ++j) {
            const int64_t i = ((b0 + j) * g.Q + q) * CL + cl;
            const T gv = gp[i];
            if (gv == T(0)) continue;
            const int64_t p = pp[i], at = ((p / g.Xo) * g.stride * cols + (p % g.Xo) * g.stride) * n + j;
            if (need_x) {
              for (int64_t t = 0; t < kk; ++t) dx[at + off[t]] += gv * wl[t];
            }
            if (need_w) {
              for (int64_t t = 0; t < kk; ++t) acc[t] += gv * x[at + off[t]];
            }
          }
          if (need_w) {
            for (int64_t t = 0; t < kk; ++t) dwq[t] += acc[t];
          }
        }
        if (need_x) {  // the tile's input region -> grad_x (positions the conv never reads keep their zero)
          for (int64_t y = 0; y < g.Yi; ++y)
            std::memcpy(interior.data() + y * g.Xi * n, dx + ((y + g.pad) * cols + g.pad) * n, g.Xi * n * sizeof(T));
          from_lanes<T>(grad_x.data_ptr<T>() + (b0 * CL + cl) * g.Yi * g.Xi, interior.data(), lanes, g.Yi * g.Xi,
                        CL * g.Yi * g.Xi);
        }
      }
    });
    if (need_w) sum_partials<T>(partial, threads, wsize, grad_w.data_ptr<T>());
  });
  return {grad_x, grad_w};
}

std::tuple<Tensor, Tensor, Tensor> selected_backward(const Tensor& grad_, const Tensor& xin, const Tensor& bank,
                                                     const Maybe& a_, const Tensor& channel_, int64_t stride,
                                                     int64_t padding, int64_t dilation, bool need_x, bool need_w,
                                                     bool need_a) {
  const Selected s(xin, bank, a_, channel_, stride, padding, dilation);
  const ConvGeometry& g = s.g;
  const Tensor grad = grad_.contiguous();
  check(grad, xin, "grad");
  TORCH_CHECK(grad.numel() == s.channel.numel(), "grad must be [B, L, Co, |H|, Yo, Xo]");
  need_a = need_a && s.a.defined();
  Tensor grad_x = need_x ? at::empty_like(xin) : Tensor();
  Tensor grad_w = need_w ? at::empty_like(bank) : Tensor();
  Tensor grad_a = need_a ? at::zeros_like(s.a) : Tensor();
  if (!need_x && !need_w && !need_a) return {grad_x, grad_w, grad_a};
  const int64_t kk = s.kk;
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "selected_backward", [&] {
    using T = scalar_t;
    const T *gp = grad.data_ptr<T>(), *xp = xin.data_ptr<T>(), *wp = bank.data_ptr<T>();
    const T* ap = s.a.defined() ? s.a.data_ptr<T>() : nullptr;
    T* gxp = need_x ? grad_x.data_ptr<T>() : nullptr;
    T* gap = need_a ? grad_a.data_ptr<T>() : nullptr;
    const int64_t wsize = g.Q * g.Ci * g.L * kk;
    const int threads = at::get_num_threads();
    std::vector<T> partial(need_w ? threads * wsize : 0, T(0));  // per-thread filter gradients, summed below
    at::parallel_for(0, g.B * g.L, 1, [&](int64_t begin, int64_t end) {
      T* dw = need_w ? partial.data() + at::get_thread_num() * wsize : nullptr;
      PaddedPlanes<T> xs;
      std::vector<T> dx(need_x ? g.Ci * g.rows * g.cols : 0);
      std::vector<const T*> src(g.Ci);
      for (int64_t bl = begin; bl < end; ++bl) {
        const int64_t b = bl / g.L, l = bl % g.L;
        if (need_w || need_a) s.fill(xs, xp, bl, src);
        if (need_x) std::fill(dx.begin(), dx.end(), T(0));
        s.each_position(bl, [&](int64_t i, int64_t q, int64_t c, int64_t at) {
          const int64_t qcl = (q * g.Ci + c) * g.L + l, bqcl = b * g.Q * g.Ci * g.L + qcl;
          const T* w = wp + qcl * kk;
          if (need_a) {  // d a[b, q, c*, l] += grad ft[c*]
            const T* xw = xs.data.data() + at;
            T v = 0;
            for (int64_t t = 0; t < kk; ++t) v += w[t] * xw[s.offsets[t]];
            gap[bqcl] += gp[i] * v;
          }
          const T gv = ap ? gp[i] * ap[bqcl] : gp[i];  // the gradient reaching ft at the winner
          if (gv == T(0) || !(need_x || need_w)) return;
          if (need_x) {
            T* d = dx.data() + at;
            for (int64_t t = 0; t < kk; ++t) d[s.offsets[t]] += gv * w[t];
          }
          if (need_w) {
            const T* xw = xs.data.data() + at;
            T* dwt = dw + qcl * kk;
            for (int64_t t = 0; t < kk; ++t) dwt[t] += gv * xw[s.offsets[t]];
          }
        });
        if (need_x) {  // the padded gradient's interior; inputs the conv never reads get zero
          for (int64_t c = 0; c < g.Ci; ++c) {
            T* out = gxp + ((b * g.Ci + c) * g.L + l) * g.Yi * g.Xi;
            for (int64_t y = 0; y < g.Yi; ++y) {
              for (int64_t x = 0; x < g.Xi; ++x) {
                const int64_t r = y + g.pad, q = x + g.pad;
                out[y * g.Xi + x] = (r < g.rows && q < g.cols) ? dx[(c * g.rows + r) * g.cols + q] : T(0);
              }
            }
          }
        }
      }
    });
    if (need_w) sum_partials<T>(partial, threads, wsize, grad_w.data_ptr<T>());
  });
  return {grad_x, grad_w, grad_a};
}

namespace {

// ---------------------------------------------------------------------------------------------------------------
// The channel statistics' backward (StatsBackward) in batch-minor lane tiles (one sample per vector lane; stride 1).
// For one (l, block of n samples) the inputs of every channel are zero-padded tiles [rows][cols][n]; for each filter
// q and channel c the gradient reaching ft[q, c] at every position p is D = grad_sum + [c* = c] grad_max (a vector
// select), and one pass over the positions accumulates both corr[t] = sum_p D[p] x_c[p + off_t] (per lane, in
// registers) and the input gradient gx_c[p + off_t] += a bank[t] D[p] in the tile. The filter gradient sum_b a corr
// and the gradient of a, sum_t bank corr, are formed from the per-lane correlations.
// ---------------------------------------------------------------------------------------------------------------
// One channel c and one filter q, over all output positions p: with D = grad_sum + [c* = c] grad_max (a vector
// select) and G = grad_plain (PLAIN), corr[t] += D[p] x_c[p + off_t], corrp[t] += G[p] x_c[p + off_t] and, if e is
// not null, e[p] = a D[p] + G[p], the gradient reaching ft[q, c] (row y of the rows [y0, y1) at row y - y0 of e). x: the lane
// tile of channel c; gs, gm, chan, gp: lane tiles [Yo * Xo][n] of filter q (gs or gm null where absent). KK: the
// number of taps at compile time (0: kk at run time).
template <typename T, int KK, bool PLAIN, typename CH>
void lane_stats_pass(const T* x, const T* gs, const T* gm, const CH* chan, const T* gp, int64_t c,
                     typename Simd<T>::V av, const int64_t* off, int64_t kk_rt, int64_t y0, int64_t y1, int64_t Xo,
                     int64_t cols, T* e, int64_t e_cols, typename Simd<T>::V* corr, typename Simd<T>::V* corrp) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  constexpr int n = Simd<T>::n;
  constexpr int K = KK > 0 ? KK : 1;
  const int64_t kk = KK > 0 ? KK : kk_rt;
  typedef CH Won __attribute__((vector_size(n * sizeof(CH))));  // the winning channels of the n lanes
  const Won cv = Won{} + static_cast<CH>(c);
  V acc[K], accp[PLAIN ? K : 1];
  int64_t o[K];
  if constexpr (KK > 0) {
    for (int t = 0; t < KK; ++t) {
      acc[t] = corr[t];
      if constexpr (PLAIN) accp[t] = corrp[t];
      o[t] = off[t];
    }
  }
  const auto gradient = [&](int64_t y, int64_t xo, V& D, V& G) {
    const int64_t p = y * Xo + xo;
    D = gs ? loadu<V>(gs + p * n) : V{};
    if (gm) D += __builtin_convertvector(loadu<Won>(chan + p * n) == cv, I) ? loadu<V>(gm + p * n) : V{};
    G = PLAIN ? loadu<V>(gp + p * n) : V{};
    if (e) storeu(e + ((y - y0) * e_cols + xo) * n, av * D + G);
  };
  constexpr int KS = KK == 9 ? 3 : (KK == 16 ? 4 : 0);  // square filters of KS x KS taps
  if constexpr (KS > 0) {
    if (o[1] == n) {  // dilation 1: a window of KS x KS inputs slides along the row, one new column per position
      const int64_t row = o[KS];  // the offset of the next filter row
      for (int64_t y = y0; y < y1; ++y) {
        const T* base = x + y * cols * n;
        V win[KS][KS];
        for (int ty = 0; ty < KS; ++ty)
          for (int tx = 0; tx + 1 < KS; ++tx) win[ty][tx + 1] = loadu<V>(base + ty * row + tx * n);
        for (int64_t xo = 0; xo < Xo; ++xo) {
          V D, G;
          gradient(y, xo, D, G);
          for (int ty = 0; ty < KS; ++ty) {
            for (int tx = 0; tx + 1 < KS; ++tx) win[ty][tx] = win[ty][tx + 1];
            win[ty][KS - 1] = loadu<V>(base + ty * row + (xo + KS - 1) * n);
          }
          for (int ty = 0; ty < KS; ++ty) {
            for (int tx = 0; tx < KS; ++tx) {
              acc[ty * KS + tx] += D * win[ty][tx];
              if constexpr (PLAIN) accp[ty * KS + tx] += G * win[ty][tx];
            }
          }
        }
      }
      for (int t = 0; t < KK; ++t) {
        corr[t] = acc[t];
        if constexpr (PLAIN) corrp[t] = accp[t];
      }
      return;
    }
  }
  for (int64_t y = y0; y < y1; ++y) {
    for (int64_t xo = 0; xo < Xo; ++xo) {
      const int64_t at = (y * cols + xo) * n;
      V D, G;
      gradient(y, xo, D, G);
      if constexpr (KK > 0) {
#pragma GCC unroll 16
        for (int t = 0; t < KK; ++t) {
          const V xv = loadu<V>(x + at + o[t]);
          acc[t] += D * xv;
          if constexpr (PLAIN) accp[t] += G * xv;
        }
      } else {
        for (int64_t t = 0; t < kk; ++t) {
          const V xv = loadu<V>(x + at + off[t]);
          corr[t] += D * xv;
          if constexpr (PLAIN) corrp[t] += G * xv;
        }
      }
    }
  }
  if constexpr (KK > 0) {
    for (int t = 0; t < KK; ++t) {
      corr[t] = acc[t];
      if constexpr (PLAIN) corrp[t] = accp[t];
    }
  }
}

template <typename T, int KK, typename CH>
void lane_stats_pass_any(bool plain, const T* x, const T* gs, const T* gm, const CH* chan, const T* gp, int64_t c,
                         typename Simd<T>::V av, const int64_t* off, int64_t kk, int64_t y0, int64_t y1, int64_t Xo,
                         int64_t cols, T* e, int64_t e_cols, typename Simd<T>::V* corr, typename Simd<T>::V* corrp) {
  if (plain) {
    lane_stats_pass<T, KK, true, CH>(x, gs, gm, chan, gp, c, av, off, kk, y0, y1, Xo, cols, e, e_cols, corr, corrp);
  } else {
    lane_stats_pass<T, KK, false, CH>(x, gs, gm, chan, gp, c, av, off, kk, y0, y1, Xo, cols, e, e_cols, corr, corrp);
  }
}

// The channel statistics' backward for one geometry, given a source of the gradients reaching them: for every task
// (l, block of n samples) and filter q, fetch(l, b0, lanes, q, gs, gm, gp) fills the lane tiles [Yo * Xo][n] of the
// gradients of sum_c a ft (gs), max_c a ft (gm) and the plain sum (gp) of the planes (l, q) (q for gp) of those
// samples (each pointer null where that statistic is absent); make_fetch() makes one fetch per thread (its own
// scratch). Writes grad_x [B, Ci * L, Yi, Xi] (gxp), grad_w [Co, |H|, Ci, L, k, k] (gwp) and grad_a [B, Co, |H|, Ci,
// L] (gap), each skipped where null. Stride 1.
template <typename T>
struct StatsBackward {
  const ConvGeometry& g;
  const T *xp, *wp, *ap;                  // xin, bank, the channel map (null: none)
  const uint8_t* c8;                      // the winning channels (uint8 or int32; both null without grad_max)
  const int32_t* c32;
  bool with_sum, with_max, with_plain;    // which statistics have a gradient
  T *gxp, *gwp, *gap;                     // outputs (null: not needed)

  template <typename MakeFetch>
  void run(MakeFetch make_fetch) const {
    using V = typename Simd<T>::V;
    constexpr int n = Simd<T>::n;
    const int64_t P = g.Yo * g.Xo, kk = g.k * g.k;
    const bool need_x = gxp != nullptr, need_w = gwp != nullptr;
    const int64_t blocks = (g.B + n - 1) / n, QCL = g.Q * g.Ci * g.L;
    const int64_t rows = g.rows, cols = g.cols;  // of the input tiles (stride 1: Yo + d (k - 1), Xo + d (k - 1))
    const std::vector<int64_t> off = tap_offsets(g, n);
    // per filter q and channel c: one pass over the positions gives the correlations and the gradient e reaching
    // ft[q, c] (into a zero-padded tile), then grad_x_c += e correlated with the flipped filter, over the padded
    // input's rows and columns (one read-modify-write per input position, not one per tap). Filters outermost: the
    // gradient tiles of one filter stay in the cache while the channels go by.
    const int64_t halo = g.d * (g.k - 1), R = lane_block(cols);
    // output rows per strip: one filter's four gradient planes of a strip in about STATS_STRIP_BYTES
    const int64_t strip =
        std::max<int64_t>(1, std::min(g.Yo, STATS_STRIP_BYTES / (4 * g.Xo * n * (int64_t)sizeof(T))));
    const int64_t e_rows = strip + 2 * halo, e_cols = round_up(cols, R) + halo;
    const int threads = at::get_num_threads();
    std::vector<V> partial(need_w ? threads * QCL * kk : 0, V{});  // per-thread filter gradients, lane-wise
    at::parallel_for(0, g.L * blocks, 1, [&](int64_t begin, int64_t end) {
      auto fetch = make_fetch();
      V* dw = need_w ? partial.data() + at::get_thread_num() * QCL * kk : nullptr;
      LaneTiles<T> xt, et;
      if (need_x) et.shape(1, e_rows, e_cols);
      std::vector<T> gs(with_sum ? P * n : 0), gm(with_max ? P * n : 0), gpl(with_plain ? P * n : 0);
      std::vector<T> av(g.Q * g.Ci * n, T(1));
      std::vector<T> gx(need_x ? g.Ci * rows * cols * n : 0), interior(need_x ? g.Yi * g.Xi * n : 0), flipped(kk);
      std::vector<uint8_t> chan8(c8 ? P * n : 0);  // the winning channels as lane tiles, in their own type
      std::vector<int32_t> chan32(c32 ? P * n : 0);
      std::vector<V> corr(g.Ci * kk), corrp(g.Ci * kk);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t l = item / blocks, b0 = (item % blocks) * n;
        const int lanes = static_cast<int>(std::min<int64_t>(n, g.B - b0));
        fill_input_tiles(xt, xp, g, l, b0, lanes);
        if (ap) {  // av[q, c] = a[b0 + j, q, c, l] over the lanes j
          for (int j = 0; j < n; ++j) {
            const T* aj = ap + (b0 + j) * QCL + l;
            for (int64_t qc = 0; qc < g.Q * g.Ci; ++qc) av[qc * n + j] = j < lanes ? aj[qc * g.L] : T(0);
          }
        }
        std::fill(gx.begin(), gx.end(), T(0));
        for (int64_t q = 0; q < g.Q; ++q) {
          const T* gsq = with_sum ? gs.data() : nullptr;
          const T* gmq = with_max ? gm.data() : nullptr;
          const T* gpq = with_plain ? gpl.data() : nullptr;
          fetch(l, b0, lanes, q, const_cast<T*>(gsq), const_cast<T*>(gmq), const_cast<T*>(gpq));
          if (with_max) {
            const int64_t src = (b0 * g.L + l) * g.Q * P + q * P, stride = g.L * g.Q * P;
            if (c8) lanes_in<uint8_t, uint8_t, n>(chan8.data(), c8 + src, stride, lanes, P);
            else lanes_in<int32_t, int32_t, n>(chan32.data(), c32 + src, stride, lanes, P);
          }
          const uint8_t* ch8 = c8 ? chan8.data() : nullptr;
          const int32_t* ch32 = c32 ? chan32.data() : nullptr;
          // output rows in strips: a strip of the filter's gradient tiles stays in the L1 cache while the channels
          // go by; each strip's e rows add their share of grad_x right away (the correlation is linear in e)
          std::fill(corr.begin(), corr.end(), V{});
          std::fill(corrp.begin(), corrp.end(), V{});
          for (int64_t y0 = 0; y0 < g.Yo; y0 += strip) {
            const int64_t y1 = std::min(g.Yo, y0 + strip);
            for (int64_t c = 0; c < g.Ci; ++c) {
              const T* w = wp + ((q * g.Ci + c) * g.L + l) * kk;
              const V a_vec = loadu<V>(av.data() + (q * g.Ci + c) * n);
              T* e = need_x ? et.tile(0) + (halo * e_cols + halo) * n : nullptr;
              const T* x = xt.tile(c);
              V* cr = corr.data() + c * kk;
              V* crp = corrp.data() + c * kk;
              const auto pass = [&](auto* chq) {  // the taps at compile time for 3 x 3 and 4 x 4 filters
                using CH = std::remove_const_t<std::remove_pointer_t<decltype(chq)>>;
                const auto run_taps = [&](auto kk_ct) {
                  lane_stats_pass_any<T, decltype(kk_ct)::value, CH>(with_plain, x, gsq, gmq, chq, gpq, c, a_vec,
                                                                      off.data(), kk, y0, y1, g.Xo, cols, e, e_cols,
                                                                      cr, crp);
                };
                if (kk == 9) run_taps(std::integral_constant<int, 9>{});
                else if (kk == 16) run_taps(std::integral_constant<int, 16>{});
                else run_taps(std::integral_constant<int, 0>{});
              };
              if (ch32) pass(ch32);
              else pass(ch8);
              if (need_x) {  // grad_x rows [y0, y1 + halo) += this strip's e correlated with the flipped filter
                flip_filters(flipped.data(), w, 1, kk);
                lane_correlate_any<T>(static_cast<int>(R), et, 0, 1, flipped.data(), g.k, g.d, halo, halo + y1 - y0,
                                      y1 - y0 + halo, cols, gx.data() + (c * rows + y0) * cols * n, true);
              }
            }
          }
          for (int64_t c = 0; c < g.Ci; ++c) {
            const int64_t qcl = (q * g.Ci + c) * g.L + l;
            const T* w = wp + qcl * kk;
            const V a_vec = loadu<V>(av.data() + (q * g.Ci + c) * n);
            const V* cr = corr.data() + c * kk;
            const V* crp = corrp.data() + c * kk;
            if (need_w) {
              V* d = dw + qcl * kk;
              for (int64_t t = 0; t < kk; ++t) d[t] += (ap ? a_vec * cr[t] : cr[t]) + (with_plain ? crp[t] : V{});
            }
            if (gap) {
              V s = V{};
              for (int64_t t = 0; t < kk; ++t) s += w[t] * cr[t];
              for (int j = 0; j < lanes; ++j) gap[(b0 + j) * QCL + qcl] = s[j];
            }
          }
        }
        if (need_x) {  // the input region of each channel's tile -> grad_x (inputs outside the tile get zero)
          const int64_t yi = std::min(g.Yi, rows - g.pad), xi = std::min(g.Xi, cols - g.pad);
          for (int64_t c = 0; c < g.Ci; ++c) {
            std::fill(interior.begin(), interior.end(), T(0));
            for (int64_t y = 0; y < yi; ++y)
              std::memcpy(interior.data() + y * g.Xi * n, gx.data() + (c * rows * cols + (y + g.pad) * cols + g.pad) * n,
                          xi * n * sizeof(T));
            from_lanes<T>(gxp + (b0 * g.Ci * g.L + c * g.L + l) * g.Yi * g.Xi, interior.data(), lanes, g.Yi * g.Xi,
                          g.Ci * g.L * g.Yi * g.Xi);
          }
        }
      }
    });
    if (need_w) sum_lane_partials<T>(partial, threads, QCL * kk, gwp);
  }
};

// Checks of attend_backward's channel-statistics arguments; returns (a, channel), each undefined
// where absent (channel only needed with a gradient of the maximum).
std::tuple<Tensor, Tensor> stats_inputs(const ConvGeometry& g, const Tensor& xin, const Maybe& a_, const Maybe& channel_,
                                        bool with_max) {
  Tensor channel;
  if (with_max) {
    TORCH_CHECK(channel_.has_value() && channel_->defined(), "the gradient of the maximum needs its channel");
    channel = winning_channels(g, *channel_);
  }
  return {channel_map(g, xin, a_), channel};
}

template <typename T>
StatsBackward<T> stats_backward(const ConvGeometry& g, const Tensor& xin, const Tensor& bank, const Tensor& a,
                                const Tensor& channel, bool with_sum, bool with_max, bool with_plain, Tensor& grad_x,
                                Tensor& grad_w, Tensor& grad_a) {
  const bool c8 = with_max && channel.scalar_type() == at::kByte;
  return StatsBackward<T>{g,
                          xin.data_ptr<T>(),
                          bank.data_ptr<T>(),
                          a.defined() ? a.data_ptr<T>() : nullptr,
                          c8 ? channel.data_ptr<uint8_t>() : nullptr,
                          with_max && !c8 ? channel.data_ptr<int32_t>() : nullptr,
                          with_sum,
                          with_max,
                          with_plain,
                          grad_x.defined() ? grad_x.data_ptr<T>() : nullptr,
                          grad_w.defined() ? grad_w.data_ptr<T>() : nullptr,
                          grad_a.defined() ? grad_a.data_ptr<T>() : nullptr};
}

}  // namespace

// The backward of a chunk of the full attention's layer (stride 1), fused: the spatial attention's map and weighting
// (as attention_map_backward) and the channel statistics (StatsBackward) in one pass, so that the gradients of
// the statistics never leave the lane tiles. With summed = sum_c a ft, maximum = max_c a ft (from channel_argmax,
// [B, L, Co, |H|, Yo, Xo]; maximum undefined: one statistic), a_x = sigmoid(planewise conv of (summed, maximum) by
// w_x [L * Q, S, kx, kx]) (saved) and out = scale (plain - sum_l a_x summed) (with_plain) or scale sum_l a_x summed,
// given grad_out [B, Co, |H|, Yo, Xo]: grad_x [B, Ci * L, Yi, Xi], grad_w [Co, |H|, Ci, L, k, k], grad_a [B, Co, |H|,
// Ci, L] (undefined without a) and grad_w_x (each undefined unless asked for). One task per
// (l, block of samples); the filter gradients are summed over per-thread copies. The options: attend_forward's.
std::tuple<Tensor, Tensor, Tensor, Tensor> attend_backward(const Tensor& grad_out_, const Tensor& xin,
                                                           const Tensor& bank, const Maybe& a_, const Maybe& channel_,
                                                           const Tensor& summed, const Maybe& maximum_,
                                                           const Tensor& a_x, const Tensor& w_x,
                                                           const AttendOptions& opt, bool need_x, bool need_w,
                                                           bool need_a, bool need_w_x) {
  const bool with_plain = opt.with_plain;
  const double scale = opt.scale;
  const ConvGeometry g = conv_geometry(xin, bank, 1, opt.padding, opt.dilation);
  const int64_t P = g.Yo * g.Xo;
  const bool with_max = maximum_.has_value() && maximum_->defined();
  const Tensor maximum = with_max ? maximum_->contiguous() : Tensor();
  const Tensor grad_out = grad_out_.contiguous();
  for (const Tensor* t : {&summed, &a_x}) {
    check(*t, xin, "summed and a_x");
    TORCH_CHECK(t->numel() == g.B * g.L * g.Q * P, "summed, maximum and a_x must be [B, L, Co, |H|, Yo, Xo]");
  }
  if (with_max) {
    check(maximum, xin, "maximum");
    TORCH_CHECK(maximum.numel() == summed.numel(), "summed, maximum and a_x must be [B, L, Co, |H|, Yo, Xo]");
  }
  check(grad_out, xin, "grad_out");
  TORCH_CHECK(grad_out.numel() == g.B * g.Q * P, "grad_out must be [B, Co, |H|, Yo, Xo]");
  const int64_t S = with_max ? 2 : 1;
  TORCH_CHECK(opt.single == !with_max, "attend_backward: one statistic exactly where attend_forward made no maximum");
  check_map_filters(g, xin, w_x, S, opt.map_dilation);
  const auto [a, channel] = stats_inputs(g, xin, a_, channel_, with_max);
  need_a = need_a && a.defined();
  Tensor grad_x = need_x ? at::empty_like(xin) : Tensor();
  Tensor grad_w = need_w ? at::empty_like(bank) : Tensor();
  Tensor grad_a = need_a ? at::empty_like(a) : Tensor();
  Tensor grad_w_x = need_w_x ? at::empty_like(w_x) : Tensor();
  if (!need_x && !need_w && !need_a && !need_w_x) return {grad_x, grad_w, grad_a, grad_w_x};
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "attend_backward", [&] {
    using T = scalar_t;
    using V = typename Simd<T>::V;
    constexpr int n = Simd<T>::n;
    const T *gop = grad_out.data_ptr<T>(), *sp = summed.data_ptr<T>(), *mp = with_max ? maximum.data_ptr<T>() : nullptr;
    const T *axp = a_x.data_ptr<T>(), *wxp = w_x.data_ptr<T>();
    const std::array<const T*, 2> stat{sp, mp};
    const int64_t Y = g.Yo, X = g.Xo, kx = w_x.size(2), kkx = kx * kx, dx = opt.map_dilation, pad = dx * (kx / 2);
    const int Rx = lane_block(X);
    const int64_t l_rows = Y + dx * (kx - 1), l_cols = round_up(X, Rx) + dx * (kx - 1);
    const int64_t s_cols = X + dx * (kx - 1), LQ = g.L * g.Q, stride_b = LQ * P;
    const T factor = static_cast<T>(with_plain ? -scale : scale);
    const int threads = at::get_num_threads();
    std::vector<V> partial_x(need_w_x ? threads * LQ * S * kkx : 0, V{});  // per-thread w_x gradients, lane-wise
    const bool stats_part = need_x || need_w || need_a;
    const auto body = stats_backward<T>(g, xin, bank, a, channel, true, with_max, with_plain, grad_x, grad_w, grad_a);
    const auto make_fetch = [&] {
      // per thread: the padded tile of the logits' gradient, the statistics' tiles, the planes in lanes
      struct Scratch {
        LaneTiles<T> lt, st;
        std::vector<T> go, av, sv, flipped;
        V* dW;
      };
      auto s = std::make_shared<Scratch>();
      s->lt.shape(1, l_rows, l_cols);
      if (need_w_x) s->st.shape(S, l_rows, s_cols);
      s->go.resize(P * n);
      s->av.resize(P * n);
      s->sv.resize(P * n);
      s->flipped.resize(S * kkx);
      s->dW = need_w_x ? partial_x.data() + at::get_thread_num() * LQ * S * kkx : nullptr;
      return [&, s](int64_t l, int64_t b0, int lanes, int64_t q, T* gs, T* gm, T* gp) {
        const int64_t p = l * g.Q + q, plane = (b0 * LQ + p) * P;
        T *go = s->go.data(), *av = s->av.data(), *sv = s->sv.data();
        to_lanes<T>(go, gop + (b0 * g.Q + q) * P, g.Q * P, lanes, P);
        if (gp) {  // the plain sum's gradient: scale grad_out
          for (int64_t i = 0; i < P * n; i += n) storeu(gp + i, loadu<V>(go + i) * static_cast<T>(scale));
        }
        if (factor != T(1)) {
          for (int64_t i = 0; i < P * n; i += n) storeu(go + i, loadu<V>(go + i) * factor);
        }
        to_lanes<T>(av, axp + plane, stride_b, lanes, P);
        to_lanes<T>(sv, sp + plane, stride_b, lanes, P);
        logits_grad_tile(s->lt.tile(0), l_cols, pad, go, av, sv, Y, X);
        if (stats_part) {  // the statistics' gradients: the logits' gradient correlated with the flipped filters
          flip_filters(s->flipped.data(), wxp + p * S * kkx, S, kkx);
          lane_correlate_any<T>(Rx, s->lt, 0, 1, s->flipped.data(), kx, dx, pad, pad + Y, Y, X, gs);
          for (int64_t i = 0; i < P * n; i += n)  // + g a, the weighting's gradient of summed
            storeu(gs + i, loadu<V>(gs + i) + loadu<V>(go + i) * loadu<V>(av + i));
          if (gm) lane_correlate_any<T>(Rx, s->lt, 0, 1, s->flipped.data() + kkx, kx, dx, pad, pad + Y, Y, X, gm);
        }
        if (s->dW) {
          for (int64_t st = 0; st < S; ++st) s->st.fill(st, stat[st] + plane, stride_b, lanes, Y, X, pad, pad);
          lane_weight_grad_any<T>(s->st, S, s->lt, 0, pad, pad, kx, dx, pad, pad + Y, Y, X, s->dW + p * S * kkx);
        }
      };
    };
    if (stats_part) {
      body.run(make_fetch);
    } else {  // only w_x: the same tasks without the statistics' part
      const int64_t blocks = (g.B + n - 1) / n;
      at::parallel_for(0, g.L * blocks, 1, [&](int64_t begin, int64_t end) {
        auto fetch = make_fetch();
        for (int64_t item = begin; item < end; ++item) {
          const int64_t l = item / blocks, b0 = (item % blocks) * n;
          for (int64_t q = 0; q < g.Q; ++q)
            fetch(l, b0, static_cast<int>(std::min<int64_t>(n, g.B - b0)), q, nullptr, nullptr, nullptr);
        }
      });
    }
    if (need_w_x) sum_lane_partials<T>(partial_x, threads, LQ * S * kkx, grad_w_x.data_ptr<T>());
  });
  return {grad_x, grad_w, grad_a, grad_w_x};
}

}  // namespace attentive_gcnn
