// Fused CPU kernels of the lean full attention (see attentive_gcnn/nn/attention/lean.py).
//
// - planewise_forward / planewise_backward: the spatial-attention conv, where every plane p has its own filter
//   over S statistics: out[b, p] = sum_s w[p, s] (*) in_s[b, p], stride 1, padding d * (k // 2), dilation d.
//   Inputs in_s [B, P, Y, X] (one tensor per statistic, no stacking), w [P, S, k, k], out [B, P, Y', X'].
// - spatial_argmax: max and first arg-max over output positions of every intermediate response
//   ft[b, o, j, c, l] = xin[b, (c, l)] (*) bank[o, j, c, l], without ft: [B, Co, |H|, Ci, L] each;
//   spatial_max_backward: the gradients of that maximum.
// - channel_argmax: the channel c* of max_c a[b, o, j, c, l] ft[b, o, j, c, l, y, x], that maximum and the
//   channel sum sum_c a ft, l-major [B, L, Co, |H|, Y', X'];
// - selected_forward / selected_backward: a[c*] ft[c*] (max_c a ft) from the winning channel's window, and its
//   gradients;
// - channel_stats_backward: the gradients of sum_c a ft and of max_c a ft together (stride 1).
// - weighted_sum_forward / weighted_sum_backward: sum_l sigmoid(logits) summed, the spatial attention's weighting.
//
// xin [B, Ci * L, Yi, Xi] is the folded conv input (channel-major), bank [Co, |H|, Ci, L, k, k]. The vector code
// uses GCC vector extensions (64-byte vectors: 16 floats or 8 doubles), which compile to whatever SIMD the target
// has; every kernel is templated on float and double.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
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

void check(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type(), name,
              " must be a contiguous CPU tensor of the dtype of the input");
}

// ---------------------------------------------------------------------------------------------------------------
// Planewise correlation of one plane: out_o[y, x] = sum_i sum_t W[o, i, t] in_i[y + d ty - pad, x + d tx - pad]
// (zero outside the input), for o < SO, i < SI. Works in zero-padded scratch copies, so the inner loops need no
// bounds checks: R output rows at a time, one vector of output columns, R independent accumulators.
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

template <typename T, int R>
void correlate_rows(const PaddedPlanes<T>& in, int64_t SI, const T* W, int64_t k, int64_t d, int64_t Yo8,
                    int64_t Xa, T* out) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n;
  const int64_t cols = in.cols;
  for (int64_t y0 = 0; y0 < Yo8; y0 += R) {
    for (int64_t x0 = 0; x0 < Xa; x0 += n) {
      V acc[R];
      for (int r = 0; r < R; ++r) acc[r] = V{};
      for (int64_t i = 0; i < SI; ++i) {
        const T* base = in.plane(i) + y0 * cols + x0;
        const T* wi = W + i * k * k;
        for (int64_t ty = 0; ty < k; ++ty) {
          for (int64_t tx = 0; tx < k; ++tx) {
            const V wv = splat<V>(wi[ty * k + tx]);
            const T* p = base + d * (ty * cols + tx);
            for (int r = 0; r < R; ++r) acc[r] += wv * loadu<V>(p + r * cols);
          }
        }
      }
      for (int r = 0; r < R; ++r) storeu(out + (y0 + r) * Xa + x0, acc[r]);
    }
  }
}

// correlate_rows for a compile-time kernel size K, dilation 1 and R = 8 rows: for each filter column tx the K
// weights of that column stay in registers, and each input row vector is loaded once and multiplied into every
// output row it reaches (fewer loads than multiply-adds, so the loop is bound by the multiply-adds).
template <typename T, int K>
void correlate_rows_k(const PaddedPlanes<T>& in, int64_t SI, const T* W, int64_t Yo8, int64_t Xa, T* out) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n, R = 8;
  const int64_t cols = in.cols;
  for (int64_t y0 = 0; y0 < Yo8; y0 += R) {
    for (int64_t x0 = 0; x0 < Xa; x0 += n) {
      V acc[R];
      for (int r = 0; r < R; ++r) acc[r] = V{};
      for (int64_t i = 0; i < SI; ++i) {
        const T* base = in.plane(i) + y0 * cols + x0;
        const T* wi = W + i * K * K;
        for (int tx = 0; tx < K; ++tx) {
          V w[K];
          for (int ty = 0; ty < K; ++ty) w[ty] = splat<V>(wi[ty * K + tx]);
          const T* col = base + tx;
          // output row r takes input row r + ty: input row j feeds the rows r = j - ty
#pragma GCC unroll 16
          for (int j = 0; j < R + K - 1; ++j) {
            const V v = loadu<V>(col + j * cols);
#pragma GCC unroll 8
            for (int ty = 0; ty < K; ++ty) {
              const int r = j - ty;
              if (r >= 0 && r < R) acc[r] += w[ty] * v;
            }
          }
        }
      }
      for (int r = 0; r < R; ++r) storeu(out + (y0 + r) * Xa + x0, acc[r]);
    }
  }
}

