// Shared helpers of the GPU test files: registration, the visible skip, relative error, inputs.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/engine/backend.h"
#include "core/engine/rng.h"
#include "core/engine/tensor.h"
#include "test/catch.h"
#ifdef PRETRAIN_WITH_CUDA
#include "cuda/register.h"
#endif

namespace pt::test {

// Registers the CUDA backend once (when linked) and says whether a GPU is usable.
inline bool cuda_ready() {
#ifdef PRETRAIN_WITH_CUDA
  pt::cuda::register_cuda_backend();
#endif
  return backend_available(DeviceType::cuda);
}

inline const Device kGpu = Device::cuda(0);
inline const Device kCpu = Device::cpu();

// ||got - ref|| / ||ref|| over the whole tensor (||got - ref|| when ref is zero); inf on NaN/inf.
inline double rel_err(const Tensor& got, const Tensor& ref) {
  const auto a = got.to_vector<double>(), b = ref.to_vector<double>();
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (!std::isfinite(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// f32 normal(0, std) with a fixed seed.
inline Tensor randn(const Shape& shape, uint64_t seed, double std = 1.0) {
  Rng rng(seed);
  return Tensor::randn(shape, rng, std, DType::f32);
}

}  // namespace pt::test

// Every GPU case starts with this: without a GPU it warns (CTest's SKIP_REGULAR_EXPRESSION turns the
// message into "Skipped") and returns.
#define REQUIRE_GPU_OR_SKIP(name)                   \
  if (!pt::test::cuda_ready()) {                    \
    WARN("no CUDA GPU: skipping " << (name));       \
    return;                                         \
  }
