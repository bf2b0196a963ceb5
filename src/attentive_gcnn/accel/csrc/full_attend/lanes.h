// Lane tiles: the vector helpers every kernel of the full attention uses (one header, included by each source).
//
// Most kernels work in batch-minor lane tiles (LaneTiles): the planes of a block of samples, transposed so that each
// vector lane holds one sample. The vector code uses GCC vector extensions (64-byte vectors: 16 floats or 8
// doubles), which compile to whatever SIMD the target has; every kernel is templated on float and double.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace attentive_gcnn {

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

// out[i] = sum over the threads' copies of partial (`threads` copies of `count` scalars): the per-thread filter
// gradients of the backward kernels that accumulate one scalar per filter tap.
template <typename T>
void sum_partials(const std::vector<T>& partial, int threads, int64_t count, T* out) {
  for (int64_t i = 0; i < count; ++i) {
    T sum = 0;
    for (int t = 0; t < threads; ++t) sum += partial[t * count + i];
    out[i] = sum;
  }
}

// dst[f][t] = src[f][kk - 1 - t] for `filters` filters of kk taps: the flipped filters of an input gradient.
template <typename T>
void flip_filters(T* dst, const T* src, int64_t filters, int64_t kk) {
  for (int64_t f = 0; f < filters; ++f)
    for (int64_t t = 0; t < kk; ++t) dst[f * kk + t] = src[f * kk + kk - 1 - t];
}

constexpr int64_t MAX_TAPS = 121;  // the largest filter some kernels keep in local arrays (11 x 11)
// the rows of StatsBackward's strips: one filter's gradient planes of a strip in this many bytes (measured
// no slower than 16 KiB strips or none)
constexpr int64_t STATS_STRIP_BYTES = 64 * 1024;

inline void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
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

// Lane-wise "x replaces the running maximum m": x > m, or x is NaN; a NaN maximum stays (torch.max's rule).
template <typename V>
inline auto replaces(const V& x, const V& m) {
  return ~(x <= m) & (m == m);
}

}  // namespace attentive_gcnn
