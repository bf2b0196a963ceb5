// Fused CPU kernels of the lean full attention (see attentive_gcnn/nn/attention/lean.py) and of small convs.
//
// - attention_map_forward / attention_map_backward: the spatial-attention conv, where every plane p has its own
//   filter over the statistics (sum_c a ft, max_c a ft): logits[b, p] = sum_s w[p, s] (*) stat_s[b, p], stride 1,
//   padding d * (k // 2), dilation d; its sigmoid and the weighting sum_l sigmoid(logits) summed (optionally
//   subtracted from the plain sum, and scaled), fused.
// - spatial_argmax: max and first arg-max over output positions of every intermediate response
//   ft[b, o, j, c, l] = xin[b, (c, l)] (*) bank[o, j, c, l], without ft: [B, Co, |H|, Ci, L] each;
//   spatial_max_backward: the gradients of that maximum.
// - channel_argmax: the channel c* of max_c a[b, o, j, c, l] ft[b, o, j, c, l, y, x], that maximum and the
//   channel sum sum_c a ft, l-major [B, L, Co, |H|, Y', X'], and optionally the plain sum sum_{c, l} ft;
// - selected_forward / selected_backward: a[c*] ft[c*] (max_c a ft) from the winning channel's window, and its
//   gradients (the stride-2 path);
// - attend_backward: the backward of a chunk of the layer at stride 1 (the spatial attention's map and weighting,
//   and the gradients of sum_c a ft, max_c a ft and the plain sum) in one pass.
// - lane_conv_forward / lane_conv_backward: a plain stride-1 conv with few channels.
//
// xin [B, Ci * L, Yi, Xi] is the folded conv input (channel-major), bank [Co, |H|, Ci, L, k, k]. Most kernels work
// in batch-minor lane tiles (LaneTiles): the planes of a block of samples, transposed so that each vector lane holds
// one sample. The vector code uses GCC vector extensions (64-byte vectors: 16 floats or 8 doubles), which compile
// to whatever SIMD the target has; every kernel is templated on float and double.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using at::Tensor;
using Maybe = std::optional<Tensor>;

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t Index;
  typedef Index I __attribute__((vector_size(64)));
  static constexpr int n = 16;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t Index;
  typedef Index I __attribute__((vector_size(64)));
  static constexpr int n = 8;
};

template <typename V, typename T>
inline V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void storeu(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V, typename T>
inline V splat(T s) {
  return V{} + s;
}

template <typename T, typename V>
inline T hsum(const V& v, int n) {
  T s = 0;
  for (int i = 0; i < n; ++i) s += v[i];
  return s;
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// out[i] = sum over the threads' copies of the lane-wise partial sums, summed over the lanes: partial holds
// `threads` copies of `count` vectors (the per-thread filter gradients of the backward kernels).
template <typename T>
void sum_lane_partials(const std::vector<typename Simd<T>::V>& partial, int threads, int64_t count, T* out) {
  using V = typename Simd<T>::V;
  for (int64_t i = 0; i < count; ++i) {
    V s = V{};
    for (int t = 0; t < threads; ++t) s += partial[t * count + i];
    out[i] = hsum<T>(s, Simd<T>::n);
  }
}

// dst[f][t] = src[f][kk - 1 - t] for `filters` filters of kk taps: the flipped filters of an input gradient.
template <typename T>
void flip_filters(T* dst, const T* src, int64_t filters, int64_t kk) {
  for (int64_t f = 0; f < filters; ++f)
    for (int64_t t = 0; t < kk; ++t) dst[f * kk + t] = src[f * kk + kk - 1 - t];
}

constexpr int64_t MAX_TAPS = 121;
// the rows of StatsBackward's strips: one filter's gradient planes of a strip in this many bytes (measured
// no slower than 16 KiB strips or none)
constexpr int64_t STATS_STRIP_BYTES = 64 * 1024;  // the largest filter some kernels keep in local arrays (11 x 11)

void check(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type(), name,
              " must be a contiguous CPU tensor of the dtype of the input");
}

// ---------------------------------------------------------------------------------------------------------------
// Zero-padded copies of input planes, so that the inner loops of the kernels need no bounds checks.
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
struct PaddedPlanes {
  int64_t rows, cols;  // of one padded plane
  std::vector<T> data;

  // Copy planes in[i] (Y x X) into zero-padded planes whose element (r, q) is in[r - top, q - left]. With
  // same_layout (the previous fill had the same n, Y, X, top, left, rows, cols) only the interior is rewritten.
  void fill(const T* const* in, int64_t n, int64_t Y, int64_t X, int64_t top, int64_t left, int64_t rows_,
            int64_t cols_, bool same_layout = false) {
    TORCH_CHECK(!same_layout || (rows == rows_ && cols == cols_ && static_cast<int64_t>(data.size()) == n * rows * cols),
                "PaddedPlanes: not the previous layout");
    rows = rows_;
    cols = cols_;
    if (!same_layout) data.assign(static_cast<size_t>(n * rows * cols), T(0));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t y = 0; y < Y; ++y) {
        const int64_t r = y + top;
        if (r < 0 || r >= rows) continue;
        const int64_t q0 = std::max<int64_t>(0, -left), q1 = std::min<int64_t>(X, cols - left);
        if (q1 > q0) std::memcpy(&data[(i * rows + r) * cols + q0 + left], in[i] + y * X + q0, (q1 - q0) * sizeof(T));
      }
    }
  }
  const T* plane(int64_t i) const { return data.data() + i * rows * cols; }
};

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


