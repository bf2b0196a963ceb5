// The forward passes over the intermediate responses ft, in batch-minor lane tiles, without building ft: for one
// (l, block of n samples) the input planes of every channel are zero-padded lane tiles, and each response
// f[q, c](p) = sum_t bank[q, c, l, t] x_c[p s + off_t] is a sum of k^2 scalar-times-vector products over the
// samples; QB filters share each loaded input vector.
//
// - spatial_argmax: max and first arg-max over output positions of every ft[b, o, j, c, l]: [B, Co, |H|, Ci, L];
// - channel_argmax: the channel c* of max_c a[b, o, j, c, l] ft[b, o, j, c, l, y, x], that maximum and the channel
//   sum sum_c a ft, l-major [B, L, Co, |H|, Y', X'], and optionally the plain sum sum_{c, l} ft;
// - attend_forward: a stride-1 chunk of the layer: the channel pass and, on its tiles, the spatial map;
// - selected_forward: a[c*] ft[c*] (max_c a ft) from the winning channel's window (the layer's other strides).
#include "full_attend.h"
#include "lanes.h"
#include "responses.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

namespace attentive_gcnn {

namespace {

// f[qb] = sum_t w[qb][t] x[o_t] for QB filters (KK taps at compile time, or kk at run time if KK = 0).
template <typename T, int KK, int QB>
inline void lane_responses(const T* x, const int64_t* o, const T* const* w, int64_t kk,
                           typename Simd<T>::V* f) {
  using V = typename Simd<T>::V;
  for (int qb = 0; qb < QB; ++qb) f[qb] = V{};
  if constexpr (KK > 0) {
#pragma GCC unroll 16
    for (int t = 0; t < KK; ++t) {
      const V xv = loadu<V>(x + o[t]);
      for (int qb = 0; qb < QB; ++qb) f[qb] += w[qb][t] * xv;
    }
  } else {
    for (int64_t t = 0; t < kk; ++t) {
      const V xv = loadu<V>(x + o[t]);
      for (int qb = 0; qb < QB; ++qb) f[qb] += w[qb][t] * xv;
    }
  }
}

// Channel c: spatial max and first arg-max of f[q0 + qb, c] over all output positions, for QB filters.
template <typename T, int KK, int QB>
void lane_spatial_argmax(const T* x, const int64_t* off, const T* const* w, const ConvGeometry& g,
                         typename Simd<T>::V* best, typename Simd<T>::I* arg) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  using Index = typename Simd<T>::Index;
  constexpr int n = Simd<T>::n;
  int64_t o[KK > 0 ? KK : 1];
  const int64_t* op = off;
  if constexpr (KK > 0) {
    for (int t = 0; t < KK; ++t) o[t] = off[t];
    op = o;
  }
  V m[QB], f[QB];
  I at[QB];
  for (int qb = 0; qb < QB; ++qb) at[qb] = I{};
  lane_responses<T, KK, QB>(x, op, w, g.k * g.k, m);
  for (int64_t y = 0; y < g.Yo; ++y) {
    for (int64_t xo = (y == 0 ? 1 : 0); xo < g.Xo; ++xo) {
      lane_responses<T, KK, QB>(x + (y * g.stride * g.cols + xo * g.stride) * n, op, w, g.k * g.k, f);
      const I here = I{} + static_cast<Index>(y * g.Xo + xo);
      for (int qb = 0; qb < QB; ++qb) {
        const auto up = replaces(f[qb], m[qb]);
        m[qb] = up ? f[qb] : m[qb];
        at[qb] = up ? here : at[qb];
      }
    }
  }
  for (int qb = 0; qb < QB; ++qb) {
    best[qb] = m[qb];
    arg[qb] = at[qb];
  }
}

// Filters q0 ... q0 + QB - 1 at output position p (offset at in the tiles): over the channels, the first arg-max
// c* of g = a f, max_c g and sum_c g (a = av[(q, c)] vectors, or 1 if av is null); and, if plain is not null, the
// plain sum sum_c f added to it.
template <typename T, int KK, int QB>
void lane_channel_argmax(const LaneTiles<T>& xt, const int64_t* off, const T* const* w, int64_t wstride,
                         const typename Simd<T>::V* av, int64_t Ci, int64_t kk, int64_t at,
                         typename Simd<T>::V* sum, typename Simd<T>::V* best, typename Simd<T>::I* arg,
                         typename Simd<T>::V* plain) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  using Index = typename Simd<T>::Index;
  V f[QB], pl[QB];
  const T* wc[QB];
  for (int qb = 0; qb < QB; ++qb) pl[qb] = V{};
  for (int64_t c = 0; c < Ci; ++c) {
    for (int qb = 0; qb < QB; ++qb) wc[qb] = w[qb] + c * wstride;
    lane_responses<T, KK, QB>(xt.tile(c) + at, off, wc, kk, f);
    if (plain) {
      for (int qb = 0; qb < QB; ++qb) pl[qb] += f[qb];
    }
    if (av) {
      for (int qb = 0; qb < QB; ++qb) f[qb] *= av[qb * Ci + c];
    }
    if (c == 0) {
      for (int qb = 0; qb < QB; ++qb) {
        sum[qb] = best[qb] = f[qb];
        arg[qb] = I{};
      }
    } else {
      const I here = I{} + static_cast<Index>(c);
      for (int qb = 0; qb < QB; ++qb) {
        sum[qb] += f[qb];
        const auto up = replaces(f[qb], best[qb]);
        best[qb] = up ? f[qb] : best[qb];
        arg[qb] = up ? here : arg[qb];
      }
    }
  }
  if (plain) {
    for (int qb = 0; qb < QB; ++qb) plain[qb] += pl[qb];
  }
}

