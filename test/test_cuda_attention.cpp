// CUDA attention implementations (cuda/attention.cu): the tiled (FlashAttention-2 style) and simple
// (warp-per-row) kernels, each forced through pt::cuda::set_attention_impl, forward (out, lse) and
// backward (dq, dk, dv) straight from the backends against the CPU backend:
//   f32: relative error < 1e-5; bf16: < 2e-2 against the CPU in f32 on the same bf16-rounded
//   inputs; f64 (simple only): < 1e-10. Errors are ||gpu - cpu|| / ||cpu|| over the whole tensor.
// Shapes cover GQA (Hq/Hkv = 2 and 4), head dims below, at and between the tiled kernel's padded
// sizes (16, 64, 80, 128, plus odd ones), and sequence lengths around the tile sizes (1, 63, 64,
// 65, 200). Also: mixing implementations between forward and backward, determinism, misaligned
// (scalar-load) operands, the errors of forced implementations, and `automatic`.
//
// Every case is tagged [gpu] and skips itself, with a visible warning, when no CUDA device is
// available. Each case puts the implementation setting back as it found it when it ends.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <utility>
#include <unistd.h>
#include <vector>

#include "core/engine/backend.h"
#include "core/engine/rng.h"
#include "core/engine/tensor.h"
#include "test/catch.h"
#include "test/gpu_test.h"
#ifdef PRETRAIN_WITH_CUDA
#include "cuda/register.h"
#endif

using namespace pt;
using namespace pt::test;

