// Forward values of the fused ops against straightforward compositions / closed forms.
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "test/catch.h"
#include "test/gradcheck.h"

using namespace pt;
using pt::test::random_f64;

namespace {
double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}
}  // namespace

TEST_CASE("causal attention equals masked softmax(QK^T)V", "[ops]") {
  const int64_t B = 2, T = 5, H = 4, Hkv = 2, D = 3;
  auto q = random_f64({B, T, H, D}, 1), k = random_f64({B, T, Hkv, D}, 2), v = random_f64({B, T, Hkv, D}, 3);
  Tensor out = ops::causal_attention(q, k, v);
  auto qv = q.to_vector<double>(), kv = k.to_vector<double>(), vv = v.to_vector<double>();
  std::vector<double> ref(size_t(B * T * H * D), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> s(size_t(t + 1));
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += qv[size_t(((b * T + t) * H + h) * D + d)] * kv[size_t(((b * T + j) * Hkv + h / 2) * D + d)];
          s[size_t(j)] = dot / std::sqrt(double(D));
          mx = std::max(mx, s[size_t(j)]);
        }
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t d = 0; d < D; ++d)
            ref[size_t(((b * T + t) * H + h) * D + d)] +=
                s[size_t(j)] / sum * vv[size_t(((b * T + j) * Hkv + h / 2) * D + d)];
      }
  CHECK(max_abs_diff(out, Tensor::from_vector(ref, out.shape())) < 1e-12);
}

TEST_CASE("rope rotates pairs and preserves norms, and position 0 is identity", "[ops]") {
  auto x = random_f64({1, 4, 2, 6}, 4);
  Tensor y = ops::rope(x, 10000.0);
  auto xv = x.to_vector<double>(), yv = y.to_vector<double>();
  for (int64_t i = 0; i < 12; ++i) CHECK(yv[size_t(i)] == Approx(xv[size_t(i)]));  // t = 0
  // t = 1, pair 0: angle 1 rad
  CHECK(yv[12] == Approx(xv[12] * std::cos(1.0) - xv[15] * std::sin(1.0)));
  double nx = 0, ny = 0;
  for (size_t i = 0; i < xv.size(); ++i) nx += xv[i] * xv[i], ny += yv[i] * yv[i];
  CHECK(ny == Approx(nx));
}

TEST_CASE("cross entropy equals -log softmax at the target, averaged over valid rows", "[ops]") {
  auto logits = random_f64({3, 4}, 5);
  Tensor targets = Tensor::from_vector<int64_t>({2, -1, 0}, {3});
  const double loss = ops::cross_entropy(logits, targets).item();
  auto p = ops::softmax(logits).to_vector<double>();
  CHECK(loss == Approx(-(std::log(p[2]) + std::log(p[8])) / 2.0));
}

TEST_CASE("norms: rms_norm and layer_norm produce unit statistics", "[ops]") {
  auto x = random_f64({4, 16}, 6, 3.0);
  auto y = ops::rms_norm(x, Tensor(), 0.0).to_vector<double>();
  for (int r = 0; r < 4; ++r) {
    double ms = 0;
    for (int j = 0; j < 16; ++j) ms += y[size_t(r * 16 + j)] * y[size_t(r * 16 + j)];
    CHECK(ms / 16 == Approx(1.0));
  }
  auto z = ops::layer_norm(x, Tensor(), Tensor(), 0.0).to_vector<double>();
  for (int r = 0; r < 4; ++r) {
    double mu = 0;
    for (int j = 0; j < 16; ++j) mu += z[size_t(r * 16 + j)];
    CHECK(std::abs(mu / 16) < 1e-12);
  }
}

TEST_CASE("ops reject mismatched shapes with messages naming op and shapes", "[ops]") {
  auto x = random_f64({2, 5}, 7), w = random_f64({3, 4}, 8);
  try {
    ops::linear(x, w);
    FAIL("expected an error");
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    CHECK(msg.find("linear") != std::string::npos);
    CHECK(msg.find("[2, 5]") != std::string::npos);
    CHECK(msg.find("[3, 4]") != std::string::npos);
  }
  CHECK_THROWS_AS(ops::add(random_f64({2, 3}, 1), random_f64({4}, 2)), std::invalid_argument);
  CHECK_THROWS_AS(ops::add(random_f64({2}, 1), random_f64({2}, 2).to(DType::f32)), std::invalid_argument);
  Tensor bad_ids = Tensor::from_vector<int32_t>({0, 7}, {2});
  CHECK_THROWS_AS(ops::embedding(bad_ids, random_f64({5, 2}, 3)), std::out_of_range);
}