// Calls FN<T, KK, QB>(ARGS) with the filter block size QB (1 to 4; KK 9 and 16 take at most 4 and 2) and the
// compile-time tap count KK for 3 x 3 and 4 x 4 filters.
#define BY_TAPS(KK_RT, QB, FN, ...)                                                    \
  do {                                                                               \
    if ((KK_RT) == 9) {                                                              \
      switch (QB) {                                                                  \
        case 4: FN<T, 9, 4>(__VA_ARGS__); break;                                     \
        case 3: FN<T, 9, 3>(__VA_ARGS__); break;                                     \
        case 2: FN<T, 9, 2>(__VA_ARGS__); break;                                     \
        default: FN<T, 9, 1>(__VA_ARGS__); break;                                    \
      }                                                                              \
    } else if ((KK_RT) == 16) {                                                      \
      if ((QB) == 2) FN<T, 16, 2>(__VA_ARGS__); else FN<T, 16, 1>(__VA_ARGS__);      \
    } else {                                                                         \
      FN<T, 0, 1>(__VA_ARGS__);                                                      \
    }                                                                                \
  } while (0)

// The filter block size for KK taps (the most filters whose responses fit the registers beside the inputs).
inline int64_t filter_block(int64_t kk, int64_t max_block) {
  return std::min<int64_t>(kk == 9 ? max_block : (kk == 16 ? 2 : 1), 4);
}

// The channel pass over the responses for one geometry (channel_argmax, attend_forward): one task per block of n
// samples; per l and block of filters, all output positions, whose lane tiles [QB][Yo * Xo][n] (sum_c a ft, max_c a
// ft, c*) go out to summed, maximum and channel [B, L, Co, |H|, Yo, Xo] (each skipped where null) and then to
// use(l, b0, lanes, q0, qb, sum, best) while they are in the cache; the plain sums of the block (lane tiles [Q][Yo *
// Xo][n], if with_plain) go to finish(b0, lanes, plain) at the end of the block. make_use() makes one (use, finish)
// pair per thread.
template <typename T>
struct ChannelPass {
  const ConvGeometry& g;
  const T *xp, *wp, *ap;  // xin, bank, the channel map (null: none)
  T *sp, *mp;             // summed, maximum (null: not written)
  uint8_t* c8;            // the winning channels (uint8 or int32; both null: not written)
  int32_t* c32;
  bool with_plain;

