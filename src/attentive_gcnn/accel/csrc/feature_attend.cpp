// Fused CPU passes of the alpha-F attention x' = x * (1 - a_C a_X) (see attentive_gcnn/accel/feature.py).
//
// Layouts (contiguous): x, grad [B, C, n, P]; channel map a [B, C, n]; spatial map ax [B, n, P]. An undefined
// tensor stands for a part that is switched off. Each pass reads the large tensors once; the small maps in between
// are computed by the caller with torch ops. Index outputs are int32.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <optional>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using Maybe = std::optional<Tensor>;

Tensor get(const Maybe& t) { return t.has_value() ? *t : Tensor(); }

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// sum_p u[p] v[p] (sum_p u[p] without v), vectorised. Pragmas cannot sit inside AT_DISPATCH's macro argument.
template <typename T>
T dot(const T* u, const T* v, int64_t P) {
  T acc = 0;
  if (v) {
#pragma omp simd reduction(+ : acc)
    for (int64_t p = 0; p < P; ++p) acc += u[p] * v[p];
  } else {
#pragma omp simd reduction(+ : acc)
    for (int64_t p = 0; p < P; ++p) acc += u[p];
  }
  return acc;
}

// max_p u[p], vectorised; with a NaN in u the result is unspecified (the caller checks).
template <typename T>
T row_max(const T* u, int64_t P) {
  T best = u[0];
#pragma omp simd reduction(max : best)
  for (int64_t p = 1; p < P; ++p) best = u[p] > best ? u[p] : best;
  return best;
}

// The first p with u[p] == value (P if none), a block of 16 positions per test.
template <typename T>
int32_t first_equal(const T* u, T value, int64_t P) {
  constexpr int64_t W = 16;
  int64_t p0 = 0;
  for (; p0 + W <= P; p0 += W) {
    bool hit = false;
#pragma omp simd reduction(| : hit)
    for (int64_t i = 0; i < W; ++i) hit |= u[p0 + i] == value;
    if (hit) break;
  }
  for (int64_t p = p0; p < P; ++p) {
    if (u[p] == value) return static_cast<int32_t>(p);
  }
  return static_cast<int32_t>(P);
}

void check(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type(), name,
              " must be a contiguous CPU tensor of the dtype of x");
}

// Spatial mean, max and arg-max over P of every row (b, c, h): [B, C, n] each.
std::tuple<Tensor, Tensor, Tensor> channel_stats(const Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "x must be [B, C, n, P]");
  check(x, x, "x");
  const int64_t rows = x.size(0) * x.size(1) * x.size(2), P = x.size(3);
  Tensor mean = at::empty(x.sizes().slice(0, 3), x.options());
  Tensor maxv = at::empty_like(mean);
  Tensor pos = at::empty(mean.sizes(), x.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_stats", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t *mp = mean.data_ptr<scalar_t>(), *vp = maxv.data_ptr<scalar_t>();
    int32_t* ip = pos.data_ptr<int32_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = xp + r * P;
        const scalar_t sum = dot<scalar_t>(row, nullptr, P);
        scalar_t best = row_max<scalar_t>(row, P);
        const int32_t arg_found = first_equal<scalar_t>(row, best, P);  // the first arg-max, as torch.max on the CPU
        int32_t arg = arg_found < P ? arg_found : static_cast<int32_t>(P - 1);
        if (sum != sum) {  // a NaN in the row: the first NaN is the max, as in torch.max
          for (int64_t p = 0; p < P; ++p) {
            if (row[p] != row[p]) {
              arg = static_cast<int32_t>(p);
              best = row[p];
              break;
            }
          }
        }
        mp[r] = sum / static_cast<scalar_t>(P);
        vp[r] = best;
        ip[r] = arg;
      }
    });
  });
  return {mean, maxv, pos};
}

// Channel mean, max and arg-max of g = a * x (g = x without a) at every (b, h, p): [B, n, P] each.
std::tuple<Tensor, Tensor, Tensor> spatial_stats(const Tensor& x, const Maybe& a_) {
  const Tensor a = get(a_);
  TORCH_CHECK(x.dim() == 4, "x must be [B, C, n, P]");
  check(x, x, "x");
  if (a.defined()) check(a, x, "a");
  const int64_t B = x.size(0), C = x.size(1), n = x.size(2), P = x.size(3);
  Tensor mean = at::empty({B, n, P}, x.options());
  Tensor maxv = at::empty_like(mean);
  Tensor arg = at::empty(mean.sizes(), x.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_stats", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* ap = ptr_or_null<scalar_t>(a);
    scalar_t *sp = mean.data_ptr<scalar_t>(), *mp = maxv.data_ptr<scalar_t>();
    int32_t* wp = arg.data_ptr<int32_t>();
    at::parallel_for(0, B * n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / n, h = r % n;
        scalar_t *s = sp + r * P, *m = mp + r * P;
        int32_t* w = wp + r * P;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t row = (b * C + c) * n + h;
          const scalar_t* xr = xp + row * P;
          const scalar_t ac = ap ? ap[row] : scalar_t(1);
          if (c == 0) {
            for (int64_t p = 0; p < P; ++p) {
              const scalar_t v = xr[p] * ac;
              s[p] = v;
              m[p] = v;
              w[p] = 0;
            }
          } else {
            const int32_t ci = static_cast<int32_t>(c);
            for (int64_t p = 0; p < P; ++p) {
              const scalar_t v = xr[p] * ac;
              s[p] += v;
              const bool take = (v > m[p] || v != v) && m[p] == m[p];  // the first NaN stays, as in torch.max
              m[p] = take ? v : m[p];
              w[p] = take ? ci : w[p];
            }
          }
        }
        for (int64_t p = 0; p < P; ++p) s[p] /= static_cast<scalar_t>(C);
      }
    });
  });
  return {mean, maxv, arg};
}

