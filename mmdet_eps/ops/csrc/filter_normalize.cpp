// Fused per-filter weight normalization and ε-shifted step for CPU tensors.
//
// Each op takes a *list* of conv weights of any filter shapes and does in one dispatcher call
// what the torch-ops path (models/layers/filter_normalize.py) does with ~14 ops per filter
// shape: no concatenation, no split, and one pass over each weight from memory (a filter's
// later passes hit the cache). Numerics are those of the torch-ops path: per filter
// u = W - m (centered) or W, sigma^2 = ||u||^2 / n, rstd = 1 / sqrt(sigma^2 + tiny) (tiny:
// float's smallest normal number if eps > 0, else 0), W' = u t with
// t = rstd / (c + eps rstd) = 1 / (c sigma + eps), c = sqrt(n / D).
//
// normalize_filters returns the per-filter rstds of all weights concatenated for its
// backward, which reads the normalized weights (what the convolutions keep for their own
// backward anyway, not the weights) and addresses a weight's filters by an offset into the
// rstds. Under torch.compile the forward writes channels-last outputs, the layout inductor's
// CPU convolutions take: then no weight is copied into that layout, neither for the
// convolutions nor for the backward. The step, eps_shift_, needs nothing from a forward: per
// filter it reduces the row in one pass (it fits in L1) and then updates, reading each weight
// once. A row's first pass prefetches the row that its last pass writes, so that the two
// memory streams overlap instead of following each other (single-stream reads are latency
// bound: the step took 1.5x a plain add without it). Registered as
// mmdet_eps::normalize_filters, normalize_filters_backward and eps_shift_, so that dispatch
// (and a TorchDispatchMode op counter) sees one op per call.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using at::TensorList;

// Reductions keep kLanes independent partial sums (a few SIMD registers, so that the adds do
// not wait on each other) and move them into a double every kBlock elements.
constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 4096;
// Elements per parallel task: small weights run inline.
constexpr int64_t kGrainElements = 1 << 15;

// Read-only and writable data pointers; Tensor::const_data_ptr / mutable_data_ptr are torch
// >= 2.1, the older data_ptr is the same pointer (setup.py admits torch 2.0).
#define MMDET_EPS_TYPED_PTRS \
  (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1))

template <typename T>
const T* read_ptr(const Tensor& t) {
#if MMDET_EPS_TYPED_PTRS
  return t.const_data_ptr<T>();
#else
  return t.data_ptr<T>();
#endif
}

template <typename T>
T* write_ptr(const Tensor& t) {
#if MMDET_EPS_TYPED_PTRS
  return t.mutable_data_ptr<T>();
#else
  return t.data_ptr<T>();
#endif
}

int64_t grain_rows(int64_t n) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(n, 1));
}

// Prefetch, for writing, the cache lines of kLanes elements from p.
template <typename T>
inline void prefetch_lanes(const T* p) {
  for (int64_t j = 0; j < kLanes; j += 64 / static_cast<int64_t>(sizeof(T)))
    __builtin_prefetch(p + j, 1, 3);
}

// sum over i < n of f(i), for an element-wise term f, prefetching `pre` (the row written next;
// none if null)
template <typename T, typename F>
inline double lane_sum(int64_t n, F f, const T* pre) {
  double total = 0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    T acc[kLanes] = {};
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) acc[j] += f(i + j);
      if (pre) prefetch_lanes(pre + i);
    }
    for (; i < end; ++i) acc[0] += f(i);
    for (int64_t j = 0; j < kLanes; ++j) total += acc[j];
  }
  return total;
}

// (sum (x - shift), sum (x - shift)^2) in one pass, prefetching `pre` (the row written next)
template <typename T>
inline std::pair<double, double> shifted_moments(const T* x, int64_t n, T shift, const T* pre) {
  double total = 0, total_sq = 0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    T acc[kLanes] = {}, acc_sq[kLanes] = {};
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        const T d = x[i + j] - shift;
        acc[j] += d;
        acc_sq[j] += d * d;
      }
      prefetch_lanes(pre + i);
    }
    for (; i < end; ++i) {
      const T d = x[i] - shift;
      acc[0] += d;
      acc_sq[0] += d * d;
    }
    for (int64_t j = 0; j < kLanes; ++j) {
      total += acc[j];
      total_sq += acc_sq[j];
    }
  }
  return {total, total_sq};
}