  template <typename MakeUse>
  void run(MakeUse make_use) const {
    using V = typename Simd<T>::V;
    using I = typename Simd<T>::I;
    using Index = typename Simd<T>::Index;
    constexpr int n = Simd<T>::n;
    const int64_t kk = g.k * g.k, P = g.Yo * g.Xo, blocks = (g.B + n - 1) / n, QCL = g.Q * g.Ci * g.L;
    const int64_t QB = filter_block(kk, 4);
    const std::vector<int64_t> off = tap_offsets(g, n);
    // one task per block of samples; within it, per filter block, all output positions, whose outputs go out
    // right away (they stay in the L2 cache, with the input tiles)
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      auto [use, finish] = make_use();
      LaneTiles<T> xt;
      std::vector<V> av(ap ? g.Q * g.Ci : 0);
      std::vector<T> sum(QB * P * n), best(QB * P * n), pl(with_plain ? g.Q * P * n : 0);
      std::vector<I> chan(QB * P);
      std::vector<Index> chan_rows(n * P);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b0 = item * n;
        const int lanes = static_cast<int>(std::min<int64_t>(n, g.B - b0));
        std::fill(pl.begin(), pl.end(), T(0));
        for (int64_t l = 0; l < g.L; ++l) {
          fill_input_tiles(xt, xp, g, l, b0, lanes);
          if (ap) {  // av[q, c] = a[b0 + j, q, c, l] over the lanes j
            for (int j = 0; j < n; ++j) {
              const T* aj = ap + (b0 + j) * QCL + l;
              for (int64_t qc = 0; qc < g.Q * g.Ci; ++qc) av[qc][j] = j < lanes ? aj[qc * g.L] : T(0);
            }
          }
          for (int64_t q0 = 0, qb = 0; q0 < g.Q; q0 += qb) {
            qb = std::min(QB, g.Q - q0);
            const T* w[4];
            for (int i = 0; i < qb; ++i) w[i] = wp + ((q0 + i) * g.Ci * g.L + l) * kk;
            for (int64_t y = 0; y < g.Yo; ++y) {
              for (int64_t xo = 0; xo < g.Xo; ++xo) {
                const int64_t p = y * g.Xo + xo, at = (y * g.stride * g.cols + xo * g.stride) * n;
                V s[4], m[4], ps[4];
                I c[4];
                for (int i = 0; i < qb; ++i) ps[i] = with_plain ? loadu<V>(pl.data() + ((q0 + i) * P + p) * n) : V{};
                BY_TAPS(kk, qb, lane_channel_argmax, xt, off.data(), w, g.L * kk,
                        ap ? av.data() + q0 * g.Ci : nullptr, g.Ci, kk, at, s, m, c, with_plain ? ps : nullptr);
                for (int i = 0; i < qb; ++i) {
                  storeu(sum.data() + (i * P + p) * n, s[i]);
                  storeu(best.data() + (i * P + p) * n, m[i]);
                  chan[i * P + p] = c[i];
                  if (with_plain) storeu(pl.data() + ((q0 + i) * P + p) * n, ps[i]);
                }
              }
            }
            for (int i = 0; i < qb; ++i) {  // lane tiles -> [B, L, Q, Yo, Xo]
              const int64_t out = ((b0 * g.L + l) * g.Q + q0 + i) * P, stride_b = g.L * g.Q * P;
              if (sp) from_lanes<T>(sp + out, sum.data() + i * P * n, lanes, P, stride_b);
              if (mp) from_lanes<T>(mp + out, best.data() + i * P * n, lanes, P, stride_b);
              if (!c8 && !c32) continue;
              // the winning channels: transposed as raw lane bits (Index has the size of T), narrowed per lane
              from_lanes<T>(reinterpret_cast<T*>(chan_rows.data()), reinterpret_cast<const T*>(chan.data()) + i * P * n,
                            lanes, P, P);
              for (int j = 0; j < lanes; ++j) {
                const Index* src_j = chan_rows.data() + j * P;
                if (c8) {
                  uint8_t* dst = c8 + out + j * stride_b;
                  for (int64_t p = 0; p < P; ++p) dst[p] = static_cast<uint8_t>(src_j[p]);
                } else {
                  int32_t* dst = c32 + out + j * stride_b;
                  for (int64_t p = 0; p < P; ++p) dst[p] = static_cast<int32_t>(src_j[p]);
                }
              }
            }
            use(l, b0, lanes, q0, qb, sum.data(), best.data());
          }
        }
        finish(b0, lanes, pl.data());
      }
    });
  }
};