// One plane: SI inputs (Y x X) -> SO outputs (Yo x Xo), weights W [SO, SI, k, k], padding pad. same_layout:
// scratch holds the zero borders of the previous call, which had the same SI, sizes and padding.
template <typename T>
void correlate_plane(const T* const* in, int64_t SI, int64_t Y, int64_t X, const T* W, int64_t SO, int64_t k,
                     int64_t d, int64_t pad, T* const* out, int64_t Yo, int64_t Xo, PaddedPlanes<T>& scratch,
                     std::vector<T>& outbuf, bool same_layout = false) {
  constexpr int n = Simd<T>::n;
  const int R = Yo >= 8 ? 8 : (Yo >= 4 ? 4 : (Yo >= 2 ? 2 : 1));
  const int64_t Xa = round_up(Xo, n), Yo8 = round_up(Yo, R);
  scratch.fill(in, SI, Y, X, pad, pad, Yo8 + d * (k - 1), Xa + d * (k - 1), same_layout);
  outbuf.resize(static_cast<size_t>(Yo8 * Xa));
  for (int64_t o = 0; o < SO; ++o) {
    const T* Wo = W + o * SI * k * k;
    if (R == 8 && d == 1 && k == 7) {
      correlate_rows_k<T, 7>(scratch, SI, Wo, Yo8, Xa, outbuf.data());
    } else if (R == 8 && d == 1 && k == 3) {
      correlate_rows_k<T, 3>(scratch, SI, Wo, Yo8, Xa, outbuf.data());
    } else {
      switch (R) {
      case 8: correlate_rows<T, 8>(scratch, SI, Wo, k, d, Yo8, Xa, outbuf.data()); break;
      case 4: correlate_rows<T, 4>(scratch, SI, Wo, k, d, Yo8, Xa, outbuf.data()); break;
      case 2: correlate_rows<T, 2>(scratch, SI, Wo, k, d, Yo8, Xa, outbuf.data()); break;
      default: correlate_rows<T, 1>(scratch, SI, Wo, k, d, Yo8, Xa, outbuf.data()); break;
      }
    }
    for (int64_t y = 0; y < Yo; ++y) std::memcpy(out[o] + y * Xo, outbuf.data() + y * Xa, Xo * sizeof(T));
  }
}

// dW[i, ty, tx] += sum_{y, x} g[y, x] in_i[y + d ty - pad, x + d tx - pad] for one plane; g is zero-padded to
// (Yo, Xa) columns so that the vector tails add nothing. KT > 0: the kernel size at compile time (the tx
// accumulators stay in registers); KT = 0: any size, one tap at a time.
template <typename T, int KT>
void weight_grad_plane(const PaddedPlanes<T>& in, int64_t i0, int64_t SI, const T* g, int64_t Yo, int64_t Xa,
                       int64_t k, int64_t d, T* dW) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n;
  const int64_t cols = in.cols;
  for (int64_t i = 0; i < SI; ++i) {
    for (int64_t ty = 0; ty < k; ++ty) {
      T* dw = dW + (i * k + ty) * k;
      if constexpr (KT > 0) {
        V acc[KT];
        for (int t = 0; t < KT; ++t) acc[t] = V{};
        for (int64_t y = 0; y < Yo; ++y) {
          const T* row = in.plane(i0 + i) + (y + d * ty) * cols;
          for (int64_t x0 = 0; x0 < Xa; x0 += n) {
            const V gv = loadu<V>(g + y * Xa + x0);
            for (int t = 0; t < KT; ++t) acc[t] += gv * loadu<V>(row + x0 + d * t);
          }
        }
        for (int t = 0; t < KT; ++t) dw[t] += hsum<T>(acc[t], n);
      } else {
        for (int64_t tx = 0; tx < k; ++tx) {
          V acc = V{};
          for (int64_t y = 0; y < Yo; ++y) {
            const T* row = in.plane(i0 + i) + (y + d * ty) * cols + d * tx;
            for (int64_t x0 = 0; x0 < Xa; x0 += n) acc += loadu<V>(g + y * Xa + x0) * loadu<V>(row + x0);
          }
          dw[tx] += hsum<T>(acc, n);
        }
      }
    }
  }
}

// weight_grad_plane over planes i0 ... i0 + SI - 1 of in, with the kernel size dispatched to a compile-time one
// where it has one.
template <typename T>
void weight_grad(const PaddedPlanes<T>& in, int64_t i0, int64_t SI, const T* g, int64_t Yo, int64_t Xa, int64_t k,
                 int64_t d, T* dW) {
  switch (k) {
    case 3: weight_grad_plane<T, 3>(in, i0, SI, g, Yo, Xa, k, d, dW); break;
    case 5: weight_grad_plane<T, 5>(in, i0, SI, g, Yo, Xa, k, d, dW); break;
    case 7: weight_grad_plane<T, 7>(in, i0, SI, g, Yo, Xa, k, d, dW); break;
    default: weight_grad_plane<T, 0>(in, i0, SI, g, Yo, Xa, k, d, dW); break;
  }
}

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

Tensor planewise_forward(const std::vector<Tensor>& inputs, const Tensor& w, int64_t dilation) {
  const PlaneGeometry g = planewise_geometry(inputs, w, dilation);
  Tensor out = at::empty({g.B, g.P, g.Yo, g.Xo}, inputs[0].options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "planewise_forward", [&] {
    std::vector<const scalar_t*> in;
    for (const Tensor& t : inputs) in.push_back(t.data_ptr<scalar_t>());
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.B * g.P, 1, [&](int64_t begin, int64_t end) {
      PaddedPlanes<scalar_t> scratch;
      std::vector<scalar_t> outbuf;
      std::vector<const scalar_t*> planes(g.S);
      for (int64_t bp = begin; bp < end; ++bp) {
        for (int64_t s = 0; s < g.S; ++s) planes[s] = in[s] + bp * g.Y * g.X;
        scalar_t* o = op + bp * g.Yo * g.Xo;
        correlate_plane<scalar_t>(planes.data(), g.S, g.Y, g.X, wp + (bp % g.P) * g.S * g.k * g.k, 1, g.k, g.d,
                                  g.pad, &o, g.Yo, g.Xo, scratch, outbuf);
      }
    });
  });
  return out;
}