// x' = x - (a x) ax (or (a x) ax with `product`); a or ax may be undefined (then taken as absent, not as 1).
Tensor apply(const Tensor& x, const Maybe& a_, const Maybe& ax_, bool product) {
  const Tensor a = get(a_), ax = get(ax_);
  check(x, x, "x");
  if (a.defined()) check(a, x, "a");
  if (ax.defined()) check(ax, x, "ax");
  const int64_t B = x.size(0), C = x.size(1), n = x.size(2), P = x.size(3);
  Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apply", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *ap = ptr_or_null<scalar_t>(a), *axp = ptr_or_null<scalar_t>(ax);
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * C * n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / (C * n), h = row % n;
        const scalar_t* xr = xp + row * P;
        scalar_t* o = op + row * P;
        const scalar_t ac = ap ? ap[row] : scalar_t(1);
        if (axp) {
          const scalar_t* m = axp + (b * n + h) * P;
          if (product) {
            for (int64_t p = 0; p < P; ++p) o[p] = (xr[p] * ac) * m[p];
          } else {
            for (int64_t p = 0; p < P; ++p) o[p] = xr[p] - (xr[p] * ac) * m[p];
          }
        } else if (product) {
          for (int64_t p = 0; p < P; ++p) o[p] = xr[p] * ac;
        } else {
          for (int64_t p = 0; p < P; ++p) o[p] = xr[p] - xr[p] * ac;
        }
      }
    });
  });
  return out;
}

// The gradient reaching the spatial map: sign * sum_c grad * x * a, [B, n, P].
Tensor spatial_map_grad(const Tensor& grad, const Tensor& x, const Maybe& a_, double sign) {
  const Tensor a = get(a_);
  check(x, x, "x");
  check(grad, x, "grad");
  if (a.defined()) check(a, x, "a");
  const int64_t B = x.size(0), C = x.size(1), n = x.size(2), P = x.size(3);
  Tensor out = at::empty({B, n, P}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_map_grad", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *gp = grad.data_ptr<scalar_t>(), *ap = ptr_or_null<scalar_t>(a);
    scalar_t* op = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(sign);
    at::parallel_for(0, B * n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / n, h = r % n;
        scalar_t* acc = op + r * P;
        for (int64_t p = 0; p < P; ++p) acc[p] = 0;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t row = (b * C + c) * n + h;
          const scalar_t *xr = xp + row * P, *gr = gp + row * P;
          const scalar_t ac = ap ? ap[row] : scalar_t(1);
          for (int64_t p = 0; p < P; ++p) acc[p] += (gr[p] * xr[p]) * ac;
        }
        for (int64_t p = 0; p < P; ++p) acc[p] *= s;
      }
    });
  });
  return out;
}

