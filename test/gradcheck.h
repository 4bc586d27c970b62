// Finite-difference gradient checking in float64 for differentiable ops.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/engine/autograd.h"
#include "core/engine/ops.h"
#include "core/engine/rng.h"
#include "core/engine/tensor.h"

namespace pt::test {

struct GradcheckResult {
  double max_abs_error = 0.0;
  double max_rel_error = 0.0;
  std::string worst;  // which input/element
  bool ok = true;
};

// Checks d/d(inputs) of L = sum(f(inputs) * R) for a fixed random R against central differences.
// Inputs must be f64 and are marked requires_grad. Passes when every element satisfies
// |analytic - numeric| <= atol + rtol * |numeric|.
inline GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                                 std::vector<Tensor> inputs, double eps = 1e-6, double atol = 1e-7,
                                 double rtol = 1e-5) {
  for (Tensor& t : inputs) t.set_requires_grad(true);
  Tensor probe = f(inputs);
  Rng rng(99);
  const Tensor weights = Tensor::randn(probe.shape(), rng, 1.0, DType::f64);
  auto objective = [&](const std::vector<Tensor>& xs) {
    NoGradGuard no_grad;
    Tensor out = f(xs);
    return ops::sum(ops::mul(out, weights)).item();
  };
  Tensor loss = ops::sum(ops::mul(probe, weights));
  loss.backward();

  GradcheckResult result;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor& x = inputs[i];
    double* data = x.data<double>();
    const std::vector<double> analytic =
        x.grad().defined() ? x.grad().to_vector<double>() : std::vector<double>(size_t(x.numel()), 0.0);
    for (int64_t j = 0; j < x.numel(); ++j) {
      const double saved = data[j];
      data[j] = saved + eps;
      const double plus = objective(inputs);
      data[j] = saved - eps;
      const double minus = objective(inputs);
      data[j] = saved;
      const double numeric = (plus - minus) / (2 * eps);
      const double err = std::abs(analytic[size_t(j)] - numeric);
      const double rel = err / std::max(std::abs(numeric), 1e-12);
      if (err > result.max_abs_error) {
        result.max_abs_error = err;
        result.max_rel_error = rel;
        result.worst = "input " + std::to_string(i) + " element " + std::to_string(j) + ": analytic " +
                       std::to_string(analytic[size_t(j)]) + " numeric " + std::to_string(numeric);
      }
      if (err > atol + rtol * std::abs(numeric)) result.ok = false;
    }
  }
  return result;
}

// CHECK that a gradcheck passed, reporting the worst element when it did not.
#define CHECK_GRAD(result)                      \
  do {                                          \
    auto r_ = (result);                         \
    INFO("worst: " << r_.worst);                \
    INFO("max abs error " << r_.max_abs_error); \
    CHECK(r_.ok);                               \
  } while (0)

inline Tensor random_f64(const Shape& shape, uint64_t seed, double std = 1.0) {
  Rng rng(seed);
  return Tensor::randn(shape, rng, std, DType::f64);
}

}  // namespace pt::test
