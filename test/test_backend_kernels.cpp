// The kernel list (core/engine/backend_kernels.def) and the backends declared from it: every kernel
// is forwarded by ProfilingBackend, CpuBackend overrides exactly the required ones, a composed
// kernel called through the profiler runs the inner backend's own implementation (one entry under
// its own key, bit-identical results), and the profile keys of specially keyed kernels.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "core/engine/backend.h"
#include "core/engine/cpu/cpu_backend.h"
#include "core/engine/profiling_backend.h"
#include "core/engine/rng.h"
#include "test/catch.h"

using namespace pt;

namespace {

// The class that declares a member function (the derived class for an override, the base class
// for an inherited member): &Derived::f has type R (Base::*)(...) when f is inherited.
template <class T>
struct MemberOwner;
template <class R, class C, class... A>
struct MemberOwner<R (C::*)(A...)> {
  using type = C;
};
template <class Class, class MemberPointer>
constexpr int declared_in() {
  return std::is_same_v<typename MemberOwner<MemberPointer>::type, Class> ? 1 : 0;
}

#define PT_REQUIRED_KERNEL(ret, name, params, args) +1
constexpr int kRequiredKernels = 0
#include "core/engine/backend_kernels.def"
    ;
#define PT_COMPOSED_KERNEL(ret, name, params, args) +1
constexpr int kComposedKernels = 0
#include "core/engine/backend_kernels.def"
    ;

#define PT_REQUIRED_KERNEL(ret, name, params, args) +declared_in<ProfilingBackend, decltype(&ProfilingBackend::name)>()
#define PT_COMPOSED_KERNEL(ret, name, params, args) +declared_in<ProfilingBackend, decltype(&ProfilingBackend::name)>()
constexpr int kProfilerForwards = 0
#include "core/engine/backend_kernels.def"
    ;

#define PT_REQUIRED_KERNEL(ret, name, params, args) +declared_in<cpu::CpuBackend, decltype(&cpu::CpuBackend::name)>()
constexpr int kCpuRequiredOverrides = 0
#include "core/engine/backend_kernels.def"
    ;
#define PT_COMPOSED_KERNEL(ret, name, params, args) +declared_in<cpu::CpuBackend, decltype(&cpu::CpuBackend::name)>()
constexpr int kCpuComposedOverrides = 0
#include "core/engine/backend_kernels.def"
    ;

Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed) {
  Rng rng(seed);
  return Tensor::randn(shape, rng, 1.0, dtype);
}

Tensor positive_tensor(const Shape& shape, DType dtype, uint64_t seed) {
  Rng rng(seed);
  return Tensor::uniform(shape, rng, 0.01, 0.1, dtype);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.nbytes()) == 0;
}

// Runs `call` on the CPU backend directly and through a ProfilingBackend wrapping it, each on its
// own copy of the tensors made by `make`; checks that the profiler recorded exactly one call under
// `key` and nothing else, and that every tensor came out bit-identical.
template <class Make, class Call>
void check_forwarded(const std::string& key, Make&& make, Call&& call) {
  Backend& cpu = backend_for(Device::cpu());
  std::vector<Tensor> direct = make(), profiled = make();
  call(cpu, direct);
  ProfilingBackend profiler(cpu);
  call(profiler, profiled);
  const auto entries = profiler.entries();
  REQUIRE(entries.size() == 1);
  CHECK(entries[0].key == key);
  CHECK(entries[0].calls == 1);
  REQUIRE(direct.size() == profiled.size());
  for (size_t i = 0; i < direct.size(); ++i) {
    INFO("tensor " << i);
    CHECK(same_bits(direct[i], profiled[i]));
  }
}

}  // namespace

TEST_CASE("the profiling backend forwards every kernel of backend_kernels.def", "[cpu][profile]") {
  CHECK(kRequiredKernels > 0);
  CHECK(kComposedKernels == 6);  // gemm_add, add_rms_norm_forward, rms_norm_backward_add,
                                 // cross_entropy_forward_backward, scale_by_scalar, adamw_step_multi
  CHECK(kProfilerForwards == kRequiredKernels + kComposedKernels);
}

TEST_CASE("the CPU backend overrides the required kernels and none of the composed ones", "[cpu]") {
  CHECK(kCpuRequiredOverrides == kRequiredKernels);
  CHECK(kCpuComposedOverrides == 0);
}