std::tuple<std::vector<Tensor>, Tensor> planewise_backward(const Tensor& grad_, const std::vector<Tensor>& inputs,
                                                           const Tensor& w, int64_t dilation, bool need_x,
                                                           bool need_w) {
  const PlaneGeometry g = planewise_geometry(inputs, w, dilation);
  const Tensor grad = grad_.contiguous();
  check(grad, inputs[0], "planewise conv grad");
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({g.B, g.P, g.Yo, g.Xo}), "planewise conv: grad of the wrong shape");
  std::vector<Tensor> grad_inputs;
  Tensor grad_w;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "planewise_backward", [&] {
    using T = scalar_t;
    const T* gp = grad.data_ptr<T>();
    const T* wp = w.data_ptr<T>();
    const int64_t kk = g.k * g.k;
    if (need_x) {  // d in_s = correlation of grad with the flipped filter w[p, s], padding d (k - 1) - pad
      for (int64_t s = 0; s < g.S; ++s) grad_inputs.push_back(at::empty_like(inputs[0]));
      std::vector<T*> gi;
      for (const Tensor& t : grad_inputs) gi.push_back(t.data_ptr<T>());
      at::parallel_for(0, g.B * g.P, 1, [&](int64_t begin, int64_t end) {
        PaddedPlanes<T> scratch;
        std::vector<T> outbuf, flipped(g.S * kk);
        std::vector<T*> outs(g.S);
        for (int64_t bp = begin; bp < end; ++bp) {
          const T* wpl = wp + (bp % g.P) * g.S * kk;
          for (int64_t s = 0; s < g.S; ++s) {
            for (int64_t t = 0; t < kk; ++t) flipped[s * kk + t] = wpl[s * kk + kk - 1 - t];
            outs[s] = gi[s] + bp * g.Y * g.X;
          }
          const T* plane = gp + bp * g.Yo * g.Xo;
          correlate_plane<T>(&plane, 1, g.Yo, g.Xo, flipped.data(), g.S, g.k, g.d, g.d * (g.k - 1) - g.pad,
                             outs.data(), g.Y, g.X, scratch, outbuf);
        }
      });
    }
    if (need_w) {
      grad_w = at::zeros_like(w);
      T* dwp = grad_w.data_ptr<T>();
      std::vector<const T*> in;
      for (const Tensor& t : inputs) in.push_back(t.data_ptr<T>());
      constexpr int n = Simd<T>::n;
      const int64_t Xa = round_up(g.Xo, n);
      at::parallel_for(0, g.P, 1, [&](int64_t begin, int64_t end) {
        PaddedPlanes<T> scratch;
        std::vector<T> gpad(g.Yo * Xa, T(0));
        std::vector<const T*> planes(g.S);
        for (int64_t p = begin; p < end; ++p) {
          T* dw = dwp + p * g.S * kk;
          for (int64_t b = 0; b < g.B; ++b) {
            const int64_t bp = b * g.P + p;
            for (int64_t s = 0; s < g.S; ++s) planes[s] = in[s] + bp * g.Y * g.X;
            scratch.fill(planes.data(), g.S, g.Y, g.X, g.pad, g.pad, g.Yo + g.d * (g.k - 1), Xa + g.d * (g.k - 1));
            for (int64_t y = 0; y < g.Yo; ++y) std::memcpy(&gpad[y * Xa], gp + bp * g.Yo * g.Xo + y * g.Xo, g.Xo * sizeof(T));
            weight_grad<T>(scratch, 0, g.S, gpad.data(), g.Yo, Xa, g.k, g.d, dw);
          }
        }
      });
    }
  });
  return {grad_inputs, grad_w};
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

// bank [Q, Ci, L, k, k] -> [Ci, L, k * k, Qp], zero in q >= Q.
template <typename T>
std::vector<T> bank_by_tap(const T* bank, const ConvGeometry& g, int64_t Qp) {
  const int64_t kk = g.k * g.k;
  std::vector<T> out(static_cast<size_t>(g.Ci * g.L * kk * Qp), T(0));
  for (int64_t q = 0; q < g.Q; ++q)
    for (int64_t cl = 0; cl < g.Ci * g.L; ++cl)
      for (int64_t t = 0; t < kk; ++t) out[(cl * kk + t) * Qp + q] = bank[(q * g.Ci * g.L + cl) * kk + t];
  return out;
}

// The responses of VB vectors of filters (w [k * k, Qp] from vector q0) at output (y, x) of one padded plane.
template <typename T, int VB>
inline void responses(const T* plane, int64_t cols, const T* w, int64_t Qp, const ConvGeometry& g, int64_t y,
                      int64_t x, typename Simd<T>::V* r) {
  using V = typename Simd<T>::V;
  constexpr int n = Simd<T>::n;
  for (int v = 0; v < VB; ++v) r[v] = V{};
  const T* base = plane + y * g.stride * cols + x * g.stride;
  for (int64_t ty = 0; ty < g.k; ++ty) {
    for (int64_t tx = 0; tx < g.k; ++tx) {
      const V xv = splat<V>(base[g.d * (ty * cols + tx)]);
      const T* wt = w + (ty * g.k + tx) * Qp;
      for (int v = 0; v < VB; ++v) r[v] += xv * loadu<V>(wt + v * n);
    }
  }
}

// Lane-wise "x replaces the running maximum m": x > m, or x is NaN; a NaN maximum stays (torch.max's rule).
template <typename V>
inline auto replaces(const V& x, const V& m) {
  return ~(x <= m) & (m == m);
}

// max and first arg-max over output positions of ft for one (b, c, l) plane and VB filter vectors from q0.
template <typename T, int VB>
void spatial_argmax_block(const T* plane, int64_t cols, const T* w, int64_t Qp, const ConvGeometry& g, T* best,
                          int32_t* arg) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  constexpr int n = Simd<T>::n;
  V m[VB], r[VB];
  I at[VB];
  responses<T, VB>(plane, cols, w, Qp, g, 0, 0, m);
  for (int v = 0; v < VB; ++v) at[v] = I{};
  for (int64_t y = 0; y < g.Yo; ++y) {
    for (int64_t x = (y == 0 ? 1 : 0); x < g.Xo; ++x) {
      responses<T, VB>(plane, cols, w, Qp, g, y, x, r);
      const I here = I{} + static_cast<typename Simd<T>::Index>(y * g.Xo + x);
      for (int v = 0; v < VB; ++v) {
        const auto up = replaces(r[v], m[v]);
        m[v] = up ? r[v] : m[v];
        at[v] = up ? here : at[v];
      }
    }
  }
  for (int v = 0; v < VB; ++v) {
    for (int i = 0; i < n; ++i) {
      best[v * n + i] = m[v][i];
      arg[v * n + i] = static_cast<int32_t>(at[v][i]);
    }
  }
}

