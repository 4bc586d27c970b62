// cuDNN fused SDPA (cuda/cudnn_sdpa.h) against the CPU reference attention: causal, grouped-query,
// bf16 inputs with f32 softmax statistics. The CPU runs in f32 on exactly the bf16-rounded inputs
// the GPU sees; outputs and gradients must agree to a relative error ||gpu - cpu|| / ||cpu|| < 2e-2,
// the log-sum-exp to a small absolute error. Also: unsupported problems are reported, not run.
//
// Every case is tagged [gpu] and skips itself, with a visible warning, when no CUDA device is
// available (CPU-only machines, or builds without the CUDA backend).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/engine/backend.h"
#include "core/engine/rng.h"
#include "core/engine/tensor.h"
#include "test/catch.h"
#include "test/gpu_test.h"
#ifdef PRETRAIN_WITH_CUDA
#include "cuda/backend.h"
#include "cuda/cudnn_sdpa.h"
#include "cuda/register.h"
#endif

using namespace pt;
using namespace pt::test;

namespace {

[[maybe_unused]] double max_abs_diff(const Tensor& got, const Tensor& ref) {
  const auto a = got.to_vector<double>(), b = ref.to_vector<double>();
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(a[i] - b[i]);
    if (!std::isfinite(d)) return INFINITY;
    worst = std::max(worst, d);
  }
  return worst;
}

// f32 CPU tensor holding bf16-representable values (so the CPU reference sees the GPU's inputs).
[[maybe_unused]] Tensor bf16_valued(const Shape& shape, uint64_t seed) {
  Rng rng(seed);
  return Tensor::randn(shape, rng, 1.0, DType::f32).to(DType::bf16).to(DType::f32);
}

struct Problem {
  int64_t B, T, Hq, Hkv, D;
  std::string str() const {
    std::string s = "B";
    s += std::to_string(B);
    s += " T" + std::to_string(T);
    s += " Hq" + std::to_string(Hq);
    s += " Hkv" + std::to_string(Hkv);
    s += " D" + std::to_string(D);
    return s;
  }
};

constexpr double kTolerance = 2e-2;  // bf16 relative error, as in test_cuda_parity.cpp
constexpr double kLseTolerance = 2e-3;  // absolute, f32 statistics from identical bf16 inputs

#ifdef PRETRAIN_WITH_CUDA
cudaStream_t backend_stream() {
  return static_cast<pt::cuda::CudaBackend&>(backend_for(kGpu)).stream();
}
#endif

}  // namespace

