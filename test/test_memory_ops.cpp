// Activation recomputation and dtype casts.
#include "core/engine/autograd.h"
#include "core/engine/memory_ops.h"
#include "core/engine/ops.h"
#include "test/catch.h"
#include "test/gradcheck.h"

using namespace pt;
using pt::test::gradcheck;
using pt::test::random_f64;

TEST_CASE("recompute: a segment's gradients equal the plain graph's exactly, parameters included", "[ops][recompute]") {
  Tensor w = random_f64({6, 4}, 1);
  Tensor g = random_f64({6}, 2);
  w.set_requires_grad(true);
  g.set_requires_grad(true);
  auto block = [&](const std::vector<Tensor>& in) {
    Tensor h = ops::linear(in[0], w);
    return ops::add(ops::rms_norm(ops::silu(h), g, 1e-5), ops::linear(in[0], w));
  };
  Tensor x1 = random_f64({3, 4}, 3), x2 = x1.clone();
  x1.set_requires_grad(true);
  x2.set_requires_grad(true);

  Tensor y_plain = block({x1});
  ops::sum(ops::mul(y_plain, y_plain)).backward();
  const auto dw_plain = w.grad().to_vector<double>(), dg_plain = g.grad().to_vector<double>();
  w.zero_grad();
  g.zero_grad();
  Tensor y = ops::recompute(block, {x2});
  CHECK(y.grad_fn() != nullptr);
  CHECK(std::string(y.grad_fn()->name()) == "recompute");
  ops::sum(ops::mul(y, y)).backward();
  CHECK(x2.grad().to_vector<double>() == x1.grad().to_vector<double>());
  CHECK(w.grad().to_vector<double>() == dw_plain);
  CHECK(g.grad().to_vector<double>() == dg_plain);
}

TEST_CASE("recompute: parameters get gradients even when no input requires grad", "[ops][recompute]") {
  Tensor w = random_f64({2, 3}, 4);
  w.set_requires_grad(true);
  Tensor x = random_f64({5, 3}, 5);  // plain data
  Tensor y = ops::recompute([&](const std::vector<Tensor>& in) { return ops::linear(in[0], w); }, {x});
  ops::sum(y).backward();
  REQUIRE(w.grad().defined());
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("gradcheck: recompute segment and cast", "[ops][gradcheck][recompute]") {
  auto result = gradcheck(
      [](auto& in) {
        return ops::recompute([](const std::vector<Tensor>& x) { return ops::mul(ops::gelu(x[0]), x[1]); }, in);
      },
      {random_f64({4, 3}, 6), random_f64({4, 3}, 7)});
  INFO(result.worst);
  CHECK(result.ok);
}

TEST_CASE("cast: values round through f32 and gradients come back in the source dtype", "[ops]") {
  Tensor x = Tensor::from_vector<double>({1.0, 2.5, -3.25}, {3});
  x.set_requires_grad(true);
  Tensor y = ops::cast(x, DType::f32);
  CHECK(y.dtype() == DType::f32);
  ops::sum(ops::scale(y, 2.0)).backward();
  CHECK(x.grad().dtype() == DType::f64);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2.0, 2.0, 2.0});
  Tensor b = x.detach().to(DType::bf16);
  CHECK(b.to_vector<float>() == std::vector<float>{1.0f, 2.5f, -3.25f});  // exactly representable
  CHECK_THROWS_AS(ops::cast(Tensor::from_vector<int32_t>({1}, {1}), DType::f32), std::invalid_argument);
}

TEST_CASE("cast_cached: the copy's values forward, the cast's gradient back, and master_grad_slot finds the master", "[ops]") {
  Tensor master = Tensor::from_vector<double>({1.0, 2.5, -3.25}, {3});
  master.set_requires_grad(true);
  const Tensor copy = master.detach().to(DType::f32);
  Tensor y = ops::cast_cached(master, copy);
  CHECK(y.dtype() == DType::f32);
  CHECK(y.to_vector<float>() == std::vector<float>{1.0f, 2.5f, -3.25f});
  REQUIRE(ops::master_grad_slot(y.grad_fn()) != nullptr);
  CHECK_FALSE(ops::master_grad_slot(y.grad_fn())->defined());  // no gradient yet
  ops::sum(ops::scale(y, 3.0)).backward();
  CHECK(master.grad().dtype() == DType::f64);
  CHECK(master.grad().to_vector<double>() == std::vector<double>{3.0, 3.0, 3.0});
  CHECK(ops::master_grad_slot(ops::cast(master, DType::f32).grad_fn()) == nullptr);  // a plain cast is not one
  CHECK_THROWS_AS(ops::cast_cached(master, Tensor::zeros({2}, DType::f32)), std::invalid_argument);
}

TEST_CASE("chunked LM loss equals the plain loss, with gradients", "[ops][recompute]") {
  Tensor h = random_f64({10, 4}, 8), head = random_f64({7, 4}, 9);
  Tensor targets = Tensor::from_vector<int32_t>({0, 6, 3, -1, 2, 2, 5, 1, 0, 4}, {10});
  const double plain = ops::cross_entropy(ops::linear(h, head), targets).item();
  for (int64_t chunk : {0, 3, 4, 10}) {
    INFO("chunk rows " << chunk);
    CHECK(ops::chunked_lm_loss(h, head, targets, chunk).item() == Approx(plain).epsilon(1e-12));
  }
  auto result = gradcheck([targets](auto& in) { return ops::chunked_lm_loss(in[0], in[1], targets, 3); },
                          {h.clone(), head.clone()});
  INFO(result.worst);
  CHECK(result.ok);
}