TEST_CASE("register_backend refuses the CPU device type", "[cpu]") {
  ProfilingBackend profiler(backend_for(Device::cpu()));
  CHECK_THROWS_AS(register_backend(DeviceType::cpu, &profiler), std::invalid_argument);
  try {
    register_backend(DeviceType::cpu, &profiler);
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("cpu") != std::string::npos);
  }
  CHECK(&backend_for(Device::cpu()) != static_cast<Backend*>(&profiler));
}

TEST_CASE("composed kernels through the profiler run once under their own key", "[cpu][profile]") {
  const DType f = DType::f32;
  SECTION("gemm_add") {
    check_forwarded(
        "gemm f32 NT m3 n4 k5 +residual",
        [&] {
          return std::vector<Tensor>{random_tensor({3, 5}, f, 1), random_tensor({4, 5}, f, 2),
                                     random_tensor({3, 4}, f, 3), Tensor::zeros({3, 4}, f)};
        },
        [](Backend& be, std::vector<Tensor>& t) { be.gemm_add(false, true, 3, 4, 5, t[0], t[1], t[2], t[3]); });
  }
  SECTION("add_rms_norm_forward") {
    check_forwarded(
        "add_rms_norm_forward",
        [&] {
          return std::vector<Tensor>{random_tensor({4, 8}, f, 1), random_tensor({4, 8}, f, 2),
                                     random_tensor({8}, f, 3),    Tensor::zeros({4, 8}, f),
                                     Tensor::zeros({4, 8}, f),    Tensor::zeros({4}, f)};
        },
        [](Backend& be, std::vector<Tensor>& t) { be.add_rms_norm_forward(t[0], t[1], t[2], 1e-5, t[3], t[4], t[5]); });
  }
  SECTION("rms_norm_backward_add") {
    check_forwarded(
        "rms_norm_backward_add",
        [&] {
          Tensor x = random_tensor({4, 8}, f, 1), weight = random_tensor({8}, f, 2);
          Tensor y = Tensor::zeros({4, 8}, f), rstd = Tensor::zeros({4}, f);
          backend_for(Device::cpu()).rms_norm_forward(x, weight, 1e-5, y, rstd);
          return std::vector<Tensor>{x,
                                     weight,
                                     rstd,
                                     random_tensor({4, 8}, f, 3),
                                     random_tensor({4, 8}, f, 4),
                                     Tensor::zeros({4, 8}, f),
                                     random_tensor({8}, f, 5)};
        },
        [](Backend& be, std::vector<Tensor>& t) {
          be.rms_norm_backward_add(t[0], t[1], t[2], t[3], t[4], t[5], t[6]);
        });
  }
  SECTION("cross_entropy_forward_backward") {
    check_forwarded(
        "cross_entropy_forward_backward f32",
        [&] {
          return std::vector<Tensor>{random_tensor({4, 7}, f, 1),
                                     Tensor::from_vector(std::vector<int32_t>{1, -1, 6, 0}, {4}),
                                     Tensor::zeros({4}, f), Tensor::zeros({4}, f), Tensor::zeros({4, 7}, f)};
        },
        [](Backend& be, std::vector<Tensor>& t) {
          be.cross_entropy_forward_backward(t[0], t[1], t[2], t[3], 0.25, t[4]);
        });
  }
  SECTION("scale_by_scalar") {
    check_forwarded(
        "scale_by_scalar",
        [&] {
          return std::vector<Tensor>{random_tensor({5, 3}, f, 1),
                                     Tensor::from_vector(std::vector<float>{0.375f}, {1})};
        },
        [](Backend& be, std::vector<Tensor>& t) { be.scale_by_scalar(t[0], t[1]); });
  }
  SECTION("adamw_step_multi") {
    check_forwarded(
        "adamw_step_multi",
        [&] {
          std::vector<Tensor> t;
          for (uint64_t i = 0; i < 2; ++i) {
            const Shape shape = i == 0 ? Shape{3, 4} : Shape{6};
            t.push_back(random_tensor(shape, f, 10 * i + 1));              // param
            t.push_back(random_tensor(shape, f, 10 * i + 2));              // grad
            t.push_back(positive_tensor(shape, f, 10 * i + 3));          // m
            t.push_back(positive_tensor(shape, f, 10 * i + 4));          // v
            t.push_back(Tensor::zeros(shape, DType::f64));                 // compute copy (a cast)
          }
          return t;
        },
        [](Backend& be, std::vector<Tensor>& t) {
          std::vector<Backend::AdamwTensors> group;
          for (size_t i = 0; i < 2; ++i)
            group.push_back({t[5 * i], t[5 * i + 1], t[5 * i + 2], t[5 * i + 3], i == 0 ? 0.1 : 0.0, t[5 * i + 4]});
          be.adamw_step_multi(group, 0.5, 1e-3, 0.9, 0.95, 1e-8, 3);
        });
  }
}