// The filters in blocks of at most 4 vectors: (first filter, vectors) pairs.
std::vector<std::pair<int64_t, int>> filter_blocks(int64_t Qp, int n) {
  std::vector<std::pair<int64_t, int>> blocks;
  for (int64_t q0 = 0; q0 < Qp; q0 += 4 * n) blocks.emplace_back(q0, static_cast<int>(std::min<int64_t>(4, (Qp - q0) / n)));
  return blocks;
}

// Calls FN<T, VB>(ARGS) for the block's VB (1 to 4).
#define BY_BLOCK(VB, FN, ...)          \
  switch (VB) {                        \
    case 4: FN<T, 4>(__VA_ARGS__); break; \
    case 3: FN<T, 3>(__VA_ARGS__); break; \
    case 2: FN<T, 2>(__VA_ARGS__); break; \
    default: FN<T, 1>(__VA_ARGS__); break; \
  }

// max_{y, x} ft and its first arg-max (flat output position): [B, Co, |H|, Ci, L] each.
std::tuple<Tensor, Tensor> spatial_argmax(const Tensor& xin, const Tensor& bank, int64_t stride, int64_t padding,
                                          int64_t dilation) {
  const ConvGeometry g = conv_geometry(xin, bank, stride, padding, dilation);
  Tensor best = at::empty({bank.size(0), bank.size(1), g.B, g.Ci, g.L}, xin.options());
  Tensor arg = at::empty(best.sizes(), xin.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "spatial_argmax", [&] {
    using T = scalar_t;
    const int64_t Qp = round_up(g.Q, Simd<T>::n);
    const std::vector<T> w = bank_by_tap<T>(bank.data_ptr<T>(), g, Qp);
    const T* xp = xin.data_ptr<T>();
    T* bp = best.data_ptr<T>();
    int32_t* ap = arg.data_ptr<int32_t>();
    at::parallel_for(0, g.B * g.Ci * g.L, 1, [&](int64_t begin, int64_t end) {
      PaddedPlanes<T> scratch;
      std::vector<T> m(Qp);
      std::vector<int32_t> a(Qp);
      for (int64_t bcl = begin; bcl < end; ++bcl) {
        const T* src = xp + bcl * g.Yi * g.Xi;
        scratch.fill(&src, 1, g.Yi, g.Xi, g.pad, g.pad, g.rows, g.cols);
        const T* wcl = w.data() + (bcl % (g.Ci * g.L)) * g.k * g.k * Qp;
        for (const auto& [q0, vb] : filter_blocks(Qp, Simd<T>::n)) {
          BY_BLOCK(vb, spatial_argmax_block, scratch.plane(0), g.cols, wcl + q0, Qp, g, m.data() + q0, a.data() + q0)
        }
        for (int64_t q = 0; q < g.Q; ++q) {  // [Q, B, Ci, L] for now, permuted below
          bp[q * g.B * g.Ci * g.L + bcl] = m[q];
          ap[q * g.B * g.Ci * g.L + bcl] = a[q];
        }
      }
    });
  });
  const auto to_batch_major = [&](const Tensor& t) {
    return t.view({g.Q, g.B, g.Ci, g.L}).transpose(0, 1).contiguous().view({g.B, bank.size(0), bank.size(1), g.Ci, g.L});
  };
  return {to_batch_major(best), to_batch_major(arg)};
}