// (sum g, sum g y), prefetching `pre` (the row written next)
template <typename T>
inline std::pair<double, double> sum_and_dot(const T* g, const T* y, int64_t n, const T* pre) {
  double total_g = 0, total_gy = 0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    T acc_g[kLanes] = {}, acc_gy[kLanes] = {};
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        acc_g[j] += g[i + j];
        acc_gy[j] += g[i + j] * y[i + j];
      }
      prefetch_lanes(pre + i);
    }
    for (; i < end; ++i) {
      acc_g[0] += g[i];
      acc_gy[0] += g[i] * y[i];
    }
    for (int64_t j = 0; j < kLanes; ++j) {
      total_g += acc_g[j];
      total_gy += acc_gy[j];
    }
  }
  return {total_g, total_gy};
}

// out[i] = a x[i] + b y[i] + c   (out may alias x or y)
template <typename T>
inline void axpby_c(T* out, const T* x, const T* y, int64_t n, T a, T b, T c) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = a * x[i] + b * y[i] + c;
}

// Rows [begin, end) of one weight (rows of n elements); spatial > 1: write each output row
// channels-last, element (c, k) of the filter at k * n / spatial + c.
template <typename T>
__attribute__((target_clones("avx2", "default"))) void normalize_rows(
    const T* x, T* out, T* rstd, int64_t begin, int64_t end, int64_t n, int64_t spatial,
    double shift, double eps, bool centered) {
  const double tiny = eps ? std::numeric_limits<T>::min() : 0.;
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x + row * n;
    T* o = out + row * n;
    // two passes (the mean, then the centered squares from L1): the normalized weights feed
    // the whole network, and a one-pass variance's rounding is systematic per filter
    const T m = centered ? static_cast<T>(lane_sum<T>(n, [&](int64_t i) { return xr[i]; }, o) / n)
                         : 0;
    const double sq = lane_sum<T>(
        n, [&](int64_t i) { return (xr[i] - m) * (xr[i] - m); }, centered ? nullptr : o);
    const T r = static_cast<T>(1 / std::sqrt(sq / n + tiny));
    const T t = r / (static_cast<T>(shift) + static_cast<T>(eps) * r);
    if (spatial == 1) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) o[i] = t * (xr[i] - m);
    } else {
      const int64_t channels = n / spatial;
      for (int64_t k = 0; k < spatial; ++k) {
        T* ok = o + k * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) ok[c] = t * (xr[c * spatial + k] - m);
      }
    }
    rstd[row] = r;
  }
}

// dW = t (g - mean(g)) - c t^2 rstd <g, u> / n * u   (mean(g) only when centered), from the
// output y = t u: dW = t (g - mean(g)) - c rstd <g, y> / n * y. spatial > 1: g and y
// channels-last, dW contiguous (element (c, k) of a row read at k * n / spatial + c).
template <typename T>
__attribute__((target_clones("avx2", "default"))) void normalize_rows_backward(
    const T* g, const T* y, const T* rstd, T* dx, int64_t begin, int64_t end, int64_t n,
    int64_t spatial, double shift, double eps, bool centered) {
  for (int64_t row = begin; row < end; ++row) {
    const T* gr = g + row * n;
    const T* yr = y + row * n;
    const double r = rstd[row];
    const auto [sum_g, dot] = sum_and_dot<T>(gr, yr, n, dx + row * n);
    const double t = r / (shift + eps * r);
    const double b = shift * r * dot / n;
    const double g_mean = centered ? sum_g / n : 0.;
    const T a_t = static_cast<T>(t), b_t = static_cast<T>(-b), c_t = static_cast<T>(-t * g_mean);
    if (spatial == 1) {
      axpby_c<T>(dx + row * n, gr, yr, n, a_t, b_t, c_t);
      continue;
    }
    const int64_t channels = n / spatial;
    for (int64_t k = 0; k < spatial; ++k) {
      const T* gk = gr + k * channels;
      const T* yk = yr + k * channels;
      T* dk = dx + row * n + k;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) dk[c * spatial] = a_t * gk[c] + b_t * yk[c] + c_t;
    }
  }
}