// ---------------------------------------------------------------------------------------------------------------
// Lane transposes: n planes (one per sample) <-> one lane tile [count][n] (position-major, sample-minor). Blocks
// of n positions are transposed in registers, in log2(n) stages of two-input shuffles.
// ---------------------------------------------------------------------------------------------------------------
// Stage with block size h of the transpose: lo (hi) interleaves the even (odd) h-blocks of a and b.
constexpr int shuffle_index(int n, int h, bool hi, int m) {
  const int k = m / h, within = m % h;
  return ((k & ~1) + (hi ? 1 : 0)) * h + within + ((k & 1) ? n : 0);
}

template <typename V, int n, int h, bool hi, size_t... m>
inline V interleave(const V& a, const V& b, std::index_sequence<m...>) {
  return __builtin_shufflevector(a, b, shuffle_index(n, h, hi, static_cast<int>(m))...);
}

// Transposes the n x n matrix whose rows are r[0 .. n - 1], in place.
template <typename V, int n, int h = n / 2>
inline void transpose_rows(V* r) {
  if constexpr (h >= 1) {
    for (int i = 0; i < n; ++i) {
      if (i & h) continue;
      const V lo = interleave<V, n, h, false>(r[i], r[i + h], std::make_index_sequence<n>{});
      const V hi = interleave<V, n, h, true>(r[i], r[i + h], std::make_index_sequence<n>{});
      r[i] = lo;
      r[i + h] = hi;
    }
    transpose_rows<V, n, h / 2>(r);
  }
}

// dst[p * n + j] = src[j * lane_stride + p] for p < count, j < lanes; zero in the lanes j >= lanes.
template <typename T>
void to_lanes(T* dst, const T* src, int64_t lane_stride, int lanes, int64_t count) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n;
  int64_t p0 = 0;
  for (; p0 + n <= count; p0 += n) {
    V r[n];
    for (int j = 0; j < n; ++j) r[j] = j < lanes ? loadu<V>(src + j * lane_stride + p0) : V{};
    transpose_rows<V, n>(r);
    for (int i = 0; i < n; ++i) storeu(dst + (p0 + i) * n, r[i]);
  }
  for (int64_t p = p0; p < count; ++p)
    for (int j = 0; j < n; ++j) dst[p * n + j] = j < lanes ? src[j * lane_stride + p] : T(0);
}

// dst[j * lane_stride + p] = src[p * n + j] for p < count, j < lanes: the inverse of to_lanes.
template <typename T>
void from_lanes(T* dst, const T* src, int lanes, int64_t count, int64_t lane_stride) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n;
  int64_t p0 = 0;
  for (; p0 + n <= count; p0 += n) {
    V r[n];
    for (int i = 0; i < n; ++i) r[i] = loadu<V>(src + (p0 + i) * n);
    transpose_rows<V, n>(r);
    for (int j = 0; j < lanes; ++j) storeu(dst + j * lane_stride + p0, r[j]);
  }
  for (int j = 0; j < lanes; ++j)
    for (int64_t p = p0; p < count; ++p) dst[j * lane_stride + p] = src[p * n + j];
}