// The gradients of the spatial maxima s[b, q, c, l] = ft[b, q, c, l] at the flat output position pos[b, q, c, l]
// (from spatial_argmax): grad, pos [B, Co, |H|, Ci, L] -> grad_x [B, Ci * L, Yi, Xi] and grad_w [Co, |H|, Ci, L,
// k, k] (each undefined unless needed). Each statistic sends its gradient to its k x k window and filter only.
std::tuple<Tensor, Tensor> spatial_max_backward(const Tensor& grad_, const Tensor& xin, const Tensor& bank,
                                                const Tensor& pos_, int64_t stride, int64_t padding, int64_t dilation,
                                                bool need_x, bool need_w) {
  const ConvGeometry g = conv_geometry(xin, bank, stride, padding, dilation);
  const Tensor grad = grad_.contiguous();
  const Tensor pos = pos_.contiguous();
  check(grad, xin, "grad");
  const int64_t n_stats = g.B * g.Q * g.Ci * g.L, kk = g.k * g.k;
  TORCH_CHECK(grad.numel() == n_stats, "grad must be [B, Co, |H|, Ci, L]");
  TORCH_CHECK(pos.numel() == n_stats && pos.scalar_type() == at::kInt, "pos must be int32 [B, Co, |H|, Ci, L]");
  Tensor grad_x = need_x ? at::empty_like(xin) : Tensor();
  Tensor grad_w = need_w ? at::empty_like(bank) : Tensor();
  std::vector<int64_t> ty(kk), tx(kk);
  for (int64_t t = 0; t < kk; ++t) {
    ty[t] = g.d * (t / g.k) - g.pad;
    tx[t] = g.d * (t % g.k) - g.pad;
  }
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "spatial_max_backward", [&] {
    using T = scalar_t;
    const T *gp = grad.data_ptr<T>(), *xp = xin.data_ptr<T>(), *wp = bank.data_ptr<T>();
    const int32_t* pp = pos.data_ptr<int32_t>();
    const int64_t CL = g.Ci * g.L, plane = g.Yi * g.Xi;
    // f(t, y * Xi + x) for every tap t of statistic i = (b * Q + q) * CL + cl whose input (y, x) is inside the plane
    const auto each_tap = [&](int64_t i, auto&& f) {
      const int64_t y0 = (pp[i] / g.Xo) * g.stride, x0 = (pp[i] % g.Xo) * g.stride;
      for (int64_t t = 0; t < kk; ++t) {
        const int64_t y = y0 + ty[t], x = x0 + tx[t];
        if (y >= 0 && y < g.Yi && x >= 0 && x < g.Xi) f(t, y * g.Xi + x);
      }
    };
    if (need_x) {  // one task per input plane (b, cl): no two tasks write the same values
      at::parallel_for(0, g.B * CL, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bcl = begin; bcl < end; ++bcl) {
          const int64_t b = bcl / CL, cl = bcl % CL;
          T* dx = grad_x.data_ptr<T>() + bcl * plane;
          std::fill(dx, dx + plane, T(0));
          for (int64_t q = 0; q < g.Q; ++q) {
            const int64_t i = (b * g.Q + q) * CL + cl;
            const T gv = gp[i];
            const T* w = wp + (q * CL + cl) * kk;
            if (gv != T(0)) each_tap(i, [&](int64_t t, int64_t at) { dx[at] += gv * w[t]; });
          }
        }
      });
    }
    if (need_w) {  // one task per filter (q, cl), summed over the batch
      at::parallel_for(0, g.Q * CL, 1, [&](int64_t begin, int64_t end) {
        for (int64_t qcl = begin; qcl < end; ++qcl) {
          const int64_t q = qcl / CL, cl = qcl % CL;
          T* dw = grad_w.data_ptr<T>() + qcl * kk;
          std::fill(dw, dw + kk, T(0));
          for (int64_t b = 0; b < g.B; ++b) {
            const int64_t i = (b * g.Q + q) * CL + cl;
            const T gv = gp[i];
            const T* xs = xp + (b * CL + cl) * plane;
            if (gv != T(0)) each_tap(i, [&](int64_t t, int64_t at) { dw[t] += gv * xs[at]; });
          }
        }
      });
    }
  });
  return {grad_x, grad_w};
}

// The channel c* of max_c a[b, q, c, l] ft[b, q, c, l, y, x] (ft without a), that maximum and sum_c a ft, for one
// (b, l), VB filter vectors from q0 and TP output positions from p0 (flat): written pixel-major to chan, best and
// sum [Yo * Xo, Qp]. The running maximum, arg-max and sum of the TP x VB responses stay in registers over the
// channels, and each channel's filter vectors are loaded once for all TP positions.
template <typename T, int VB, int TP>
inline void channel_argmax_tile(const PaddedPlanes<T>& planes, const T* w, const T* a, int64_t Qp,
                                const ConvGeometry& g, int64_t p0, typename Simd<T>::Index* chan, T* sum, T* best) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  using Index = typename Simd<T>::Index;
  constexpr int n = Simd<T>::n;
  const int64_t kkQ = g.k * g.k * Qp, plane = planes.rows * planes.cols;
  int64_t at0[TP];  // offset of each position's window in a padded plane
  for (int t = 0; t < TP; ++t) {
    const int64_t y = (p0 + t) / g.Xo, x = (p0 + t) % g.Xo;
    at0[t] = y * g.stride * planes.cols + x * g.stride;
  }
  V m[TP][VB], s[TP][VB];
  I arg[TP][VB];
  for (int64_t c = 0; c < g.Ci; ++c) {
    V r[TP][VB];
    for (int t = 0; t < TP; ++t)
      for (int v = 0; v < VB; ++v) r[t][v] = V{};
    const T* wc = w + c * g.L * kkQ;
    const T* xc = planes.data.data() + c * plane;
    for (int64_t ty = 0; ty < g.k; ++ty) {
      for (int64_t tx = 0; tx < g.k; ++tx) {
        const T* wt = wc + (ty * g.k + tx) * Qp;
        V wv[VB];
        for (int v = 0; v < VB; ++v) wv[v] = loadu<V>(wt + v * n);
        const int64_t off = g.d * (ty * planes.cols + tx);
        for (int t = 0; t < TP; ++t) {
          const V xv = splat<V>(xc[at0[t] + off]);
          for (int v = 0; v < VB; ++v) r[t][v] += xv * wv[v];
        }
      }
    }
    if (a) {
      for (int v = 0; v < VB; ++v) {
        const V av = loadu<V>(a + c * Qp + v * n);
        for (int t = 0; t < TP; ++t) r[t][v] *= av;
      }
    }
    if (c == 0) {
      for (int t = 0; t < TP; ++t)
        for (int v = 0; v < VB; ++v) {
          m[t][v] = s[t][v] = r[t][v];
          arg[t][v] = I{};
        }
    } else {
      const I here = I{} + static_cast<Index>(c);
      for (int t = 0; t < TP; ++t)
        for (int v = 0; v < VB; ++v) {
          s[t][v] += r[t][v];
          const auto up = replaces(r[t][v], m[t][v]);
          m[t][v] = up ? r[t][v] : m[t][v];
          arg[t][v] = up ? here : arg[t][v];
        }
    }
  }
  for (int t = 0; t < TP; ++t) {
    const int64_t px = (p0 + t) * Qp;
    for (int v = 0; v < VB; ++v) {
      storeu(sum + px + v * n, s[t][v]);
      storeu(best + px + v * n, m[t][v]);
      storeu(chan + px + v * n, arg[t][v]);
    }
  }
}