// The outputs of the channel pass: channel [B, L, Co, |H|, Yo, Xo] (uint8 for Ci <= 256, else int32), summed and
// maximum (same shape, float), plain [B, Co, |H|, Yo, Xo] (if with_plain); maximum and channel only if with_max.
std::tuple<Tensor, Tensor, Tensor, Tensor> channel_pass_outputs(const ConvGeometry& g, const Tensor& xin,
                                                                const Tensor& bank, bool with_max, bool with_plain) {
  const std::vector<int64_t> shape{g.B, g.L, bank.size(0), bank.size(1), g.Yo, g.Xo};
  Tensor summed = at::empty(shape, xin.options());
  Tensor maximum = with_max ? at::empty(shape, xin.options()) : Tensor();
  Tensor channel = with_max ? at::empty(shape, xin.options().dtype(g.Ci <= 256 ? at::kByte : at::kInt)) : Tensor();
  Tensor plain = with_plain ? at::empty({g.B, bank.size(0), bank.size(1), g.Yo, g.Xo}, xin.options()) : Tensor();
  return {channel, summed, maximum, plain};
}

template <typename T>
ChannelPass<T> channel_pass(const ConvGeometry& g, const Tensor& xin, const Tensor& bank, const Tensor& a,
                            const Tensor& channel, const Tensor& summed, const Tensor& maximum, bool with_plain) {
  const bool c8 = channel.defined() && channel.scalar_type() == at::kByte;
  return ChannelPass<T>{g,
                        xin.data_ptr<T>(),
                        bank.data_ptr<T>(),
                        a.defined() ? a.data_ptr<T>() : nullptr,
                        summed.data_ptr<T>(),
                        maximum.defined() ? maximum.data_ptr<T>() : nullptr,
                        c8 ? channel.data_ptr<uint8_t>() : nullptr,
                        channel.defined() && !c8 ? channel.data_ptr<int32_t>() : nullptr,
                        with_plain};
}

}  // namespace

// max_{y, x} ft and its first arg-max (flat output position): [B, Co, |H|, Ci, L] each.
std::tuple<Tensor, Tensor> spatial_argmax(const Tensor& xin, const Tensor& bank, int64_t stride, int64_t padding,
                                          int64_t dilation) {
  const ConvGeometry g = conv_geometry(xin, bank, stride, padding, dilation);
  Tensor best = at::empty({g.B, bank.size(0), bank.size(1), g.Ci, g.L}, xin.options());
  Tensor arg = at::empty(best.sizes(), xin.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "spatial_argmax", [&] {
    using T = scalar_t;
    using V = typename Simd<T>::V;
    using I = typename Simd<T>::I;
    constexpr int n = Simd<T>::n;
    const int64_t kk = g.k * g.k, blocks = (g.B + n - 1) / n, CL = g.Ci * g.L, QB = filter_block(kk, 4);
    const std::vector<int64_t> off = tap_offsets(g, n);
    const T* xp = xin.data_ptr<T>();
    const T* wp = bank.data_ptr<T>();
    T* bp = best.data_ptr<T>();
    int32_t* ap = arg.data_ptr<int32_t>();
    at::parallel_for(0, blocks * CL, 1, [&](int64_t begin, int64_t end) {
      LaneTiles<T> xt;
      xt.shape(1, g.rows, g.cols);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b0 = (item / CL) * n, cl = item % CL;
        const int lanes = static_cast<int>(std::min<int64_t>(n, g.B - b0));
        xt.fill(0, xp + (b0 * CL + cl) * g.Yi * g.Xi, CL * g.Yi * g.Xi, lanes, g.Yi, g.Xi, g.pad, g.pad);
        for (int64_t q0 = 0, qb = 0; q0 < g.Q; q0 += qb) {
          qb = std::min(QB, g.Q - q0);
          const T* w[4];
          V m[4];
          I a[4];
          for (int i = 0; i < qb; ++i) w[i] = wp + ((q0 + i) * CL + cl) * kk;
          BY_TAPS(kk, qb, lane_spatial_argmax, xt.tile(0), off.data(), w, g, m, a);
          for (int i = 0; i < qb; ++i) {
            for (int j = 0; j < lanes; ++j) {
              const int64_t at = ((b0 + j) * g.Q + q0 + i) * CL + cl;
              bp[at] = m[i][j];
              ap[at] = static_cast<int32_t>(a[i][j]);
            }
          }
        }
      }
    });
  });
  return {best, arg};
}