TEST_CASE("autograd: fan-out accumulates, no_grad records nothing, leaf grads accumulate", "[autograd]") {
  Tensor x = Tensor::from_vector<double>({1.0, 2.0, 3.0}, {3});
  x.set_requires_grad(true);
  Tensor y = ops::sum(ops::add(ops::mul(x, x), x));  // d/dx = 2x + 1
  y.backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{3.0, 5.0, 7.0});
  ops::sum(x).backward();  // accumulates +1
  CHECK(x.grad().to_vector<double>() == std::vector<double>{4.0, 6.0, 8.0});
  {
    NoGradGuard guard;
    Tensor z = ops::mul(x, x);
    CHECK_FALSE(z.requires_grad());
    CHECK(z.grad_fn() == nullptr);
  }
  // Two leaves fed by one shared gradient must not alias each other's .grad.
  Tensor a = Tensor::from_vector<double>({1.0}, {1}), b = Tensor::from_vector<double>({2.0}, {1});
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  ops::sum(ops::add(a, b)).backward();
  ops::sum(ops::scale(a, 5.0)).backward();
  CHECK(a.grad().item() == 6.0);
  CHECK(b.grad().item() == 1.0);
}

TEST_CASE("shape math: overflowing shapes and negative view sizes are errors, not UB", "[tensor]") {
  // 2^40 * 2^40 elements do not fit in int64: must not wrap to a small allocation.
  CHECK_THROWS_AS(Tensor::empty({int64_t{1} << 40, int64_t{1} << 40}), std::overflow_error);
  // 2^61 f64 elements fit in int64 but their byte count does not fit in size_t.
  CHECK_THROWS_AS(Tensor::empty({int64_t{1} << 61}, DType::f64), std::overflow_error);
  Tensor x = Tensor::zeros({4});
  // (-2) * (-2) == 4 elements, but a negative size is never a valid shape.
  CHECK_THROWS_AS(x.view({-2, -2}), std::invalid_argument);
  CHECK_THROWS_AS(ops::reshape(x, {-2, -2}), std::invalid_argument);
  // -1 next to a zero size is ambiguous; it must not leave a -1 in the shape.
  Tensor empty = Tensor::zeros({0, 3});
  CHECK_THROWS_AS(empty.view({0, -1}), std::invalid_argument);
  CHECK(empty.view({3, 0}).shape() == Shape{3, 0});
  CHECK(x.view({2, -1}).shape() == Shape{2, 2});
  // narrow_view bounds cannot be defeated by overflow of start + length.
  CHECK_THROWS_AS(x.narrow_view(0, 2, std::numeric_limits<int64_t>::max()), std::out_of_range);
}

TEST_CASE("ops with an empty reduction dim fail with a message instead of dividing by zero", "[ops]") {
  const Tensor x = Tensor::zeros({2, 0});
  CHECK_THROWS_AS(ops::linear(x, Tensor::zeros({3, 0})), std::invalid_argument);
  CHECK_THROWS_AS(ops::rms_norm(x, Tensor(), 1e-5), std::invalid_argument);
  CHECK_THROWS_AS(ops::layer_norm(x, Tensor(), Tensor(), 1e-5), std::invalid_argument);
  CHECK_THROWS_AS(ops::cross_entropy(x, Tensor::from_vector<int32_t>({0, 0}, {2})), std::invalid_argument);
}