// channel_argmax_tile over all output positions: tiles of 12 / VB positions, then single ones.
template <typename T, int VB>
void channel_argmax_block(const PaddedPlanes<T>& planes, const T* w, const T* a, int64_t Qp, const ConvGeometry& g,
                          typename Simd<T>::Index* chan, T* sum, T* best) {
  constexpr int TP = 12 / (VB == 3 ? 4 : VB * 2);  // 6, 3, 3, 1 positions for 1 to 4 vectors
  const int64_t P = g.Yo * g.Xo;
  int64_t p0 = 0;
  for (; p0 + TP <= P; p0 += TP) channel_argmax_tile<T, VB, TP>(planes, w, a, Qp, g, p0, chan, sum, best);
  for (; p0 < P; ++p0) channel_argmax_tile<T, VB, 1>(planes, w, a, Qp, g, p0, chan, sum, best);
}

// channel [B, L, Co, |H|, Yo, Xo] (uint8 for Ci <= 256, else int32), summed = sum_c a ft and maximum = max_c a ft
// (same shape).
std::tuple<Tensor, Tensor, Tensor> channel_argmax(const Tensor& xin, const Tensor& bank, const Maybe& a_, int64_t stride,
                                          int64_t padding, int64_t dilation) {
  const ConvGeometry g = conv_geometry(xin, bank, stride, padding, dilation);
  const Tensor a = a_.has_value() ? *a_ : Tensor();
  if (a.defined()) {
    check(a, xin, "a");
    TORCH_CHECK(a.numel() == g.B * g.Q * g.Ci * g.L, "a must be [B, Co, |H|, Ci, L]");
  }
  const std::vector<int64_t> shape{g.B, g.L, bank.size(0), bank.size(1), g.Yo, g.Xo};
  Tensor summed = at::empty(shape, xin.options());
  Tensor maximum = at::empty(shape, xin.options());
  Tensor channel = at::empty(shape, xin.options().dtype(g.Ci <= 256 ? at::kByte : at::kInt));
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "channel_argmax", [&] {
    using T = scalar_t;
    const int64_t Qp = round_up(g.Q, Simd<T>::n), P = g.Yo * g.Xo;
    const std::vector<T> w = bank_by_tap<T>(bank.data_ptr<T>(), g, Qp);
    const T* xp = xin.data_ptr<T>();
    const T* ap = a.defined() ? a.data_ptr<T>() : nullptr;
    T* sp = summed.data_ptr<T>();
    T* mp = maximum.data_ptr<T>();
    uint8_t* c8 = channel.scalar_type() == at::kByte ? channel.data_ptr<uint8_t>() : nullptr;
    int32_t* c32 = c8 ? nullptr : channel.data_ptr<int32_t>();
    at::parallel_for(0, g.B * g.L, 1, [&](int64_t begin, int64_t end) {
      PaddedPlanes<T> scratch;
      std::vector<const T*> src(g.Ci);
      std::vector<T> aq(ap ? g.Ci * Qp : 0, T(0)), sum(P * Qp), best(P * Qp);
      std::vector<typename Simd<T>::Index> chan(P * Qp);
      for (int64_t bl = begin; bl < end; ++bl) {
        const int64_t b = bl / g.L, l = bl % g.L;
        for (int64_t c = 0; c < g.Ci; ++c) src[c] = xp + ((b * g.Ci + c) * g.L + l) * g.Yi * g.Xi;
        scratch.fill(src.data(), g.Ci, g.Yi, g.Xi, g.pad, g.pad, g.rows, g.cols);
        if (ap) {  // a[b, q, c, l] -> aq[c, q]
          for (int64_t q = 0; q < g.Q; ++q)
            for (int64_t c = 0; c < g.Ci; ++c) aq[c * Qp + q] = ap[((b * g.Q + q) * g.Ci + c) * g.L + l];
        }
        const T* wl = w.data() + l * g.k * g.k * Qp;
        for (const auto& [q0, vb] : filter_blocks(Qp, Simd<T>::n)) {
          BY_BLOCK(vb, channel_argmax_block, scratch, wl + q0, ap ? aq.data() + q0 : nullptr, Qp, g, chan.data() + q0,
                   sum.data() + q0, best.data() + q0)
        }
        // pixel-major scratch -> [q, pixel] of this (b, l), in tiles of 16 pixels that stay in L1
        const int64_t base = bl * g.Q * P;
        for (int64_t p0 = 0; p0 < P; p0 += 16) {
          const int64_t p1 = std::min(P, p0 + 16);
          for (int64_t q = 0; q < g.Q; ++q) {
            const int64_t out = base + q * P;
            for (int64_t p = p0; p < p1; ++p) {
              sp[out + p] = sum[p * Qp + q];
              mp[out + p] = best[p * Qp + q];
            }
            if (c8) {
              for (int64_t p = p0; p < p1; ++p) c8[out + p] = static_cast<uint8_t>(chan[p * Qp + q]);
            } else {
              for (int64_t p = p0; p < p1; ++p) c32[out + p] = static_cast<int32_t>(chan[p * Qp + q]);
            }
          }
        }
      }
    });
  });
  return {channel, summed, maximum};
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

// n integers from p as the lanes of an index vector (a plain loop: GCC vectorises it, unlike
// __builtin_convertvector from bytes).
template <typename I, int n, typename S>
inline I widen(const S* p) {
  I out;
  for (int i = 0; i < n; ++i) out[i] = p[i];
  return out;
}

// G[i] = gs[i] + [won[i] = c] gm[i] for i < N (gs null: zero; won: c8 or c32), vectorised.
template <typename T>
void channel_gradient(const T* gs, const T* gm, const uint8_t* c8, const int32_t* c32, int64_t c, int64_t N, T* G) {
  using V = typename Simd<T>::V;
  using I = typename Simd<T>::I;
  using Index = typename Simd<T>::Index;
  constexpr int n = Simd<T>::n;
  const I cv = I{} + static_cast<Index>(c);
  int64_t i = 0;
  for (; i + n <= N; i += n) {
    const I won = c8 ? widen<I, n>(c8 + i) : widen<I, n>(c32 + i);
    const I kept = loadu<I>(gm + i) & (won == cv);  // gm's bits where c won, else +0
    V add;
    std::memcpy(&add, &kept, sizeof(V));
    storeu(G + i, gs ? loadu<V>(gs + i) + add : add);
  }
  for (; i < N; ++i) {
    const int64_t won = c8 ? c8[i] : c32[i];
    G[i] = (gs ? gs[i] : T(0)) + (won == c ? gm[i] : T(0));
  }
}