// channel [B, L, Co, |H|, Yo, Xo] (uint8 for Ci <= 256, else int32), summed = sum_c a ft and maximum = max_c a ft
// (same shape), and, with_plain, the plain conv sum_{c, l} ft [B, Co, |H|, Yo, Xo] (else undefined). One task per
// block of samples and block of filters, over all l.
std::tuple<Tensor, Tensor, Tensor, Tensor> channel_argmax(const Tensor& xin, const Tensor& bank, const Maybe& a_,
                                                          int64_t stride, int64_t padding, int64_t dilation,
                                                          bool with_plain) {
  const ConvGeometry g = conv_geometry(xin, bank, stride, padding, dilation);
  const Tensor a = channel_map(g, xin, a_);
  auto [channel, summed, maximum, plain] = channel_pass_outputs(g, xin, bank, true, with_plain);
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "channel_argmax", [&] {
    using T = scalar_t;
    constexpr int n = Simd<T>::n;
    const int64_t P = g.Yo * g.Xo;
    T* pp = with_plain ? plain.data_ptr<T>() : nullptr;
    channel_pass<T>(g, xin, bank, a, channel, summed, maximum, with_plain).run([&] {
      const auto use = [](int64_t, int64_t, int, int64_t, int64_t, const T*, const T*) {};
      const auto finish = [&](int64_t b0, int lanes, const T* pl) {
        if (!pp) return;
        for (int64_t q = 0; q < g.Q; ++q) from_lanes<T>(pp + (b0 * g.Q + q) * P, pl + q * P * n, lanes, P, g.Q * P);
      };
      return std::make_pair(use, finish);
    });
  });
  return {channel, summed, maximum, plain};
}

