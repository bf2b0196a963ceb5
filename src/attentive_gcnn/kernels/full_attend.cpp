// Fused CPU kernels of the lean full attention (see attentive_gcnn/nn/attention/lean.py).
//
// - planewise_forward / planewise_backward: the spatial-attention conv, where every plane p has its own filter
//   over S statistics: out[b, p] = sum_s w[p, s] (*) in_s[b, p], stride 1, padding d * (k // 2), dilation d.
//   Inputs in_s [B, P, Y, X] (one tensor per statistic, no stacking), w [P, S, k, k], out [B, P, Y', X'].
// - spatial_argmax: max and first arg-max over output positions of every intermediate response
//   ft[b, o, j, c, l] = xin[b, (c, l)] (*) bank[o, j, c, l], without ft: [B, Co, |H|, Ci, L] each.
// - channel_argmax: the channel c* of max_c a[b, o, j, c, l] ft[b, o, j, c, l, y, x] and ft there (the winner),
//   l-major [B, L, Co, |H|, Y', X'].
// - selected_backward: the input and filter gradients of a[c*] ft[c*] (SelectedResponses in lean.py).
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
  typedef int32_t I __attribute__((vector_size(64)));
  static constexpr int n = 16;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t I __attribute__((vector_size(64)));
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

  // Copy planes in[i] (Y x X) into zero-padded planes whose element (r, q) is in[r - top, q - left].
  void fill(const T* const* in, int64_t n, int64_t Y, int64_t X, int64_t top, int64_t left, int64_t rows_,
            int64_t cols_) {
    rows = rows_;
    cols = cols_;
    data.assign(static_cast<size_t>(n * rows * cols), T(0));
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

// One plane: SI inputs (Y x X) -> SO outputs (Yo x Xo), weights W [SO, SI, k, k], padding pad.
template <typename T>
void correlate_plane(const T* const* in, int64_t SI, int64_t Y, int64_t X, const T* W, int64_t SO, int64_t k,
                     int64_t d, int64_t pad, T* const* out, int64_t Yo, int64_t Xo, PaddedPlanes<T>& scratch,
                     std::vector<T>& outbuf) {
  constexpr int n = Simd<T>::n;
  const int R = Yo >= 8 ? 8 : (Yo >= 4 ? 4 : (Yo >= 2 ? 2 : 1));
  const int64_t Xa = round_up(Xo, n), Yo8 = round_up(Yo, R);
  scratch.fill(in, SI, Y, X, pad, pad, Yo8 + d * (k - 1), Xa + d * (k - 1));
  outbuf.resize(static_cast<size_t>(Yo8 * Xa));
  for (int64_t o = 0; o < SO; ++o) {
    const T* Wo = W + o * SI * k * k;
    switch (R) {
      case 8: correlate_rows<T, 8>(scratch, SI, Wo, k, d, Yo8, Xa, outbuf.data()); break;
      case 4: correlate_rows<T, 4>(scratch, SI, Wo, k, d, Yo8, Xa, outbuf.data()); break;
      case 2: correlate_rows<T, 2>(scratch, SI, Wo, k, d, Yo8, Xa, outbuf.data()); break;
      default: correlate_rows<T, 1>(scratch, SI, Wo, k, d, Yo8, Xa, outbuf.data()); break;
    }
    for (int64_t y = 0; y < Yo; ++y) std::memcpy(out[o] + y * Xo, outbuf.data() + y * Xa, Xo * sizeof(T));
  }
}

// dW[i, ty, tx] += sum_{y, x} g[y, x] in_i[y + d ty - pad, x + d tx - pad] for one plane; g is zero-padded to
// (Yo, Xa) columns so that the vector tails add nothing. KT > 0: the kernel size at compile time (the tx
// accumulators stay in registers); KT = 0: any size, one tap at a time.
template <typename T, int KT>
void weight_grad_plane(const PaddedPlanes<T>& in, int64_t SI, const T* g, int64_t Yo, int64_t Xa, int64_t k,
                       int64_t d, T* dW) {
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
          const T* row = in.plane(i) + (y + d * ty) * cols;
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
            const T* row = in.plane(i) + (y + d * ty) * cols + d * tx;
            for (int64_t x0 = 0; x0 < Xa; x0 += n) acc += loadu<V>(g + y * Xa + x0) * loadu<V>(row + x0);
          }
          dw[tx] += hsum<T>(acc, n);
        }
      }
    }
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
            switch (g.k) {
              case 3: weight_grad_plane<T, 3>(scratch, g.S, gpad.data(), g.Yo, Xa, g.k, g.d, dw); break;
              case 5: weight_grad_plane<T, 5>(scratch, g.S, gpad.data(), g.Yo, Xa, g.k, g.d, dw); break;
              case 7: weight_grad_plane<T, 7>(scratch, g.S, gpad.data(), g.Yo, Xa, g.k, g.d, dw); break;
              default: weight_grad_plane<T, 0>(scratch, g.S, gpad.data(), g.Yo, Xa, g.k, g.d, dw); break;
            }
          }
        }
      });
    }
  });
  return {grad_inputs, grad_w};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("planewise_forward", &planewise_forward);
  m.def("planewise_backward", &planewise_backward);
}