// The backward of the channel statistics summed[b, l, q] = sum_c a[b, q, c, l] ft[b, q, c, l] and maximum[b, l, q]
// = a[b, q, c*, l] ft[b, q, c*, l] (c* = channel[b, l, q]; a = 1 if undefined), for stride 1, all [B, L, Co, |H|,
// Yo, Xo]. The gradient reaching ft[b, q, c, l, p] is a[b, q, c, l] G_c[b, l, q, p] with G_c = grad_sum + [c = c*]
// grad_max (an undefined gradient is zero). Returns grad_x [B, Ci * L, Yi, Xi] (undefined unless need_x) and the
// correlations corr[b, l, q, c, t] = sum_p G_c[b, l, q, p] xin[b, (c, l), p + off_t] ([B, L, Co, |H|, Ci, k, k],
// undefined unless need_corr), from which the caller forms the filter gradient sum_b a corr and the gradient of a,
// sum_t bank corr. grad_x is a correlation of the gradient planes with the flipped, a-weighted filters; without
// grad_max all channels share the planes grad_sum, else each channel c has its own G_c.
std::tuple<Tensor, Tensor> channel_stats_backward(const Maybe& grad_sum_, const Maybe& grad_max_, const Tensor& xin,
                                                  const Tensor& bank, const Maybe& a_, const Maybe& channel_,
                                                  int64_t padding, int64_t dilation, bool need_x, bool need_corr) {
  const ConvGeometry g = conv_geometry(xin, bank, 1, padding, dilation);
  const int64_t P = g.Yo * g.Xo, kk = g.k * g.k;
  const auto gradient = [&](const Maybe& t) {
    if (!t.has_value() || !t->defined()) return Tensor();
    Tensor c = t->contiguous();
    check(c, xin, "grad");
    TORCH_CHECK(c.numel() == g.B * g.L * g.Q * P, "a gradient must be [B, L, Co, |H|, Yo, Xo]");
    return c;
  };
  const Tensor grad_sum = gradient(grad_sum_), grad_max = gradient(grad_max_);
  TORCH_CHECK(grad_sum.defined() || grad_max.defined(), "channel_stats_backward: no gradient");
  const Tensor a = a_.has_value() ? *a_ : Tensor();
  if (a.defined()) {
    check(a, xin, "a");
    TORCH_CHECK(a.numel() == g.B * g.Q * g.Ci * g.L, "a must be [B, Co, |H|, Ci, L]");
  }
  Tensor channel;
  if (grad_max.defined()) {
    TORCH_CHECK(channel_.has_value() && channel_->defined(), "the gradient of the maximum needs its channel");
    channel = channel_->contiguous();
    TORCH_CHECK(channel.numel() == g.B * g.L * g.Q * P, "channel must be [B, L, Co, |H|, Yo, Xo]");
    TORCH_CHECK(channel.scalar_type() == at::kByte || channel.scalar_type() == at::kInt,
                "channel must be uint8 or int32");
  }
  Tensor grad_x = need_x ? at::empty_like(xin) : Tensor();
  Tensor corr = need_corr ? at::empty({g.B, g.L, bank.size(0), bank.size(1), g.Ci, g.k, g.k}, xin.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(xin.scalar_type(), "channel_stats_backward", [&] {
    using T = scalar_t;
    constexpr int n = Simd<T>::n;
    const T* gs = grad_sum.defined() ? grad_sum.data_ptr<T>() : nullptr;
    const T* gm = grad_max.defined() ? grad_max.data_ptr<T>() : nullptr;
    const uint8_t* c8 = gm && channel.scalar_type() == at::kByte ? channel.data_ptr<uint8_t>() : nullptr;
    const int32_t* c32 = gm && !c8 ? channel.data_ptr<int32_t>() : nullptr;
    const T* xp = xin.data_ptr<T>();
    const T* wp = bank.data_ptr<T>();
    const T* ap = a.defined() ? a.data_ptr<T>() : nullptr;
    const bool shared = gm == nullptr;  // every channel sees the planes grad_sum
    const int64_t Xa = round_up(g.Xo, n);
    at::parallel_for(0, g.B * g.L, 1, [&](int64_t begin, int64_t end) {
      PaddedPlanes<T> scratch, xs;
      std::vector<T> outbuf, W(need_x ? g.Ci * g.Q * kk : 0), gpad(need_corr ? g.Yo * Xa : 0, T(0));
      std::vector<T> G(shared ? 0 : g.Q * P);
      std::vector<const T*> src(std::max(g.Ci, g.Q));
      std::vector<T*> dst(g.Ci);
      for (int64_t bl = begin; bl < end; ++bl) {
        const int64_t b = bl / g.L, l = bl % g.L, row = bl * g.Q * P;
        if (need_x) {  // W[c, q, t'] = a[b, q, c, l] bank[q, c, l, k * k - 1 - t']
          for (int64_t c = 0; c < g.Ci; ++c) {
            for (int64_t q = 0; q < g.Q; ++q) {
              const T aq = ap ? ap[((b * g.Q + q) * g.Ci + c) * g.L + l] : T(1);
              const T* w = wp + ((q * g.Ci + c) * g.L + l) * kk;
              T* Wcq = W.data() + (c * g.Q + q) * kk;
              for (int64_t t = 0; t < kk; ++t) Wcq[t] = aq * w[kk - 1 - t];
            }
            dst[c] = grad_x.data_ptr<T>() + ((b * g.Ci + c) * g.L + l) * g.Yi * g.Xi;
          }
        }
        T* cp = need_corr ? corr.data_ptr<T>() + bl * g.Q * g.Ci * kk : nullptr;
        if (need_corr) {
          for (int64_t c = 0; c < g.Ci; ++c) src[c] = xp + ((b * g.Ci + c) * g.L + l) * g.Yi * g.Xi;
          xs.fill(src.data(), g.Ci, g.Yi, g.Xi, g.pad, g.pad, g.Yo + g.d * (g.k - 1), Xa + g.d * (g.k - 1));
          std::fill(cp, cp + g.Q * g.Ci * kk, T(0));
        }
        const auto correlate_planes = [&](const T* planes, int64_t c0, int64_t nc) {
          // grad_x of channels c0 ... c0 + nc - 1 and their correlations, from the Q planes [Q, P] they share
          if (need_x) {
            for (int64_t q = 0; q < g.Q; ++q) src[q] = planes + q * P;
            correlate_plane<T>(src.data(), g.Q, g.Yo, g.Xo, W.data() + c0 * g.Q * kk, nc, g.k, g.d,
                               g.d * (g.k - 1) - g.pad, dst.data() + c0, g.Yi, g.Xi, scratch, outbuf, c0 > 0);
          }
          if (need_corr) {
            for (int64_t q = 0; q < g.Q; ++q) {
              for (int64_t y = 0; y < g.Yo; ++y) std::memcpy(&gpad[y * Xa], planes + q * P + y * g.Xo, g.Xo * sizeof(T));
              weight_grad<T>(xs, c0, nc, gpad.data(), g.Yo, Xa, g.k, g.d, cp + (q * g.Ci + c0) * kk);
            }
          }
        };
        if (shared) {
          correlate_planes(gs + row, 0, g.Ci);
          continue;
        }
        for (int64_t c = 0; c < g.Ci; ++c) {  // G_c = grad_sum + [c = c*] grad_max
          channel_gradient<T>(gs ? gs + row : nullptr, gm + row, c8 ? c8 + row : nullptr, c32 ? c32 + row : nullptr, c,
                              g.Q * P, G.data());
          correlate_planes(G.data(), c, 1);
        }
      }
    });
  });
  return {grad_x, corr};
}

// The spatial attention's weighting: out[b, m] = sum_l a[b, l, m] summed[b, l, m] with a = sigmoid(logits), and its
// backward, for a, summed [B, L, M] (M = Co * |H| * Yo * Xo) and out [B, M]. The backward gives d summed = g a and
// d logits = g summed a (1 - a) in one pass, from a (saved in forward) and summed.
Tensor weighted_sum_forward(const Tensor& a, const Tensor& summed) {
  TORCH_CHECK(a.dim() >= 2 && a.sizes() == summed.sizes(), "a and summed must be [B, L, ...] of one shape");
  check(a, a, "a");
  check(summed, a, "summed");
  const int64_t B = a.size(0), L = a.size(1), M = a.numel() / std::max<int64_t>(B * L, 1);
  std::vector<int64_t> shape{B};
  for (int64_t i = 2; i < a.dim(); ++i) shape.push_back(a.size(i));
  Tensor out = at::empty(shape, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "weighted_sum_forward", [&] {
    using T = scalar_t;
    const T *ap = a.data_ptr<T>(), *sp = summed.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        T* o = op + b * M;
        for (int64_t l = 0; l < L; ++l) {
          const T* al = ap + (b * L + l) * M;
          const T* sl = sp + (b * L + l) * M;
          if (l == 0) {
            for (int64_t m = 0; m < M; ++m) o[m] = al[m] * sl[m];
          } else {
            for (int64_t m = 0; m < M; ++m) o[m] += al[m] * sl[m];
          }
        }
      }
    });
  });
  return out;
}