// Lane tile [count][n] <- src[j * lane_stride + p] for lanes j < lanes (zero beyond), converting to U.
template <typename U, typename S, int n>
void lanes_in(U* dst, const S* src, int64_t lane_stride, int lanes, int64_t count) {
  for (int j = 0; j < n; ++j) {
    const S* s = src + j * lane_stride;
    if (j < lanes) {
      for (int64_t p = 0; p < count; ++p) dst[p * n + j] = static_cast<U>(s[p]);
    } else {
      for (int64_t p = 0; p < count; ++p) dst[p * n + j] = U(0);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The planewise conv in batch-minor tiles: the planes of one p for n samples (one vector lane per sample) are
// copied into zero-padded tiles [rows][cols][n], so that every lane does useful work whatever the map size (the
// maps of the deeper layers are narrower than a vector), rows that lie in the padding are skipped, and the inner
// loops need no bounds checks.
// ---------------------------------------------------------------------------------------------------------------
template <typename T>
struct LaneTiles {
  static constexpr int n = Simd<T>::n;
  int64_t count = 0, rows = 0, cols = 0;
  std::vector<T> data;

  // count zeroed tiles of rows x cols (a no-op, keeping the zero borders, if the shape is unchanged)
  void shape(int64_t count_, int64_t rows_, int64_t cols_) {
    if (count_ == count && rows_ == rows && cols_ == cols) return;
    count = count_;
    rows = rows_;
    cols = cols_;
    data.assign(static_cast<size_t>(count * rows * cols * n), T(0));
  }
  int64_t size() const { return rows * cols * n; }
  T* tile(int64_t i) { return data.data() + i * size(); }
  const T* tile(int64_t i) const { return data.data() + i * size(); }

  // Tile i, element (top + y, left + x), lane j <- src[j * lane_stride + y * X + x] for j < lanes (zero for the
  // other lanes), for the rows and columns that fall inside the tile. The borders keep the zeros of shape().
  void fill(int64_t i, const T* src, int64_t lane_stride, int lanes, int64_t Y, int64_t X, int64_t top, int64_t left) {
    T* t = tile(i);
    const int64_t Yc = std::min(Y, rows - top), Xc = std::min(X, cols - left);
    if (left == 0 && X == cols && Yc == Y) {  // whole rows: straight into the tile
      to_lanes<T>(t + top * cols * n, src, lane_stride, lanes, Y * X);
      return;
    }
    staging.resize(static_cast<size_t>(Y * X * n));
    to_lanes<T>(staging.data(), src, lane_stride, lanes, Y * X);
    for (int64_t y = 0; y < Yc; ++y)
      std::memcpy(t + ((y + top) * cols + left) * n, staging.data() + y * X * n, Xc * n * sizeof(T));
  }
  std::vector<T> staging;
};

// out[y][x][:] = sum_{i < SI} sum_{ty, tx} W[i, ty, tx] in_i[y + d ty][x + d tx][:] for y < Yo, x < Xo, over
// lane tiles (cols >= Xo rounded up to R, plus d (k - 1)); rows of the tiles outside [r_lo, r_hi) are zero and
// skipped. R outputs of a row at a time; with a compile-time K and dilation 1, each input vector is loaded once
// for the R outputs it reaches. accumulate: out += instead of out =.
template <typename T, int K, int R>
void lane_correlate(const LaneTiles<T>& in, int64_t i0, int64_t SI, const T* W, int64_t k, int64_t d, int64_t r_lo,
                    int64_t r_hi, int64_t Yo, int64_t Xo, T* out, bool accumulate) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n;
  const int64_t cols = in.cols, kk = k * k;
  for (int64_t y = 0; y < Yo; ++y) {
    for (int64_t x0 = 0; x0 < Xo; x0 += R) {
      V acc[R];
      for (int r = 0; r < R; ++r) acc[r] = V{};
      for (int64_t i = 0; i < SI; ++i) {
        const T* tile = in.tile(i0 + i);
        for (int64_t ty = 0; ty < k; ++ty) {
          const int64_t row = y + d * ty;
          if (row < r_lo || row >= r_hi) continue;
          const T* src = tile + (row * cols + x0) * n;
          const T* w = W + i * kk + ty * k;
          if constexpr (K > 0) {
            if (d == 1) {
              V wv[K];
              for (int tx = 0; tx < K; ++tx) wv[tx] = splat<V>(w[tx]);
#pragma GCC unroll 16
              for (int j = 0; j < R + K - 1; ++j) {
                const V v = loadu<V>(src + j * n);
#pragma GCC unroll 8
                for (int tx = 0; tx < K; ++tx) {
                  const int r = j - tx;
                  if (r >= 0 && r < R) acc[r] += wv[tx] * v;
                }
              }
              continue;
            }
          }
          for (int64_t tx = 0; tx < k; ++tx) {
            const V wv = splat<V>(w[tx]);
            for (int r = 0; r < R; ++r) acc[r] += wv * loadu<V>(src + (r + d * tx) * n);
          }
        }
      }
      const int nr = static_cast<int>(std::min<int64_t>(R, Xo - x0));
      for (int r = 0; r < nr; ++r) {
        T* o = out + (y * Xo + x0 + r) * n;
        storeu(o, accumulate ? loadu<V>(o) + acc[r] : acc[r]);
      }
    }
  }
}

// The outputs per row block for Xo columns: the R in 4 ... 8 (or Xo itself if smaller) that wastes the fewest
// columns, the larger on ties.
inline int lane_block(int64_t Xo) {
  if (Xo <= 8) return static_cast<int>(Xo);
  int best = 8;
  for (int r = 8; r >= 4; --r) {
    if (round_up(Xo, r) < round_up(Xo, best)) best = r;
  }
  return best;
}

template <typename T, int K>
void lane_correlate_r(int R, const LaneTiles<T>& in, int64_t i0, int64_t SI, const T* W, int64_t k, int64_t d,
                      int64_t r_lo, int64_t r_hi, int64_t Yo, int64_t Xo, T* out, bool accumulate) {
  switch (R) {
    case 1: lane_correlate<T, K, 1>(in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    case 2: lane_correlate<T, K, 2>(in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    case 3: lane_correlate<T, K, 3>(in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    case 4: lane_correlate<T, K, 4>(in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    case 5: lane_correlate<T, K, 5>(in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    case 6: lane_correlate<T, K, 6>(in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    case 7: lane_correlate<T, K, 7>(in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    default: lane_correlate<T, K, 8>(in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
  }
}

// lane_correlate with the kernel size dispatched to a compile-time one where it has one.
template <typename T>
void lane_correlate_any(int R, const LaneTiles<T>& in, int64_t i0, int64_t SI, const T* W, int64_t k, int64_t d,
                        int64_t r_lo, int64_t r_hi, int64_t Yo, int64_t Xo, T* out,
                        bool accumulate = false) {
  switch (k) {
    case 3: lane_correlate_r<T, 3>(R, in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    case 5: lane_correlate_r<T, 5>(R, in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    case 7: lane_correlate_r<T, 7>(R, in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
    default: lane_correlate_r<T, 0>(R, in, i0, SI, W, k, d, r_lo, r_hi, Yo, Xo, out, accumulate); break;
  }
}

// dW[i, ty, tx] += sum_{y, x} g[y, x] in_i[y + d ty][x + d tx] per lane (the lanes are summed by the caller), for
// the lane tiles of SI inputs and the gradient g [Yo][Xo][n] at (g_top, g_left) of its own tile. Rows of the input
// tiles outside [r_lo, r_hi) are zero and skipped.
template <typename T, int KT>
void lane_weight_grad(const LaneTiles<T>& in, int64_t SI, const LaneTiles<T>& g, int64_t gi, int64_t g_top, int64_t g_left,
                      int64_t k, int64_t d, int64_t r_lo, int64_t r_hi, int64_t Yo, int64_t Xo,
                      typename Simd<T>::V* dW) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n;
  const T* gt = g.tile(gi);
  for (int64_t i = 0; i < SI; ++i) {
    const T* tile = in.tile(i);
    for (int64_t ty = 0; ty < k; ++ty) {
      const int64_t y_lo = std::max<int64_t>(0, r_lo - d * ty), y_hi = std::min<int64_t>(Yo, r_hi - d * ty);
      V* dw = dW + (i * k + ty) * k;
      if constexpr (KT > 0) {
        V acc[KT];
        for (int t = 0; t < KT; ++t) acc[t] = V{};
        for (int64_t y = y_lo; y < y_hi; ++y) {
          const T* row = tile + (y + d * ty) * in.cols * n;
          const T* grow = gt + ((y + g_top) * g.cols + g_left) * n;
          if (d == 1) {  // a window of the KT inputs of output x slides along the row: one new load per x
            V win[KT];
            for (int t = 0; t < KT; ++t) win[t] = loadu<V>(row + t * n);
            for (int64_t x = 0; x < Xo; ++x) {
              const V gv = loadu<V>(grow + x * n);
              for (int t = 0; t < KT; ++t) acc[t] += gv * win[t];
              for (int t = 0; t + 1 < KT; ++t) win[t] = win[t + 1];
              if (x + 1 < Xo) win[KT - 1] = loadu<V>(row + (x + KT) * n);
            }
            continue;
          }
          for (int64_t x = 0; x < Xo; ++x) {
            const V gv = loadu<V>(grow + x * n);
            for (int t = 0; t < KT; ++t) acc[t] += gv * loadu<V>(row + (x + d * t) * n);
          }
        }
        for (int t = 0; t < KT; ++t) dw[t] += acc[t];
      } else {
        for (int64_t tx = 0; tx < k; ++tx) {
          V acc = V{};
          for (int64_t y = y_lo; y < y_hi; ++y) {
            const T* row = tile + (y + d * ty) * in.cols * n;
            const T* grow = gt + ((y + g_top) * g.cols + g_left) * n;
            for (int64_t x = 0; x < Xo; ++x) acc += loadu<V>(grow + x * n) * loadu<V>(row + (x + d * tx) * n);
          }
          dw[tx] += acc;
        }
      }
    }
  }
}

template <typename T>
void lane_weight_grad_any(const LaneTiles<T>& in, int64_t SI, const LaneTiles<T>& g, int64_t gi, int64_t g_top,
                          int64_t g_left,
                          int64_t k, int64_t d, int64_t r_lo, int64_t r_hi, int64_t Yo, int64_t Xo,
                          typename Simd<T>::V* dW) {
  switch (k) {
    case 3: lane_weight_grad<T, 3>(in, SI, g, gi, g_top, g_left, k, d, r_lo, r_hi, Yo, Xo, dW); break;
    case 5: lane_weight_grad<T, 5>(in, SI, g, gi, g_top, g_left, k, d, r_lo, r_hi, Yo, Xo, dW); break;
    case 7: lane_weight_grad<T, 7>(in, SI, g, gi, g_top, g_left, k, d, r_lo, r_hi, Yo, Xo, dW); break;
    default: lane_weight_grad<T, 0>(in, SI, g, gi, g_top, g_left, k, d, r_lo, r_hi, Yo, Xo, dW); break;
  }
}

// exp(x) lane-wise: x = k ln 2 + r with |r| <= ln 2 / 2 (Cody-Waite), exp(r) by its Taylor series (degree 12 for
// double, 7 for float: within a few ulp), and 2^k put into the exponent bits; 0 below and +inf above the range
// where the result is a normal number.
template <typename T>
inline typename Simd<T>::V lane_exp(typename Simd<T>::V x) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  using Index = typename Simd<T>::Index;
  constexpr bool dbl = sizeof(T) == 8;
  constexpr T lo = dbl ? T(-708.0) : T(-87.0), hi = dbl ? T(709.0) : T(88.0);
  const auto under = x < lo, over = x > hi;  // 0 and +inf there, computed on the clamped input
  x = under ? V{} + lo : x;
  x = over ? V{} + hi : x;
  const V kf = __builtin_convertvector(__builtin_convertvector(x * T(1.4426950408889634) + (x < 0 ? T(-0.5) : T(0.5)), I), V);
  const V r = (x - kf * T(0.693145751953125)) - kf * T(1.42860682030941723212e-6);
  constexpr int degree = dbl ? 12 : 7;
  V p = V{} + T(1);
  for (int i = degree; i >= 1; --i) p = p * (r * (T(1) / T(i))) + T(1);  // Horner: 1 + r (1 + r/2 (1 + r/3 ...))
  const I k = __builtin_convertvector(kf, I);
  I bits;
  std::memcpy(&bits, &p, sizeof(V));
  bits += k << static_cast<Index>(dbl ? 52 : 23);
  V out;
  std::memcpy(&out, &bits, sizeof(V));
  out = under ? V{} : out;
  return over ? V{} + std::numeric_limits<T>::infinity() : out;
}

// The spatial map's logits gradient g a (1 - a) summed, from the lane tiles go (g), av (a) and sv (summed) [Y * X][n],
// into the interior (offset pad) of a padded lane tile lg with `cols` columns.
template <typename T>
void logits_grad_tile(T* lg, int64_t cols, int64_t pad, const T* go, const T* av, const T* sv, int64_t Y, int64_t X) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n;
  for (int64_t y = 0; y < Y; ++y) {
    for (int64_t x = 0; x < X; ++x) {
      const int64_t i = (y * X + x) * n;
      const V a_i = loadu<V>(av + i);
      storeu(lg + ((y + pad) * cols + x + pad) * n, loadu<V>(go + i) * loadu<V>(sv + i) * a_i * (T(1) - a_i));
    }
  }
}

// The spatial attention of the full attention, fused: logits = planewise conv of (summed, maximum) by w (planes
// p = (l, q), l-major, 'same' padding), a = sigmoid(logits), out[b, q] = sum_l a summed. summed, maximum: [B, L * Q,
// Y, X] (maximum may be undefined: one statistic); returns out [B, Q, Y, X] and a [B, L * Q, Y, X]. With plain
// [B, Q, Y, X], out = plain - sum_l a summed; either times scale.
// One task per filter q and block of samples, over l.
std::tuple<Tensor, Tensor> attention_map_forward(const Tensor& summed, const Maybe& maximum_, const Tensor& w,
                                                 int64_t L, int64_t dilation, const Maybe& plain_, double scale) {
  const bool with_max = maximum_.has_value() && maximum_->defined();  // else one statistic (w [P, 1, k, k])
  const Tensor maximum = with_max ? maximum_->contiguous() : Tensor();
  const PlaneGeometry g = with_max ? planewise_geometry({summed, maximum}, w, dilation)
                                   : planewise_geometry({summed}, w, dilation);
  TORCH_CHECK(g.Yo == g.Y && g.Xo == g.X, "attention map: the spatial kernel must keep the map's size (odd k)");
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
// (planes l-major), w [L * Q, 2, k, k]. negate: the output was plain - sum_l a summed; scale: it was scaled (g =
// +-scale grad_out).
std::tuple<Tensor, Tensor, Tensor> attention_map_backward(const Tensor& grad_out_, const Tensor& summed,
                                                          const Maybe& maximum_, const Tensor& a, const Tensor& w,
                                                          int64_t L, int64_t dilation, bool need_x, bool need_w,
                                                          bool negate, double scale) {
  const bool with_max = maximum_.has_value() && maximum_->defined();  // else one statistic (w [P, 1, k, k])
  const Tensor maximum = with_max ? maximum_->contiguous() : Tensor();
  const PlaneGeometry g = with_max ? planewise_geometry({summed, maximum}, w, dilation)
                                   : planewise_geometry({summed}, w, dilation);
  TORCH_CHECK(g.Yo == g.Y && g.Xo == g.X, "attention map: the spatial kernel must keep the map's size (odd k)");
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
    const T factor = static_cast<T>(negate ? -scale : scale);
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

// ---------------------------------------------------------------------------------------------------------------
// A plain convolution with few channels (the attention maps' convs, a lifting conv on a grey image), stride 1, in
// lane tiles: out[b, o] = sum_i w[o, i] (*) x[b, i], padding p, dilation d; x [B, Ci, Y, X], w [Co, Ci, k, k] ->
// [B, Co, Yo, Xo]. One task per block of samples; the tiles of all input (or gradient) channels are filled once.
// ---------------------------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------------------------
// Intermediate responses ft[b, q, c, l, y, x] = sum_t bank[q, c, l, t] xin[b, (c, l), y s + d ty - p, x s + d tx - p]
// (q = (o, j)), vectorised over q: the bank is rearranged to [Ci, L, k * k, Qp] with Qp = Q rounded up to whole
// vectors (zero filters in the tail), and each response vector is a sum of k^2 scalar-times-vector products.
// ---------------------------------------------------------------------------------------------------------------
struct ConvGeometry {
  int64_t B, Ci, L, Yi, Xi, Q, k, stride, pad, d, Yo, Xo, rows, cols;
};

ConvGeometry conv_geometry(const Tensor& xin, const Tensor& bank, int64_t stride, int64_t padding, int64_t dilation) {
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

// Lane-wise "x replaces the running maximum m": x > m, or x is NaN; a NaN maximum stays (torch.max's rule).
template <typename V>
inline auto replaces(const V& x, const V& m) {
  return ~(x <= m) & (m == m);
}

// ---------------------------------------------------------------------------------------------------------------
// The arg-max passes in batch-minor lane tiles: for one (l, block of n samples) the input planes of every channel
// are zero-padded lane tiles, and each response f[q, c](p) = sum_t bank[q, c, l, t] x_c[p s + off_t] is a sum of
// k^2 scalar-times-vector products over the samples; QB filters share each loaded input vector.
// ---------------------------------------------------------------------------------------------------------------
// The lane tiles of the Ci input planes of (l, samples b0 ... b0 + lanes - 1), zero-padded by g.pad.
template <typename T>
void fill_input_tiles(LaneTiles<T>& xt, const T* xp, const ConvGeometry& g, int64_t l, int64_t b0, int lanes) {
  xt.shape(g.Ci, g.rows, g.cols);
  for (int64_t c = 0; c < g.Ci; ++c)
    xt.fill(c, xp + (b0 * g.Ci * g.L + c * g.L + l) * g.Yi * g.Xi, g.Ci * g.L * g.Yi * g.Xi, lanes, g.Yi, g.Xi,
            g.pad, g.pad);
}

// Each tap's offset in a lane tile of the geometry's columns, in elements.
std::vector<int64_t> tap_offsets(const ConvGeometry& g, int n) {
  std::vector<int64_t> off(g.k * g.k);
  for (int64_t t = 0; t < g.k * g.k; ++t) off[t] = (g.d * (t / g.k) * g.cols + g.d * (t % g.k)) * n;
  return off;
}

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
    if (need_w) {
      T* gw = grad_w.data_ptr<T>();
      for (int64_t i = 0; i < wsize; ++i) {
        T sum = 0;
        for (int t = 0; t < threads; ++t) sum += partial[t * wsize + i];
        gw[i] = sum;
      }
    }
  });
  return {grad_x, grad_w};
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

Tensor channel_map(const ConvGeometry& g, const Tensor& xin, const Maybe& a_) {
  const Tensor a = a_.has_value() && a_->defined() ? a_->contiguous() : Tensor();
  if (a.defined()) {
    check(a, xin, "a");
    TORCH_CHECK(a.numel() == g.B * g.Q * g.Ci * g.L, "a must be [B, Co, |H|, Ci, L]");
  }
  return a;
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
// conv of (summed, maximum) by w_x [L * Q, S, kx, kx], 'same' padding, dilation dilation_x) and out = scale (plain -
// sum_l a_x summed) (with_plain) or scale sum_l a_x summed. S = 1 (single): one statistic, summed (the layer's
// max_c is its sum, Ci * L = 1), and maximum and channel are not made. Returns (channel, summed, maximum, a_x
// [B, L, Co, |H|, Yo, Xo], out [B, Co, |H|, Yo, Xo]).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> attend_forward(const Tensor& xin, const Tensor& bank,
                                                                  const Maybe& a_, const Tensor& w_x, int64_t padding,
                                                                  int64_t dilation, int64_t dilation_x,
                                                                  bool with_plain, bool single, double scale) {
  const ConvGeometry g = conv_geometry(xin, bank, 1, padding, dilation);
  const Tensor a = channel_map(g, xin, a_);
  TORCH_CHECK(!single || g.Ci * g.L == 1, "attend_forward: one statistic needs one input channel and orientation");
  const int64_t S = single ? 1 : 2;
  check(w_x, xin, "w_x");
  TORCH_CHECK(w_x.dim() == 4 && w_x.size(0) == g.L * g.Q && w_x.size(1) == S && w_x.size(2) == w_x.size(3) &&
                  w_x.size(2) % 2 == 1 && dilation_x >= 1,
              "w_x must be [L * Co * |H|, 1 or 2 statistics, k, k] with odd k");
  auto [channel, summed, maximum, plain] = channel_pass_outputs(g, xin, bank, !single, false);
  Tensor a_x = at::empty_like(summed);
  Tensor out = at::empty({g.B, bank.size(0), bank.size(1), g.Yo, g.Xo}, xin.options());
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "attend_forward", [&] {
    using T = scalar_t;
    using V = typename Simd<T>::V;
    constexpr int n = Simd<T>::n;
    const int64_t P = g.Yo * g.Xo, Y = g.Yo, X = g.Xo, kx = w_x.size(2), kkx = kx * kx, dx = dilation_x;
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


// sel[b, l, q, y, x] = a[b, q, c*, l] ft[b, q, c*, l, y, x] (a = 1 if undefined), c* = channel[b, l, q, y, x]:
// max_c a ft, recomputed from the winning channel's k x k window (the SelectedResponses of lean.py without its
// stored winner). selected_forward gives sel [B, L, Co, |H|, Yo, Xo]; selected_backward its gradients with respect
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
        a(a_.has_value() ? *a_ : Tensor()),
        channel(channel_.contiguous()),
        P(g.Yo * g.Xo),
        kk(g.k * g.k),
        offsets(kk) {
    if (a.defined()) {
      check(a, xin, "a");
      TORCH_CHECK(a.numel() == g.B * g.Q * g.Ci * g.L, "a must be [B, Co, |H|, Ci, L]");
    }
    TORCH_CHECK(channel.numel() == g.B * g.L * g.Q * P, "channel must be [B, L, Co, |H|, Yo, Xo]");
    TORCH_CHECK(channel.scalar_type() == at::kByte || channel.scalar_type() == at::kInt,
                "channel must be uint8 or int32");
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
    if (need_w) {
      T* gw = grad_w.data_ptr<T>();
      for (int64_t i = 0; i < wsize; ++i) {
        T sum = 0;
        for (int t = 0; t < threads; ++t) sum += partial[t * wsize + i];
        gw[i] = sum;
      }
    }
  });
  return {grad_x, grad_w, grad_a};
}

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
  const int64_t P = g.Yo * g.Xo;
  const Tensor a = a_.has_value() && a_->defined() ? a_->contiguous() : Tensor();
  if (a.defined()) {
    check(a, xin, "a");
    TORCH_CHECK(a.numel() == g.B * g.Q * g.Ci * g.L, "a must be [B, Co, |H|, Ci, L]");
  }
  Tensor channel;
  if (with_max) {
    TORCH_CHECK(channel_.has_value() && channel_->defined(), "the gradient of the maximum needs its channel");
    channel = channel_->contiguous();
    TORCH_CHECK(channel.numel() == g.B * g.L * g.Q * P, "channel must be [B, L, Co, |H|, Yo, Xo]");
    TORCH_CHECK(channel.scalar_type() == at::kByte || channel.scalar_type() == at::kInt,
                "channel must be uint8 or int32");
  }
  return {a, channel};
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

// The backward of a chunk of the full attention's layer (stride 1), fused: the spatial attention's map and weighting
// (as attention_map_backward) and the channel statistics (StatsBackward) in one pass, so that the gradients of
// the statistics never leave the lane tiles. With summed = sum_c a ft, maximum = max_c a ft (from channel_argmax,
// [B, L, Co, |H|, Yo, Xo]; maximum undefined: one statistic), a_x = sigmoid(planewise conv of (summed, maximum) by
// w_x [L * Q, S, kx, kx]) (saved) and out = scale (plain - sum_l a_x summed) (negate) or scale sum_l a_x summed,
// given grad_out [B, Co, |H|, Yo, Xo]: grad_x [B, Ci * L, Yi, Xi], grad_w [Co, |H|, Ci, L, k, k], grad_a [B, Co, |H|,
// Ci, L] (undefined without a) and grad_w_x (each undefined unless asked for). One task per
// (l, block of samples); the filter gradients are summed over per-thread copies.
std::tuple<Tensor, Tensor, Tensor, Tensor> attend_backward(
    const Tensor& grad_out_, const Tensor& summed, const Maybe& maximum_, const Tensor& a_x, const Tensor& w_x,
    int64_t dilation_x, bool negate, double scale, const Tensor& xin, const Tensor& bank, const Maybe& a_,
    const Maybe& channel_, int64_t padding, int64_t dilation, bool need_x, bool need_w, bool need_a, bool need_w_x) {
  const ConvGeometry g = conv_geometry(xin, bank, 1, padding, dilation);
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
  check(w_x, xin, "w_x");
  TORCH_CHECK(w_x.dim() == 4 && w_x.size(0) == g.L * g.Q && w_x.size(1) == S && w_x.size(2) == w_x.size(3) &&
                  w_x.size(2) % 2 == 1 && dilation_x >= 1,
              "w_x must be [L * Co * |H|, 1 or 2 statistics, k, k] with odd k");
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
    const int64_t Y = g.Yo, X = g.Xo, kx = w_x.size(2), kkx = kx * kx, dx = dilation_x, pad = dx * (kx / 2);
    const int Rx = lane_block(X);
    const int64_t l_rows = Y + dx * (kx - 1), l_cols = round_up(X, Rx) + dx * (kx - 1);
    const int64_t s_cols = X + dx * (kx - 1), LQ = g.L * g.Q, stride_b = LQ * P;
    const T factor = static_cast<T>(negate ? -scale : scale);
    const int threads = at::get_num_threads();
    std::vector<V> partial_x(need_w_x ? threads * LQ * S * kkx : 0, V{});  // per-thread w_x gradients, lane-wise
    const bool stats_part = need_x || need_w || need_a;
    const auto body = stats_backward<T>(g, xin, bank, a, channel, true, with_max, negate, grad_x, grad_w, grad_a);
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lane_conv_forward", &lane_conv_forward);
  m.def("lane_conv_backward", &lane_conv_backward);
  m.def("attention_map_forward", &attention_map_forward);
  m.def("attention_map_backward", &attention_map_backward);
  m.def("spatial_argmax", &spatial_argmax);
  m.def("spatial_max_backward", &spatial_max_backward);
  m.def("channel_argmax", &channel_argmax);
  m.def("selected_forward", &selected_forward);
  m.def("selected_backward", &selected_backward);
  m.def("attend_forward", &attend_forward);
  m.def("attend_backward", &attend_backward);
}