TEST_CASE("the profiler keys gemm, attention and a few others by shape, operator or dtype", "[cpu][profile]") {
  ProfilingBackend profiler(backend_for(Device::cpu()));
  const DType f = DType::f32;
  Tensor a = random_tensor({2, 3, 4}, f, 1), b = random_tensor({2, 4, 5}, f, 2), c = Tensor::zeros({2, 3, 5}, f);
  profiler.gemm(false, false, 3, 5, 4, 1.0, a, b, 0.5, c, 2, 12, 20, 15);
  Backend& through_base = profiler;  // gemm's default arguments (batch = 1, ...) are Backend's
  through_base.gemm(true, false, 4, 5, 3, 1.0, a, Tensor::zeros({3, 5}, f), 0.0, Tensor::zeros({4, 5}, f));
  profiler.copy(a, Tensor::zeros({2, 3, 4}, DType::f64));
  profiler.copy(a, Tensor::zeros({2, 3, 4}, f));
  profiler.unary(UnaryOp::silu, a, Tensor::zeros({2, 3, 4}, f));
  profiler.unary_backward(UnaryOp::gelu_tanh, a, a, a, Tensor::zeros({2, 3, 4}, f));
  profiler.binary(BinaryOp::sub, a, a, Tensor::zeros({2, 3, 4}, f));
  Tensor q = random_tensor({1, 3, 2, 4}, f, 4), kv = random_tensor({1, 3, 1, 4}, f, 5);
  profiler.rope(q, 10000.0, true, Tensor::zeros({1, 3, 2, 4}, f));
  profiler.rope(q, 10000.0, false, Tensor::zeros({1, 3, 2, 4}, f));
  Tensor out = Tensor::zeros({1, 3, 2, 4}, f), lse = Tensor::zeros({1, 2, 3}, f);
  profiler.attention_forward(q, kv, kv, 0.5, out, lse);
  profiler.attention_backward(q, kv, kv, out, lse, out, 0.5, Tensor::zeros({1, 3, 2, 4}, f),
                              Tensor::zeros({1, 3, 1, 4}, f), Tensor::zeros({1, 3, 1, 4}, f));
  Tensor logits = random_tensor({2, 5}, DType::f64, 6), targets = Tensor::from_vector(std::vector<int64_t>{1, 4}, {2});
  Tensor losses = Tensor::zeros({2}, DType::f64), row_lse = Tensor::zeros({2}, DType::f64);
  profiler.cross_entropy_forward(logits, targets, losses, row_lse);
  profiler.cross_entropy_backward(logits, targets, row_lse, Tensor::full({1}, 1.0, DType::f64), 0.5,
                                  Tensor::zeros({2, 5}, DType::f64));
  profiler.fill(c, 0.0);

  std::vector<std::string> keys;
  for (const auto& e : profiler.entries()) {
    CHECK(e.calls == 1);
    keys.push_back(e.key);
  }
  std::sort(keys.begin(), keys.end());
  const std::string q_shape = shape_str(q.shape()), kv_shape = shape_str(kv.shape());
  std::vector<std::string> expected = {"gemm f32 NN m3 n5 k4 batch2 +c",
                                       "gemm f32 TN m4 n5 k3",
                                       "copy(cast f32->f64)",
                                       "copy",
                                       "unary silu",
                                       "unary_backward gelu_tanh",
                                       "binary sub",
                                       "rope (inverse)",
                                       "rope",
                                       "attention_forward f32 q" + q_shape + " kv" + kv_shape,
                                       "attention_backward f32 q" + q_shape + " kv" + kv_shape,
                                       "cross_entropy_forward f64",
                                       "cross_entropy_backward f64",
                                       "fill"};
  std::sort(expected.begin(), expected.end());
  CHECK(keys == expected);
}