TEST_CASE("cudnn sdpa: forward and backward match the CPU (causal, GQA, bf16)", "[gpu][cuda]") {
  REQUIRE_GPU_OR_SKIP("cuDNN SDPA parity");
#ifdef PRETRAIN_WITH_CUDA
  pt::cuda::CudnnSdpa sdpa(backend_stream());
  // T = 100 is not a multiple of the engines' 64/128 tiles (and triggers the cuDNN <= 9.15 backward
  // padding-mask workaround); T = 128 is. Hkv = 2 is GQA, Hkv = 1 MQA, Hkv = Hq plain MHA.
  for (const Problem p : {Problem{2, 100, 4, 2, 64}, Problem{2, 100, 4, 1, 128}, Problem{2, 128, 4, 4, 64},
                          Problem{2, 100, 4, 2, 128}}) {
    INFO("problem " << p.str());
    const double scale = 1.0 / std::sqrt(static_cast<double>(p.D));
    const Shape q_shape{p.B, p.T, p.Hq, p.D}, kv_shape{p.B, p.T, p.Hkv, p.D}, lse_shape{p.B, p.Hq, p.T};
    const Tensor q = bf16_valued(q_shape, 11), k = bf16_valued(kv_shape, 12), v = bf16_valued(kv_shape, 13);
    const Tensor dout = bf16_valued(q_shape, 14);

    // CPU reference in f32.
    Tensor out_c = Tensor::empty(q_shape), lse_c = Tensor::empty(lse_shape);
    backend_for(kCpu).attention_forward(q, k, v, scale, out_c, lse_c);
    Tensor dq_c = Tensor::empty(q_shape), dk_c = Tensor::empty(kv_shape), dv_c = Tensor::empty(kv_shape);
    backend_for(kCpu).attention_backward(q, k, v, out_c, lse_c, dout, scale, dq_c, dk_c, dv_c);

    // cuDNN in bf16 with f32 statistics.
    const Tensor qg = q.to(DType::bf16).to(kGpu), kg = k.to(DType::bf16).to(kGpu), vg = v.to(DType::bf16).to(kGpu);
    const Tensor doutg = dout.to(DType::bf16).to(kGpu);
    Tensor out_g = Tensor::empty(q_shape, DType::bf16, kGpu), lse_g = Tensor::empty(lse_shape, DType::f32, kGpu);

    const std::string forward_reason = sdpa.unsupported_reason(qg, kg, vg, lse_g, /*backward=*/false);
    INFO("forward unsupported_reason: '" << forward_reason << "'");
    REQUIRE(forward_reason.empty());
    sdpa.forward(qg, kg, vg, scale, out_g, lse_g);
    {
      const double err = rel_err(out_g, out_c);
      INFO("out relative error " << err << " (tolerance " << kTolerance << ")");
      CHECK(err < kTolerance);
      const double lse_err = max_abs_diff(lse_g, lse_c);
      INFO("lse max abs error " << lse_err << " (tolerance " << kLseTolerance << ")");
      CHECK(lse_err < kLseTolerance);
    }
    // A second call reuses the cached plan and gives the same result (the forward is deterministic).
    Tensor out_again = Tensor::empty(q_shape, DType::bf16, kGpu), lse_again = Tensor::empty(lse_shape, DType::f32, kGpu);
    sdpa.forward(qg, kg, vg, scale, out_again, lse_again);
    CHECK(out_again.to_vector<float>() == out_g.to_vector<float>());
    CHECK(lse_again.to_vector<float>() == lse_g.to_vector<float>());

    const std::string backward_reason = sdpa.unsupported_reason(qg, kg, vg, lse_g, /*backward=*/true);
    INFO("backward unsupported_reason: '" << backward_reason << "'");
    REQUIRE(backward_reason.empty());
    Tensor dq_g = Tensor::empty(q_shape, DType::bf16, kGpu), dk_g = Tensor::empty(kv_shape, DType::bf16, kGpu),
           dv_g = Tensor::empty(kv_shape, DType::bf16, kGpu);
    sdpa.backward(qg, kg, vg, out_g, lse_g, doutg, scale, dq_g, dk_g, dv_g);
    const struct {
      const char* name;
      const Tensor& got;
      const Tensor& ref;
    } grads[] = {{"dq", dq_g, dq_c}, {"dk", dk_g, dk_c}, {"dv", dv_g, dv_c}};
    for (const auto& g : grads) {
      const double err = rel_err(g.got, g.ref);
      INFO(g.name << " relative error " << err << " (tolerance " << kTolerance << ")");
      CHECK(err < kTolerance);
    }
  }
#endif
}

TEST_CASE("cudnn sdpa: unsupported problems are reported, not run", "[gpu][cuda]") {
  REQUIRE_GPU_OR_SKIP("cuDNN SDPA unsupported problems");
#ifdef PRETRAIN_WITH_CUDA
  pt::cuda::CudnnSdpa sdpa(backend_stream());
  const int64_t B = 1, T = 16, Hq = 2, Hkv = 1;
  const Tensor lse = Tensor::empty({B, Hq, T}, DType::f32, kGpu);

  // f32 inputs
  {
    const Tensor q = Tensor::zeros({B, T, Hq, 64}, DType::f32, kGpu), kv = Tensor::zeros({B, T, Hkv, 64}, DType::f32, kGpu);
    const std::string reason = sdpa.unsupported_reason(q, kv, kv, lse, /*backward=*/false);
    INFO("reason: '" << reason << "'");
    CHECK_FALSE(reason.empty());
    CHECK(reason.find("dtype") != std::string::npos);
    CHECK_FALSE(sdpa.unsupported_reason(q, kv, kv, lse, /*backward=*/true).empty());
    Tensor out = Tensor::empty({B, T, Hq, 64}, DType::f32, kGpu);
    CHECK_THROWS(sdpa.forward(q, kv, kv, 0.125, out, lse));
  }
  // head_dim 60: not a multiple of 8
  {
    const Tensor q = Tensor::zeros({B, T, Hq, 60}, DType::bf16, kGpu), kv = Tensor::zeros({B, T, Hkv, 60}, DType::bf16, kGpu);
    const std::string reason = sdpa.unsupported_reason(q, kv, kv, lse, /*backward=*/false);
    INFO("reason: '" << reason << "'");
    CHECK_FALSE(reason.empty());
    CHECK(reason.find("multiple of 8") != std::string::npos);
    CHECK_FALSE(sdpa.unsupported_reason(q, kv, kv, lse, /*backward=*/true).empty());
  }
  // lse in bf16
  {
    const Tensor q = Tensor::zeros({B, T, Hq, 64}, DType::bf16, kGpu), kv = Tensor::zeros({B, T, Hkv, 64}, DType::bf16, kGpu);
    const Tensor lse_bf16 = Tensor::empty({B, Hq, T}, DType::bf16, kGpu);
    CHECK_FALSE(sdpa.unsupported_reason(q, kv, kv, lse_bf16, /*backward=*/false).empty());
  }
#endif
}