TEST_CASE("autograd: a backward that returns a wrong-shaped gradient for a non-leaf input is named", "[autograd]") {
  struct WrongShapeNode final : Node {
    const char* name() const override { return "wrong_shape"; }
    std::vector<Tensor> backward(const std::vector<Tensor>&) override { return {Tensor::zeros({3}, DType::f64)}; }
  };
  Tensor x = Tensor::from_vector<double>({1.0, 2.0}, {2});
  x.set_requires_grad(true);
  const Tensor y = ops::scale(x, 2.0);  // non-leaf [2]
  Tensor z = Tensor::zeros({2}, DType::f64);
  record(std::make_shared<WrongShapeNode>(), {y}, {z});
  std::string message;
  try {
    ops::sum(z).backward();
  } catch (const std::logic_error& e) {
    message = e.what();
  }
  INFO(message);
  // The culprit is the node that produced the gradient, not the consumer that later trips over it.
  CHECK(message.find("wrong_shape") != std::string::npos);
}

TEST_CASE("autograd: saved tensors are freed during backward, and a second backward is a clear error", "[autograd]") {
  const int64_t before = allocator_for(Device::cpu()).stats().allocated_bytes;
  Tensor w = random_f64({64, 64}, 30);
  w.set_requires_grad(true);
  Tensor x = random_f64({128, 64}, 31);
  Tensor loss = ops::sum(ops::silu(ops::linear(ops::silu(ops::linear(x, w)), w)));
  const int64_t with_graph = allocator_for(Device::cpu()).stats().allocated_bytes;
  loss.backward();
  w.zero_grad();
  // The loss (and so the graph's Nodes) is still alive, but the activations they saved are gone.
  const int64_t after = allocator_for(Device::cpu()).stats().allocated_bytes;
  CHECK(after < with_graph);
  CHECK(after - before <= (128 * 64 + 64 * 64 + 1) * 8 + 4096);  // x, w and the scalar loss remain
  CHECK_THROWS_WITH(loss.backward(), pt::test::contains("second time"));
}

TEST_CASE("fused activation mixture equals the composed sum of c_k * phi_k(h)", "[ops]") {
  const std::vector<UnaryOp> dictionary{UnaryOp::relu, UnaryOp::gelu_erf, UnaryOp::relu2};
  auto h = random_f64({4, 6}, 50);
  auto alpha = ops::softmax(random_f64({4, 3}, 51));
  auto coef = random_f64({3, 6}, 52);
  Tensor mixed = ops::activation_mixture(h, dictionary, alpha, MixtureCoef::per_row);
  Tensor per_channel = ops::activation_mixture(h, dictionary, coef, MixtureCoef::per_channel);
  Tensor ref_mixed, ref_channel;
  auto parts = ops::split(alpha, {1, 1, 1});
  for (size_t k = 0; k < dictionary.size(); ++k) {
    Tensor phi = ops::unary(dictionary[k], h);
    Tensor a = ops::mul(phi, parts[k]);
    Tensor c = ops::mul(phi, ops::narrow(coef, 0, int64_t(k), 1));
    ref_mixed = ref_mixed.defined() ? ops::add(ref_mixed, a) : a;
    ref_channel = ref_channel.defined() ? ops::add(ref_channel, c) : c;
  }
  CHECK(max_abs_diff(mixed, ref_mixed) < 1e-14);
  CHECK(max_abs_diff(per_channel, ref_channel) < 1e-14);
  CHECK_THROWS_AS(ops::activation_mixture(h, dictionary, coef, MixtureCoef::per_row), std::invalid_argument);
  CHECK_THROWS_AS(ops::activation_mixture(h, std::vector<UnaryOp>(9, UnaryOp::relu), random_f64({9}, 1),
                                          MixtureCoef::shared),
                  std::invalid_argument);
}

TEST_CASE("cpu gemm with k = 0 computes beta * C", "[ops]") {
  for (DType dt : {DType::f32, DType::f64}) {
    INFO(dtype_name(dt));
    const Tensor a = Tensor::zeros({3, 0}, dt), b = Tensor::zeros({0, 4}, dt);
    Tensor c = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 4}).to(dt);
    backend_for(Device::cpu()).gemm(false, false, 3, 4, 0, 1.0, a, b, -1.25, c);
    const auto v = c.to_vector<double>();
    for (size_t i = 0; i < v.size(); ++i) CHECK(v[i] == -1.25 * double(i + 1));
  }
}