// target += a W + b (W - m) rstd, per row, with m and rstd = 1 / sqrt(||W - m||^2 / n + tiny)
// reduced from the row first (m = 0 unless centered): the unit filters of the ε-shifted step
template <typename T>
__attribute__((target_clones("avx2", "default"))) void eps_shift_rows(
    T* target, const T* x, int64_t begin, int64_t end, int64_t n, double a, double b,
    bool centered) {
  const double tiny = std::numeric_limits<T>::min();
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x + row * n;
    T* tr = target + row * n;
    // one pass, shifted by one of the row's values (the precision of two passes to a few
    // float roundings: enough for a term scaled by λ ε)
    const T shift = centered && n ? xr[0] : 0;
    const auto [sum, sum_sq] = shifted_moments<T>(xr, n, shift, tr);
    const double mu = centered ? sum / n : 0.;
    const T m = static_cast<T>(shift + mu);
    const double var = std::max(sum_sq / n - mu * mu, 0.);
    const T scale = static_cast<T>(b / std::sqrt(var + tiny));
    const T a_t = static_cast<T>(a);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) tr[i] += a_t * xr[i] + scale * (xr[i] - m);
  }
}

int64_t row_size(const Tensor& w) { return w.size(0) ? w.numel() / w.size(0) : 0; }

// A weight's filters are its rows: each a dense block of n elements at filter * n in a
// contiguous and in a channels-last weight alike, which per-filter reductions may read in
// either order. The backward takes both (the gradients of channels-last outputs come
// channels-last), makes any other layout contiguous, and writes contiguous gradients, the
// layout of the weights.
at::MemoryFormat row_layout(const Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

Tensor dense_rows(const Tensor& t, at::MemoryFormat layout) {
  return t.is_contiguous(layout) ? t : t.contiguous(layout);
}

// The kernels' `spatial`: kh * kw for a channels-last row (read or written transposed), else 1.
int64_t spatial_of(const Tensor& t, at::MemoryFormat layout) {
  return layout == at::MemoryFormat::ChannelsLast ? t.size(2) * t.size(3) : 1;
}

void check_tensor(const char* op, const Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype, op,
              ": tensors must be CPU tensors of one dtype");
}

void check_contiguous(const char* op, const Tensor& t, at::ScalarType dtype) {
  check_tensor(op, t, dtype);
  TORCH_CHECK(t.is_contiguous(), op, ": tensors must be contiguous");
}

void check_sizes(const char* op, size_t size, std::initializer_list<size_t> sizes) {
  for (size_t s : sizes) TORCH_CHECK(s == size, op, ": argument lists of different lengths");
}

void check_stats(const char* op, const Tensor& stat, const Tensor& w, int64_t offset,
                 at::ScalarType dtype) {
  check_contiguous(op, stat, dtype);
  TORCH_CHECK(stat.dim() == 1 && offset >= 0 && offset + w.size(0) <= stat.size(0), op,
              ": statistics out of range");
}

std::tuple<std::vector<Tensor>, Tensor> normalize_filters(TensorList weights,
                                                         at::ArrayRef<double> shift,
                                                         at::ArrayRef<double> eps,
                                                         at::IntArrayRef centered,
                                                         bool channels_last) {
  const char* op = "normalize_filters";
  const size_t size = weights.size();
  TORCH_CHECK(size > 0, op, ": no weights");
  check_sizes(op, size, {shift.size(), eps.size(), centered.size()});
  const auto dtype = weights[0].scalar_type();
  int64_t total = 0;
  std::vector<Tensor> outs;
  std::vector<at::MemoryFormat> layouts;
  for (const Tensor& w : weights) {
    check_contiguous(op, w, dtype);
    total += w.size(0);
    layouts.push_back(channels_last && w.dim() == 4 ? at::MemoryFormat::ChannelsLast
                                                    : at::MemoryFormat::Contiguous);
    outs.push_back(at::empty_like(w, w.options(), layouts.back()));
  }
  Tensor rstd = at::empty({total}, weights[0].options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "mmdet_eps", [&] {
    int64_t offset = 0;
    for (size_t i = 0; i < size; ++i) {
      const Tensor& w = weights[i];
      const int64_t n = row_size(w);
      const int64_t spatial = spatial_of(w, layouts[i]);
      const scalar_t* x = read_ptr<scalar_t>(w);
      scalar_t* out = write_ptr<scalar_t>(outs[i]);
      scalar_t* r = write_ptr<scalar_t>(rstd) + offset;
      at::parallel_for(0, w.size(0), grain_rows(n), [&](int64_t begin, int64_t end) {
        normalize_rows<scalar_t>(x, out, r, begin, end, n, spatial, shift[i], eps[i],
                                 centered[i]);
      });
      offset += w.size(0);
    }
  });
  return {outs, rstd};
}