// A chunk of the full attention's layer at stride 1, forward, fused: the channel pass (channel_argmax) and, on its
// lane tiles while they are in the cache, the spatial attention (attention_map_forward): a_x = sigmoid(planewise
// conv of (summed, maximum) by w_x [L * Q, S, kx, kx], 'same' padding, dilation map_dilation) and out = scale (plain -
// sum_l a_x summed) (with_plain) or scale sum_l a_x summed. S = 1 (single): one statistic, summed (the layer's
// max_c is its sum, Ci * L = 1), and maximum and channel are not made. Returns (channel, summed, maximum, a_x
// [B, L, Co, |H|, Yo, Xo], out [B, Co, |H|, Yo, Xo]). The options: see AttendOptions.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> attend_forward(const Tensor& xin, const Tensor& bank,
                                                                  const Maybe& a_, const Tensor& w_x,
                                                                  const AttendOptions& opt) {
  const bool with_plain = opt.with_plain, single = opt.single;
  const double scale = opt.scale;
  const ConvGeometry g = conv_geometry(xin, bank, 1, opt.padding, opt.dilation);
  const Tensor a = channel_map(g, xin, a_);
  TORCH_CHECK(!single || g.Ci * g.L == 1, "attend_forward: one statistic needs one input channel and orientation");
  const int64_t S = single ? 1 : 2;
  check_map_filters(g, xin, w_x, S, opt.map_dilation);
  auto [channel, summed, maximum, plain] = channel_pass_outputs(g, xin, bank, !single, false);
  Tensor a_x = at::empty_like(summed);
  Tensor out = at::empty({g.B, bank.size(0), bank.size(1), g.Yo, g.Xo}, xin.options());
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "attend_forward", [&] {
    using T = scalar_t;
    using V = typename Simd<T>::V;
    constexpr int n = Simd<T>::n;
    const int64_t P = g.Yo * g.Xo, Y = g.Yo, X = g.Xo, kx = w_x.size(2), kkx = kx * kx, dx = opt.map_dilation;
    const int64_t pad = dx * (kx / 2), LQ = g.L * g.Q;
    const int R = lane_block(X);
    const int64_t rows = Y + dx * (kx - 1), cols = round_up(X, R) + dx * (kx - 1);
    const T *wxp = w_x.data_ptr<T>();
    T *axp = a_x.data_ptr<T>(), *op = out.data_ptr<T>();
    channel_pass<T>(g, xin, bank, a, channel, summed, maximum, with_plain).run([&] {
      // per thread: the statistics' padded tiles, the logits, and sum_l a_x summed of every filter of the block
      auto tiles = std::make_shared<LaneTiles<T>>();
      tiles->shape(S, rows, cols);
      auto logits = std::make_shared<std::vector<T>>(P * n);
      auto acc = std::make_shared<std::vector<T>>(g.Q * P * n);
      const auto use = [&, tiles, logits, acc](int64_t l, int64_t b0, int lanes, int64_t q0, int64_t qb,
                                               const T* sum, const T* best) {
        for (int64_t i = 0; i < qb; ++i) {
          const int64_t q = q0 + i, p = l * g.Q + q;
          const std::array<const T*, 2> stat{sum + i * P * n, best + i * P * n};
          for (int64_t s = 0; s < S; ++s) {  // the statistics' planes into the interiors of their padded tiles
            T* t = tiles->tile(s);
            for (int64_t y = 0; y < Y; ++y)
              std::memcpy(t + ((y + pad) * cols + pad) * n, stat[s] + y * X * n, X * n * sizeof(T));
          }
          T* lg = logits->data();
          lane_correlate_any<T>(R, *tiles, 0, S, wxp + p * S * kkx, kx, dx, pad, pad + Y, Y, X, lg);
          T* ac = acc->data() + q * P * n;
          for (int64_t k = 0; k < P * n; k += n) {
            const V av = T(1) / (T(1) + lane_exp<T>(-loadu<V>(lg + k)));
            storeu(lg + k, av);
            const V sv = loadu<V>(stat[0] + k);
            storeu(ac + k, l == 0 ? av * sv : loadu<V>(ac + k) + av * sv);
          }
          from_lanes<T>(axp + (b0 * LQ + p) * P, lg, lanes, P, LQ * P);
        }
      };
      const auto finish = [&, acc](int64_t b0, int lanes, const T* pl) {
        const T sc = static_cast<T>(scale);
        for (int64_t q = 0; q < g.Q; ++q) {
          T* ac = acc->data() + q * P * n;
          for (int64_t k = 0; k < P * n; k += n) {
            const V v = loadu<V>(ac + k);
            storeu(ac + k, (with_plain ? loadu<V>(pl + q * P * n + k) - v : v) * sc);
          }
          from_lanes<T>(op + (b0 * g.Q + q) * P, ac, lanes, P, g.Q * P);
        }
      };
      return std::make_pair(use, finish);
    });
  });
  return {channel, summed, maximum, a_x, out};
}

Tensor selected_forward(const Tensor& xin, const Tensor& bank, const Maybe& a_, const Tensor& channel_,
                        int64_t stride, int64_t padding, int64_t dilation) {
  const Selected s(xin, bank, a_, channel_, stride, padding, dilation);
  const ConvGeometry& g = s.g;
  Tensor out = at::empty({g.B, g.L, bank.size(0), bank.size(1), g.Yo, g.Xo}, xin.options());
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "selected_forward", [&] {
    using T = scalar_t;
    const T *xp = xin.data_ptr<T>(), *wp = bank.data_ptr<T>();
    const T* ap = s.a.defined() ? s.a.data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    at::parallel_for(0, g.B * g.L, 1, [&](int64_t begin, int64_t end) {
      PaddedPlanes<T> xs;
      std::vector<const T*> src(g.Ci);
      for (int64_t bl = begin; bl < end; ++bl) {
        s.fill(xs, xp, bl, src);
        const int64_t b = bl / g.L, l = bl % g.L;
        s.each_position(bl, [&](int64_t i, int64_t q, int64_t c, int64_t at) {
          const T* w = wp + ((q * g.Ci + c) * g.L + l) * s.kk;
          const T* xw = xs.data.data() + at;
          T v = 0;
          for (int64_t t = 0; t < s.kk; ++t) v += w[t] * xw[s.offsets[t]];
          op[i] = ap ? ap[((b * g.Q + q) * g.Ci + c) * g.L + l] * v : v;
        });
      }
    });
  });
  return out;
}

}  // namespace attentive_gcnn
