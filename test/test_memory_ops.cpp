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

TEST_CASE("cast_cached: the copy's values forward, the cast's gradient back, and compute_copy_master finds the master", "[ops]") {
  Tensor master = Tensor::from_vector<double>({1.0, 2.5, -3.25}, {3});
  master.set_requires_grad(true);
  const Tensor copy = master.detach().to(DType::f32);
  Tensor y = ops::cast_cached(master, copy);
  CHECK(y.dtype() == DType::f32);
  CHECK(y.to_vector<float>() == std::vector<float>{1.0f, 2.5f, -3.25f});
  REQUIRE(ops::compute_copy_master(y.grad_fn()) == master.impl_ptr());
  ops::sum(ops::scale(y, 3.0)).backward();
  CHECK(master.grad().dtype() == DType::f64);
  CHECK(master.grad().to_vector<double>() == std::vector<double>{3.0, 3.0, 3.0});
  CHECK(ops::compute_copy_master(ops::cast(master, DType::f32).grad_fn()) == nullptr);  // a plain cast is not one
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

TEST_CASE("gradient homes: the first gradient is copied in, later ones are added in place, ops write straight in", "[autograd]") {
  Tensor w = Tensor::from_vector<double>({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, {2, 3});
  w.set_requires_grad(true);
  Tensor home = Tensor::full({2, 3}, 99.0, DType::f64);  // stale contents must never leak into a gradient
  w.set_grad_home(home);
  const Tensor x = Tensor::from_vector<double>({1.0, -1.0, 0.5, 2.0, 0.0, 1.0}, {2, 3});
  CHECK_FALSE(w.grad().defined());
  // linear writes dW = dy^T x straight into the home (a sink while the home holds nothing).
  ops::sum(ops::linear(x, w)).backward();
  REQUIRE(w.grad().defined());
  CHECK(w.grad().impl()->storage == home.impl()->storage);
  const std::vector<double> once = w.grad().to_vector<double>();
  CHECK(once == std::vector<double>{3.0, -1.0, 1.5, 3.0, -1.0, 1.5});
  // A second backward adds in place: twice the gradient, still in the home.
  ops::sum(ops::linear(x, w)).backward();
  CHECK(w.grad().impl()->storage == home.impl()->storage);
  CHECK(w.grad().to_vector<double>() == std::vector<double>{6.0, -2.0, 3.0, 6.0, -2.0, 3.0});
  // A gradient through other ops (mul) is copied into the home first.
  w.zero_grad();
  CHECK_FALSE(w.grad().defined());
  ops::sum(ops::mul(w, x)).backward();
  CHECK(w.grad().impl()->storage == home.impl()->storage);
  CHECK(w.grad().to_vector<double>() == x.to_vector<double>());
  // The same values as without a home.
  Tensor plain = w.detach().clone();
  plain.set_requires_grad(true);
  ops::sum(ops::linear(x, plain)).backward();
  ops::sum(ops::linear(x, plain)).backward();
  w.zero_grad();
  ops::sum(ops::linear(x, w)).backward();
  ops::sum(ops::linear(x, w)).backward();
  CHECK(w.grad().to_vector<double>() == plain.grad().to_vector<double>());
  CHECK_THROWS_AS(w.set_grad_home(Tensor::zeros({3, 2}, DType::f64)), std::invalid_argument);
}

TEST_CASE("recompute with several outputs: gradients from each, side effects once per forward", "[ops][recompute]") {
  // A segment with a hidden-state output and a scalar side loss (as a MoE block returns its aux loss).
  int counted = 0;
  const auto segment = [&counted](const std::vector<Tensor>& in) {
    if (!ops::recompute_replaying()) ++counted;  // e.g. expert load counts: once per forward
    Tensor h = ops::mul(ops::gelu(in[0]), in[1]);
    Tensor aux = ops::mean(ops::mul(h, h));
    return std::vector<Tensor>{h, aux};
  };
  const auto loss_of = [&](const std::vector<Tensor>& in, bool recomputed) {
    const std::vector<Tensor> out = recomputed ? ops::recompute(segment, in) : segment(in);
    return ops::add(ops::sum(ops::scale(out[0], 0.5)), ops::scale(out[1], 3.0));
  };
  Tensor a = random_f64({3, 4}, 21), b = random_f64({3, 4}, 22);
  Tensor a2 = a.clone(), b2 = b.clone();
  for (Tensor* t : {&a, &b, &a2, &b2}) t->set_requires_grad(true);
  const Tensor plain = loss_of({a, b}, false);
  plain.backward();
  counted = 0;
  const Tensor re = loss_of({a2, b2}, true);
  CHECK(counted == 1);
  re.backward();
  CHECK(counted == 1);  // the replay in the backward did not count again
  CHECK(re.item() == plain.item());
  // The same gradients (up to the order in which h's two gradients are summed).
  for (auto [got, want] : {std::pair{a2, a}, std::pair{b2, b}}) {
    const std::vector<double> g = got.grad().to_vector<double>(), w = want.grad().to_vector<double>();
    REQUIRE(g.size() == w.size());
    for (size_t i = 0; i < g.size(); ++i) CHECK(g[i] == Approx(w[i]).epsilon(1e-12).margin(1e-15));
  }
  // Only the side output used: its gradient alone reaches the inputs.
  auto result = gradcheck([&](auto& in) { return ops::recompute(segment, in)[1]; }, {a.clone(), b.clone()});
  INFO(result.worst);
  CHECK(result.ok);
  auto both = gradcheck([&](auto& in) { return loss_of(in, true); }, {a.clone(), b.clone()});
  INFO(both.worst);
  CHECK(both.ok);
}