std::vector<Tensor> normalize_filters_backward(TensorList grads, TensorList outs,
                                               const Tensor& rstd, at::IntArrayRef offsets,
                                               at::ArrayRef<double> shift,
                                               at::ArrayRef<double> eps,
                                               at::IntArrayRef centered) {
  const char* op = "normalize_filters_backward";
  const size_t size = outs.size();
  check_sizes(op, size, {grads.size(), offsets.size(), shift.size(), eps.size(), centered.size()});
  std::vector<Tensor> result;
  if (size == 0) return result;
  const auto dtype = outs[0].scalar_type();
  std::vector<Tensor> out_list, grad_list;  // a gradient is read in its output's layout
  std::vector<int64_t> spatial;
  for (size_t i = 0; i < size; ++i) {
    check_tensor(op, outs[i], dtype);
    check_tensor(op, grads[i], dtype);
    check_stats(op, rstd, outs[i], offsets[i], dtype);
    TORCH_CHECK(grads[i].sizes() == outs[i].sizes(), op, ": gradient of another shape");
    const auto layout = row_layout(outs[i]);
    out_list.push_back(dense_rows(outs[i], layout));
    grad_list.push_back(dense_rows(grads[i], layout));
    spatial.push_back(spatial_of(outs[i], layout));
    result.push_back(at::empty(outs[i].sizes(), outs[i].options()));
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "mmdet_eps", [&] {
    for (size_t i = 0; i < size; ++i) {
      const int64_t n = row_size(outs[i]);
      const scalar_t* g = read_ptr<scalar_t>(grad_list[i]);
      const scalar_t* y = read_ptr<scalar_t>(out_list[i]);
      const scalar_t* r = read_ptr<scalar_t>(rstd) + offsets[i];
      scalar_t* dx = write_ptr<scalar_t>(result[i]);
      at::parallel_for(0, outs[i].size(0), grain_rows(n), [&](int64_t begin, int64_t end) {
        normalize_rows_backward<scalar_t>(g, y, r, dx, begin, end, n, spatial[i], shift[i],
                                          eps[i], centered[i]);
      });
    }
  });
  return result;
}

void eps_shift_(TensorList targets, TensorList weights, at::ArrayRef<double> a,
                at::ArrayRef<double> b, at::IntArrayRef centered) {
  const char* op = "eps_shift_";
  const size_t size = weights.size();
  check_sizes(op, size, {targets.size(), a.size(), b.size(), centered.size()});
  if (size == 0) return;
  const auto dtype = weights[0].scalar_type();
  for (size_t i = 0; i < size; ++i) {
    check_contiguous(op, weights[i], dtype);
    check_contiguous(op, targets[i], dtype);
    TORCH_CHECK(targets[i].sizes() == weights[i].sizes(), op, ": target of another shape");
  }
  for (const Tensor& target : targets) {
    target.unsafeGetTensorImpl()->bump_version();  // an in-place write, as torch's ops record
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "mmdet_eps", [&] {
    for (size_t i = 0; i < size; ++i) {
      const int64_t n = row_size(weights[i]);
      scalar_t* target = write_ptr<scalar_t>(targets[i]);
      const scalar_t* x = read_ptr<scalar_t>(weights[i]);
      at::parallel_for(0, weights[i].size(0), grain_rows(n), [&](int64_t begin, int64_t end) {
        eps_shift_rows<scalar_t>(target, x, begin, end, n, a[i], b[i], centered[i]);
      });
    }
  });
}

}  // namespace

// The backward takes outputs and gradients in the layout they come in (row_layout): inductor
// need not copy them to the layout of the graph it traced (its default for custom ops).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 6)
#define MMDET_EPS_ANY_LAYOUT {at::Tag::flexible_layout}
#else
#define MMDET_EPS_ANY_LAYOUT {}
#endif

TORCH_LIBRARY(mmdet_eps, m) {
  m.def(
      "normalize_filters(Tensor[] weights, float[] shift, float[] eps, int[] centered, "
      "bool channels_last=False) -> (Tensor[], Tensor)");
  m.def(
      "normalize_filters_backward(Tensor[] grads, Tensor[] outs, Tensor rstd, int[] offsets, "
      "float[] shift, float[] eps, int[] centered) -> Tensor[]",
      MMDET_EPS_ANY_LAYOUT);
  m.def(
      "eps_shift_(Tensor(a!)[] targets, Tensor[] weights, float[] a, float[] b, int[] centered) "
      "-> ()");
}

TORCH_LIBRARY_IMPL(mmdet_eps, CPU, m) {
  m.impl("normalize_filters", &normalize_filters);
  m.impl("normalize_filters_backward", &normalize_filters_backward);
  m.impl("eps_shift_", &eps_shift_);
}