std::tuple<Tensor, Tensor> weighted_sum_backward(const Tensor& grad_, const Tensor& a, const Tensor& summed) {
  const Tensor grad = grad_.contiguous();
  check(grad, a, "grad");
  const int64_t B = a.size(0), L = a.size(1), M = a.numel() / std::max<int64_t>(B * L, 1);
  TORCH_CHECK(grad.numel() == B * M, "grad must be [B, ...] of the output's shape");
  Tensor grad_summed = at::empty_like(summed), grad_logits = at::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "weighted_sum_backward", [&] {
    using T = scalar_t;
    const T *gp = grad.data_ptr<T>(), *ap = a.data_ptr<T>(), *sp = summed.data_ptr<T>();
    T *dsp = grad_summed.data_ptr<T>(), *dlp = grad_logits.data_ptr<T>();
    at::parallel_for(0, B * L, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bl = begin; bl < end; ++bl) {
        const T* g = gp + (bl / L) * M;
        const T *al = ap + bl * M, *sl = sp + bl * M;
        T *ds = dsp + bl * M, *dl = dlp + bl * M;
        for (int64_t m = 0; m < M; ++m) {
          ds[m] = g[m] * al[m];
          dl[m] = g[m] * sl[m] * al[m] * (T(1) - al[m]);
        }
      }
    });
  });
  return {grad_summed, grad_logits};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("planewise_forward", &planewise_forward);
  m.def("planewise_backward", &planewise_backward);
  m.def("weighted_sum_forward", &weighted_sum_forward);
  m.def("weighted_sum_backward", &weighted_sum_backward);
  m.def("spatial_argmax", &spatial_argmax);
  m.def("spatial_max_backward", &spatial_max_backward);
  m.def("channel_argmax", &channel_argmax);
  m.def("selected_forward", &selected_forward);
  m.def("selected_backward", &selected_backward);
  m.def("channel_stats_backward", &channel_stats_backward);
}