// The rest of backward, given the gradients of the spatial statistics (g_mean, g_max at arg-max `winner`; all
// undefined without spatial attention). With g_c = sign * grad * ax + g_mean / C + [c == winner] g_max (sign * grad
// without spatial attention): returns grad_a = sum_p g_c x ([B, C, n], if `need_a`) and
// grad_x = g_c a + grad (without `product`; g_c a with it), if `need_x`.
std::tuple<Tensor, Tensor> backward_rest(const Tensor& grad, const Tensor& x, const Maybe& a_, const Maybe& ax_,
                                         const Maybe& g_mean_, const Maybe& g_max_, const Maybe& winner_,
                                         double sign, bool product, bool need_x, bool need_a) {
  const Tensor a = get(a_), ax = get(ax_), g_mean = get(g_mean_), g_max = get(g_max_), winner = get(winner_);
  check(x, x, "x");
  check(grad, x, "grad");
  if (a.defined()) check(a, x, "a");
  const bool spatial = ax.defined();
  if (spatial) {
    check(ax, x, "ax");
    check(g_mean, x, "g_mean");
    check(g_max, x, "g_max");
    TORCH_CHECK(winner.scalar_type() == at::kInt && winner.is_contiguous(), "winner must be contiguous int32");
  }
  const int64_t B = x.size(0), C = x.size(1), n = x.size(2), P = x.size(3);
  Tensor grad_x = need_x ? at::empty_like(x) : Tensor();
  Tensor grad_a = need_a ? at::empty({B, C, n}, x.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "backward_rest", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *gp = grad.data_ptr<scalar_t>(), *ap = ptr_or_null<scalar_t>(a);
    const scalar_t *axp = ptr_or_null<scalar_t>(ax), *gmp = ptr_or_null<scalar_t>(g_mean),
                   *gxp = ptr_or_null<scalar_t>(g_max);
    const int32_t* wp = spatial ? winner.data_ptr<int32_t>() : nullptr;
    scalar_t* gxo = need_x ? grad_x.data_ptr<scalar_t>() : nullptr;
    scalar_t* gao = need_a ? grad_a.data_ptr<scalar_t>() : nullptr;
    const scalar_t s = static_cast<scalar_t>(sign), channels = static_cast<scalar_t>(C);
    at::parallel_for(0, B * C * n, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buf(P);
      scalar_t* gc = buf.data();
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / (C * n), c = (row / n) % C, h = row % n;
        const scalar_t *xr = xp + row * P, *gr = gp + row * P;
        if (spatial) {
          const int64_t off = (b * n + h) * P;
          const scalar_t *m = axp + off, *gm = gmp + off, *gx = gxp + off;
          const int32_t* w = wp + off;
          const int32_t ci = static_cast<int32_t>(c);
          for (int64_t p = 0; p < P; ++p) {
            const scalar_t v = (s * gr[p]) * m[p] + gm[p] / channels;
            gc[p] = w[p] == ci ? v + gx[p] : v;
          }
        } else {
          for (int64_t p = 0; p < P; ++p) gc[p] = s * gr[p];
        }
        if (gao) {
          gao[row] = dot<scalar_t>(gc, xr, P);
        }
        if (gxo) {
          scalar_t* o = gxo + row * P;
          const scalar_t ac = ap ? ap[row] : scalar_t(1);
          if (product) {
            for (int64_t p = 0; p < P; ++p) o[p] = gc[p] * ac;
          } else {
            for (int64_t p = 0; p < P; ++p) o[p] = gc[p] * ac + gr[p];
          }
        }
      }
    });
  });
  return {grad_x, grad_a};
}

// grad_x += g_avg / P over every row, and g_max at each row's arg-max `pos` (the channel statistics' gradients).
void add_channel_stats_grad(Tensor& grad_x, const Tensor& g_avg, const Tensor& g_max, const Tensor& pos) {
  check(grad_x, grad_x, "grad_x");
  check(g_avg, grad_x, "g_avg");
  check(g_max, grad_x, "g_max");
  TORCH_CHECK(pos.scalar_type() == at::kInt && pos.is_contiguous(), "pos must be contiguous int32");
  const int64_t rows = grad_x.size(0) * grad_x.size(1) * grad_x.size(2), P = grad_x.size(3);
  AT_DISPATCH_FLOATING_TYPES(grad_x.scalar_type(), "add_channel_stats_grad", [&] {
    scalar_t* gx = grad_x.data_ptr<scalar_t>();
    const scalar_t *ga = g_avg.data_ptr<scalar_t>(), *gm = g_max.data_ptr<scalar_t>();
    const int32_t* ip = pos.data_ptr<int32_t>();
    const scalar_t inv = scalar_t(1) / static_cast<scalar_t>(P);
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* o = gx + r * P;
        const scalar_t add = ga[r] * inv;
        for (int64_t p = 0; p < P; ++p) o[p] += add;
        o[ip[r]] += gm[r];
      }
    });
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // the signatures of attentive_gcnn.accel.feature.TorchPasses, which computes the same in torch ops
  using py::arg;
  m.def("channel_stats", &channel_stats, arg("x"));
  m.def("spatial_stats", &spatial_stats, arg("x"), arg("a").none(true));
  m.def("apply", &apply, arg("x"), arg("a").none(true), arg("a_x").none(true), arg("product"));
  m.def("spatial_map_grad", &spatial_map_grad, arg("grad"), arg("x"), arg("a").none(true), arg("sign"));
  m.def("backward_rest", &backward_rest, arg("grad"), arg("x"), arg("a").none(true), arg("a_x").none(true),
        arg("g_mean").none(true), arg("g_max").none(true), arg("winner").none(true), arg("sign"), arg("product"),
        arg("need_x"), arg("need_a"));
  m.def("add_channel_stats_grad", &add_channel_stats_grad, arg("grad_x"), arg("g_avg"), arg("g_max"), arg("pos"));
}