namespace {

// The CUDA attention implementations, mirrored so the file compiles without the CUDA backend.
enum class Impl { automatic, cudnn, tiled, simple };

const char* impl_name(Impl impl) {
  switch (impl) {
    case Impl::automatic: return "auto";
    case Impl::cudnn: return "cudnn";
    case Impl::tiled: return "tiled";
    case Impl::simple: return "simple";
  }
  return "?";
}

void set_impl(Impl impl) {
#ifdef PRETRAIN_WITH_CUDA
  using pt::cuda::AttentionImpl;
  switch (impl) {
    case Impl::automatic: pt::cuda::set_attention_impl(AttentionImpl::automatic); return;
    case Impl::cudnn: pt::cuda::set_attention_impl(AttentionImpl::cudnn); return;
    case Impl::tiled: pt::cuda::set_attention_impl(AttentionImpl::tiled); return;
    case Impl::simple: pt::cuda::set_attention_impl(AttentionImpl::simple); return;
  }
#else
  (void)impl;
#endif
}

// Puts the implementation setting back when a test case ends (also on a failed REQUIRE): the value
// it had when the case started (PRETRAIN_ATTENTION's, or an earlier case's), automatic if that
// cannot be read (an invalid PRETRAIN_ATTENTION), so later cases in the process see what they
// would have seen without this one.
struct RestoreAutomatic {
#ifdef PRETRAIN_WITH_CUDA
  pt::cuda::AttentionImpl previous = pt::cuda::AttentionImpl::automatic;
  RestoreAutomatic() {
    try {
      previous = pt::cuda::attention_impl();
    } catch (const std::exception&) {
      previous = pt::cuda::AttentionImpl::automatic;
    }
  }
  ~RestoreAutomatic() { pt::cuda::set_attention_impl(previous); }
#else
  RestoreAutomatic() {}
  ~RestoreAutomatic() {}  // user-provided: no unused-variable warnings without the CUDA backend
#endif
  RestoreAutomatic(const RestoreAutomatic&) = delete;
  RestoreAutomatic& operator=(const RestoreAutomatic&) = delete;
};

struct Problem {
  int64_t B, T, Hq, Hkv, D;
};

std::string problem_name(const Problem& p) {
  return "B" + std::to_string(p.B) + " T" + std::to_string(p.T) + " Hq" + std::to_string(p.Hq) + " Hkv" +
         std::to_string(p.Hkv) + " D" + std::to_string(p.D);
}

// CPU f32/f64 inputs of one problem: q, k, v, dout.
struct Inputs {
  Tensor q, k, v, dout;
};

Inputs make_inputs(const Problem& p, uint64_t seed, double q_std = 1.0) {
  return {randn({p.B, p.T, p.Hq, p.D}, seed, q_std), randn({p.B, p.T, p.Hkv, p.D}, seed + 1),
          randn({p.B, p.T, p.Hkv, p.D}, seed + 2), randn({p.B, p.T, p.Hq, p.D}, seed + 3)};
}

// The inputs as the GPU run of `dtype` sees them, in the reference's compute dtype: bf16 inputs
// are rounded to bf16 and computed in f32 on the CPU.
Inputs reference_inputs(const Inputs& in, DType dtype) {
  const DType compute = dtype == DType::f64 ? DType::f64 : DType::f32;
  auto round = [&](const Tensor& t) { return t.to(dtype).to(compute); };
  return {round(in.q), round(in.k), round(in.v), round(in.dout)};
}

struct Outputs {
  Tensor out, lse, dq, dk, dv;  // CPU copies in f64
};

Outputs to_cpu_f64(const Tensor& out, const Tensor& lse, const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  auto host = [](const Tensor& t) { return t.to(kCpu).to(DType::f64); };
  return {host(out), host(lse), host(dq), host(dk), host(dv)};
}

Outputs run_cpu(const Inputs& in, double scale) {
  Backend& be = backend_for(kCpu);
  const DType dt = in.q.dtype();
  const Shape lse_shape{in.q.size(0), in.q.size(2), in.q.size(1)};
  Tensor out = Tensor::empty(in.q.shape(), dt), lse = Tensor::empty(lse_shape, dt);
  be.attention_forward(in.q, in.k, in.v, scale, out, lse);
  Tensor dq = Tensor::empty(in.q.shape(), dt), dk = Tensor::empty(in.k.shape(), dt), dv = Tensor::empty(in.v.shape(), dt);
  be.attention_backward(in.q, in.k, in.v, out, lse, in.dout, scale, dq, dk, dv);
  return to_cpu_f64(out, lse, dq, dk, dv);
}

// GPU operands of `dtype` (copies of the CPU inputs).
struct GpuInputs {
  Tensor q, k, v, dout;
};

GpuInputs gpu_inputs(const Inputs& in, DType dtype) {
  auto dev = [&](const Tensor& t) { return t.to(dtype).to(kGpu); };
  return {dev(in.q), dev(in.k), dev(in.v), dev(in.dout)};
}

// Forward with `fwd`, backward with `bwd` on the GPU. lse_dtype defaults to f32 for bf16 data (as
// ops.cpp allocates it) and the data dtype otherwise.
Outputs run_gpu(const GpuInputs& g, double scale, Impl fwd, Impl bwd, DType lse_dtype = DType::i32) {
  Backend& be = backend_for(kGpu);
  const DType dt = g.q.dtype();
  if (lse_dtype == DType::i32) lse_dtype = dt == DType::bf16 ? DType::f32 : dt;
  const Shape lse_shape{g.q.size(0), g.q.size(2), g.q.size(1)};
  Tensor out = Tensor::empty(g.q.shape(), dt, kGpu), lse = Tensor::empty(lse_shape, lse_dtype, kGpu);
  set_impl(fwd);
  be.attention_forward(g.q, g.k, g.v, scale, out, lse);
  Tensor dq = Tensor::empty(g.q.shape(), dt, kGpu), dk = Tensor::empty(g.k.shape(), dt, kGpu),
         dv = Tensor::empty(g.v.shape(), dt, kGpu);
  set_impl(bwd);
  be.attention_backward(g.q, g.k, g.v, out, lse, g.dout, scale, dq, dk, dv);
  return to_cpu_f64(out, lse, dq, dk, dv);
}

double tolerance(DType dt) { return dt == DType::bf16 ? 2e-2 : dt == DType::f64 ? 1e-10 : 1e-5; }

double max_abs(const Tensor& t) {
  double m = 0;
  for (double x : t.to_vector<double>()) m = std::max(m, std::abs(x));
  return m;
}

// With T = 1 every row attends to one key: p = 1 and dq = dk = 0 exactly in exact arithmetic, so
// both sides hold rounding noise and a relative error means nothing; they must be ~0 instead.
void check_outputs(const Outputs& got, const Outputs& ref, double tol, bool single_key = false) {
  const std::array<const char*, 5> names{"out", "lse", "dq", "dk", "dv"};
  const std::array<const Tensor*, 5> g{&got.out, &got.lse, &got.dq, &got.dk, &got.dv};
  const std::array<const Tensor*, 5> r{&ref.out, &ref.lse, &ref.dq, &ref.dk, &ref.dv};
  for (size_t i = 0; i < names.size(); ++i) {
    if (single_key && (i == 2 || i == 3)) {
      const double m = max_abs(*g[i]);
      INFO(names[i] << " with a single key: max |value| " << m << " (must be ~0)");
      CHECK(m < 1e-4);
      continue;
    }
    const double err = rel_err(*g[i], *r[i]);
    INFO(names[i] << ": relative error " << err << " (tolerance " << tol << ")");
    CHECK(err < tol);
  }
}

// One problem and dtype against the CPU, for each (forward, backward) implementation pair in `runs`.
using Runs = std::vector<std::pair<Impl, Impl>>;
const Runs kOwnKernels{{Impl::tiled, Impl::tiled}, {Impl::simple, Impl::simple}};

void check_problem(const Problem& p, DType dtype, const Runs& runs, uint64_t seed, double q_std = 1.0,
                   double tol_scale = 1.0, DType lse_dtype = DType::i32) {
  const Inputs in = make_inputs(p, seed, q_std);
  const double scale = 1.0 / std::sqrt(static_cast<double>(p.D));
  const Outputs ref = run_cpu(reference_inputs(in, dtype), scale);
  const GpuInputs g = gpu_inputs(in, dtype);
  for (const auto& [fwd, bwd] : runs) {
    INFO(problem_name(p) << " " << dtype_name(dtype) << " forward " << impl_name(fwd) << ", backward "
                         << impl_name(bwd));
    const Outputs got = run_gpu(g, scale, fwd, bwd, lse_dtype);
    check_outputs(got, ref, tolerance(dtype) * tol_scale, p.T == 1);
  }
}

// The message of what f throws ("" if it does not throw); `invalid` tells whether it was a
// std::invalid_argument.
template <class F>
std::string error_of(F&& f, bool* invalid = nullptr) {
  if (invalid) *invalid = false;
  try {
    f();
  } catch (const std::invalid_argument& e) {
    if (invalid) *invalid = true;
    return e.what();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Runs the forward (and the backward) of one problem on the GPU with whatever is set, for errors.
void gpu_attention(const Problem& p, DType dtype, bool backward) {
  Backend& be = backend_for(kGpu);
  const Inputs in = make_inputs(p, 7);
  const GpuInputs g = gpu_inputs(in, dtype);
  const DType lse_dtype = dtype == DType::bf16 ? DType::f32 : dtype;
  Tensor out = Tensor::zeros(g.q.shape(), dtype, kGpu);
  Tensor lse = Tensor::zeros({p.B, p.Hq, p.T}, lse_dtype, kGpu);
  if (!backward) {
    be.attention_forward(g.q, g.k, g.v, 0.125, out, lse);
  } else {
    Tensor dq = Tensor::empty(g.q.shape(), dtype, kGpu), dk = Tensor::empty(g.k.shape(), dtype, kGpu),
           dv = Tensor::empty(g.v.shape(), dtype, kGpu);
    be.attention_backward(g.q, g.k, g.v, out, lse, g.dout, 0.125, dq, dk, dv);
  }
  be.synchronize();
}

}  // namespace

TEST_CASE("cuda attention: tiled and simple kernels match the CPU (GQA, head dims, partial tiles)", "[gpu][cuda]") {
  REQUIRE_GPU_OR_SKIP("attention implementations");
  RestoreAutomatic restore;
  uint64_t seed = 1000;
  for (const int64_t T : {1, 63, 64, 65, 200})
    for (const int64_t D : {16, 64, 80, 128})
      for (const auto& heads : {std::array<int64_t, 2>{4, 2}, std::array<int64_t, 2>{4, 1}}) {
        const Problem p{2, T, heads[0], heads[1], D};
        seed += 10;
        for (const DType dt : {DType::f32, DType::bf16}) check_problem(p, dt, kOwnKernels, seed);
      }
}

TEST_CASE("cuda attention: odd head dims, scalar loads, peaky scores, bf16 lse", "[gpu][cuda]") {
  REQUIRE_GPU_OR_SKIP("attention edge cases");
  RestoreAutomatic restore;
  // Head dims that are not a multiple of the 16-byte unit (scalar loads): 3 (both dtypes), 100
  // (vector loads in f32, scalar in bf16), 40 (both vector), 33 (pads to 64), 127; no GQA; T
  // spanning several key tiles.
  const std::vector<Problem> problems = {{2, 5, 4, 2, 3},    {1, 37, 2, 2, 40}, {1, 70, 6, 2, 40},
                                         {1, 129, 3, 1, 100}, {2, 97, 2, 1, 33}, {1, 66, 2, 2, 127},
                                         {3, 130, 1, 1, 32}};
  uint64_t seed = 2000;
  for (const Problem& p : problems) {
    seed += 10;
    for (const DType dt : {DType::f32, DType::bf16}) check_problem(p, dt, kOwnKernels, seed);
  }
  // Large scores: the running max changes a lot between key tiles (online-softmax rescaling).
  check_problem({2, 200, 4, 2, 64}, DType::f32, kOwnKernels, 2100, /*q_std=*/4.0);
  check_problem({1, 150, 2, 1, 128}, DType::bf16, kOwnKernels, 2110, /*q_std=*/6.0);
  // lse stored in bf16 (allowed by the contract): its rounding (~2^-9 relative of |lse|) feeds
  // exp() in the backward, so the tolerance is doubled.
  check_problem({2, 65, 4, 2, 64}, DType::bf16, kOwnKernels, 2200, 1.0, /*tol_scale=*/2.0, DType::bf16);

  // Operands that are not 16-byte aligned (contiguous views at an odd element offset): the tiled
  // kernel must fall back to element loads.
  for (const DType dt : {DType::f32, DType::bf16}) {
    const Problem p{2, 70, 4, 2, 64};
    INFO("misaligned operands " << dtype_name(dt));
    const Inputs in = make_inputs(p, 2300);
    const double scale = 0.2;
    const Outputs ref = run_cpu(reference_inputs(in, dt), scale);
    auto misaligned = [&](const Tensor& t) {
      Tensor buf = Tensor::zeros({t.numel() + 1}, dt, kGpu);
      Tensor view = buf.narrow_view(0, 1, t.numel()).view(t.shape());
      view.copy_from(t.to(dt).to(kGpu));
      return view;
    };
    const GpuInputs g{misaligned(in.q), misaligned(in.k), misaligned(in.v), misaligned(in.dout)};
    REQUIRE(g.q.is_contiguous());
    const Outputs got = run_gpu(g, scale, Impl::tiled, Impl::tiled);
    check_outputs(got, ref, tolerance(dt));
  }
}

TEST_CASE("cuda attention: forward and backward of different implementations agree, deterministically",
          "[gpu][cuda]") {
  REQUIRE_GPU_OR_SKIP("attention implementation mixing");
  RestoreAutomatic restore;
  const Problem p{2, 100, 4, 2, 64};
  for (const DType dt : {DType::f32, DType::bf16})
    check_problem(p, dt, {{Impl::tiled, Impl::simple}, {Impl::simple, Impl::tiled}}, 3000);
  // Two tiled runs are bit-identical (no atomics).
  const Inputs in = make_inputs(p, 3100);
  const GpuInputs g = gpu_inputs(in, DType::f32);
  const Outputs a = run_gpu(g, 0.125, Impl::tiled, Impl::tiled);
  const Outputs b = run_gpu(g, 0.125, Impl::tiled, Impl::tiled);
  CHECK(a.out.to_vector<double>() == b.out.to_vector<double>());
  CHECK(a.lse.to_vector<double>() == b.lse.to_vector<double>());
  CHECK(a.dq.to_vector<double>() == b.dq.to_vector<double>());
  CHECK(a.dk.to_vector<double>() == b.dk.to_vector<double>());
  CHECK(a.dv.to_vector<double>() == b.dv.to_vector<double>());
}

TEST_CASE("cuda attention: forced implementations refuse problems they cannot run", "[gpu][cuda]") {
  REQUIRE_GPU_OR_SKIP("attention implementation errors");
  RestoreAutomatic restore;
  bool invalid = false;
  std::string msg;

  set_impl(Impl::tiled);
  msg = error_of([] { gpu_attention({1, 8, 2, 1, 16}, DType::f64, false); }, &invalid);
  INFO("tiled f64: " << msg);
  CHECK(invalid);
  CHECK(msg.find("tiled") != std::string::npos);
  CHECK(msg.find("f64") != std::string::npos);
  msg = error_of([] { gpu_attention({1, 8, 2, 1, 200}, DType::f32, false); }, &invalid);
  INFO("tiled D=200: " << msg);
  CHECK(invalid);
  CHECK(msg.find("200") != std::string::npos);
  msg = error_of([] { gpu_attention({1, 8, 2, 1, 200}, DType::f32, true); }, &invalid);
  INFO("tiled D=200 backward: " << msg);
  CHECK(invalid);

  set_impl(Impl::simple);
  msg = error_of([] { gpu_attention({1, 8, 1, 1, 300}, DType::f32, false); }, &invalid);
  INFO("simple D=300: " << msg);
  CHECK(invalid);
  CHECK(msg.find("300") != std::string::npos);

  set_impl(Impl::automatic);
  msg = error_of([] { gpu_attention({1, 8, 1, 1, 300}, DType::f32, false); }, &invalid);
  INFO("automatic D=300: " << msg);
  CHECK(invalid);

  // cuDNN runs bf16 only: forcing it on f32 is an error whatever the cuDNN build supports.
  set_impl(Impl::cudnn);
  msg = error_of([] { gpu_attention({1, 8, 2, 1, 64}, DType::f32, false); }, &invalid);
  INFO("cudnn f32: " << msg);
  CHECK(invalid);
  CHECK(msg.find("cudnn") != std::string::npos);

  // Shape errors name the op and the shapes.
  set_impl(Impl::automatic);
  msg = error_of([] {
    Backend& be = backend_for(kGpu);
    Tensor q = Tensor::zeros({1, 4, 3, 8}, DType::f32, kGpu), k = Tensor::zeros({1, 4, 2, 8}, DType::f32, kGpu);
    Tensor out = Tensor::zeros({1, 4, 3, 8}, DType::f32, kGpu), lse = Tensor::zeros({1, 3, 4}, DType::f32, kGpu);
    be.attention_forward(q, k, k, 1.0, out, lse);
  }, &invalid);
  INFO("Hq 3, Hkv 2: " << msg);
  CHECK(invalid);
  CHECK(msg.find("attention") != std::string::npos);
  CHECK(msg.find("[1, 4, 3, 8]") != std::string::npos);
}

TEST_CASE("cuda attention: automatic runs f32, bf16, f64 and large head dims", "[gpu][cuda]") {
  REQUIRE_GPU_OR_SKIP("automatic attention");
  RestoreAutomatic restore;
  set_impl(Impl::automatic);
  // bf16 goes to cuDNN when it supports the problem (else the tiled kernel); f32 to the tiled
  // kernel; f64 and head_dim > 128 to the simple kernel.
  const Runs automatic{{Impl::automatic, Impl::automatic}};
  check_problem({2, 65, 4, 2, 64}, DType::f32, automatic, 4000);
  check_problem({2, 65, 4, 2, 64}, DType::bf16, automatic, 4010);
  check_problem({2, 200, 4, 1, 128}, DType::bf16, automatic, 4020);
  check_problem({1, 77, 2, 2, 40}, DType::bf16, automatic, 4030);
  check_problem({2, 33, 4, 2, 24}, DType::f64, automatic, 4040);
  check_problem({1, 40, 2, 1, 200}, DType::f32, automatic, 4050);
  // cuDNN (when it runs the problem) forward with the tiled backward and the reverse: the lse
  // contract is shared.
  check_problem({2, 65, 4, 2, 64}, DType::bf16, {{Impl::automatic, Impl::tiled}, {Impl::tiled, Impl::automatic}},
                4060);
}

TEST_CASE("cuda attention: implementation names and the setting", "[gpu][cuda]") {
#ifdef PRETRAIN_WITH_CUDA
  using pt::cuda::AttentionImpl;
  RestoreAutomatic restore;
  CHECK(std::string(pt::cuda::attention_impl_name(AttentionImpl::automatic)) == "auto");
  CHECK(std::string(pt::cuda::attention_impl_name(AttentionImpl::cudnn)) == "cudnn");
  CHECK(std::string(pt::cuda::attention_impl_name(AttentionImpl::tiled)) == "tiled");
  CHECK(std::string(pt::cuda::attention_impl_name(AttentionImpl::simple)) == "simple");
  for (const AttentionImpl impl :
       {AttentionImpl::tiled, AttentionImpl::simple, AttentionImpl::cudnn, AttentionImpl::automatic}) {
    pt::cuda::set_attention_impl(impl);
    CHECK(pt::cuda::attention_impl() == impl);
  }
#else
  WARN("no CUDA GPU: skipping attention implementation names (built without the CUDA backend)");
#endif
}

#ifdef PRETRAIN_BINARY
TEST_CASE("cuda attention: an invalid PRETRAIN_ATTENTION is an error at the first attention call", "[gpu][cuda]") {
  REQUIRE_GPU_OR_SKIP("PRETRAIN_ATTENTION validation");
  // The variable is read once per process, so this runs the executable with it set.
  // A missing executable would make the shell fail with "not found" (exit 127): say so instead.
  INFO("pretrain executable: " << PRETRAIN_BINARY);
  REQUIRE(std::filesystem::is_regular_file(PRETRAIN_BINARY));
  const auto dir = std::filesystem::temp_directory_path() / ("pretrain_cuda_attn_env_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const std::string command = "PRETRAIN_ATTENTION=bogus \"" + std::string(PRETRAIN_BINARY) + "\" train --run-dir \"" +
                              dir.string() + "\" --set training.device=cuda --set training.steps=1 --set schedule.warmup_steps=0 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string output;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) output.append(buf.data(), n);
  const int status = pclose(pipe);
  std::filesystem::remove_all(dir);
  INFO(output);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) != 0);
  CHECK(output.find("PRETRAIN_ATTENTION") != std::string::npos);
  CHECK(output.find("bogus") != std::string::npos);
}
#endif
