// Every differentiable op: analytic gradients against central finite differences in float64.
#include "test/catch.h"
#include "test/gradcheck.h"

using namespace pt;
using pt::test::gradcheck;
using pt::test::random_f64;

TEST_CASE("gradcheck: binary ops with broadcasting", "[ops][gradcheck]") {
  auto a = random_f64({2, 3, 4}, 1);
  auto b = random_f64({3, 1}, 2);
  CHECK_GRAD(gradcheck([](auto& x) { return ops::add(x[0], x[1]); }, {a, b}));
  CHECK_GRAD(gradcheck([](auto& x) { return ops::sub(x[0], x[1]); }, {a.clone(), b.clone()}));
  CHECK_GRAD(gradcheck([](auto& x) { return ops::mul(x[0], x[1]); }, {a.clone(), b.clone()}));
  auto pos = ops::add_scalar(random_f64({4}, 3, 0.1), 2.0).detach();  // keep the divisor away from 0
  CHECK_GRAD(gradcheck([](auto& x) { return ops::div(x[0], x[1]); }, {a.clone(), pos}));
  CHECK_GRAD(gradcheck([](auto& x) { return ops::scale(x[0], -1.7); }, {a.clone()}));
  CHECK_GRAD(gradcheck([](auto& x) { return ops::add_scalar(x[0], 0.3); }, {a.clone()}));
}

TEST_CASE("gradcheck: unary activations", "[ops][gradcheck]") {
  for (UnaryOp op : {UnaryOp::neg, UnaryOp::relu, UnaryOp::gelu_erf, UnaryOp::gelu_tanh, UnaryOp::silu,
                     UnaryOp::relu2, UnaryOp::sigmoid, UnaryOp::tanh, UnaryOp::exp, UnaryOp::square}) {
    INFO("op " << unary_op_name(op));
    // Values away from the kinks of relu/relu2 at 0.
    Tensor x = random_f64({3, 5}, 4);
    auto v = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i)
      if (std::abs(v[i]) < 0.05) v[i] += 0.1;
    CHECK_GRAD(gradcheck([op](auto& in) { return ops::unary(op, in[0]); }, {x}));
  }
  for (UnaryOp op : {UnaryOp::log, UnaryOp::sqrt}) {
    INFO("op " << unary_op_name(op));
    Tensor x = ops::add_scalar(ops::unary(UnaryOp::square, random_f64({7}, 5)), 0.5).detach();
    CHECK_GRAD(gradcheck([op](auto& in) { return ops::unary(op, in[0]); }, {x}));
  }
}

TEST_CASE("gradcheck: reductions and shape ops", "[ops][gradcheck]") {
  auto x = random_f64({2, 3, 4}, 6);
  CHECK_GRAD(gradcheck([](auto& in) { return ops::sum(in[0]); }, {x}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::mean(in[0]); }, {x.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::sum_to(in[0], {3, 1}); }, {x.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::reshape(in[0], {4, -1}); }, {x.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::narrow(in[0], 1, 1, 2); }, {x.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::narrow(in[0], 0, 1, 1); }, {x.clone()}));
  CHECK_GRAD(gradcheck(
      [](auto& in) {
        auto parts = ops::split(in[0], {1, 2, 1});
        // Use the parts unevenly so each gets a distinct gradient.
        return ops::concat({ops::scale(parts[2], 3.0), parts[0], ops::mul(parts[1], parts[1])});
      },
      {x.clone()}));
}

TEST_CASE("gradcheck: linear with and without bias", "[ops][gradcheck]") {
  auto x = random_f64({2, 3, 5}, 7);
  auto w = random_f64({4, 5}, 8);
  auto b = random_f64({4}, 9);
  CHECK_GRAD(gradcheck([](auto& in) { return ops::linear(in[0], in[1], in[2]); }, {x, w, b}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::linear(in[0], in[1]); }, {x.clone(), w.clone()}));
}

TEST_CASE("gradcheck: linear_split (fused projection, one output per part)", "[ops][gradcheck]") {
  auto x = random_f64({2, 3, 5}, 17);
  auto w = random_f64({9, 5}, 18);
  auto b = random_f64({9}, 19);
  // Parts used unevenly (and one unused, one empty) so each gets a distinct gradient.
  auto combine = [](const std::vector<Tensor>& p) {
    return ops::concat({ops::scale(p[2], 3.0), p[0], ops::mul(p[1], p[1])});
  };
  CHECK_GRAD(gradcheck([&](auto& in) { return combine(ops::linear_split(in[0], in[1], in[2], {2, 4, 3})); },
                       {x, w, b}));
  CHECK_GRAD(gradcheck([&](auto& in) { return combine(ops::linear_split(in[0], in[1], Tensor(), {2, 4, 3})); },
                       {x.clone(), w.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::linear_split(in[0], in[1], in[2], {4, 0, 5})[2]; },
                       {x.clone(), w.clone(), b.clone()}));
  // Forward: exactly split(linear(x, w, b)).
  const auto parts = ops::linear_split(x, w, b, {2, 4, 3});
  const auto ref = ops::split(ops::linear(x, w, b), {2, 4, 3});
  for (size_t i = 0; i < parts.size(); ++i) {
    CHECK(parts[i].shape() == ref[i].shape());
    CHECK(parts[i].to_vector<double>() == ref[i].contiguous().to_vector<double>());
  }
  CHECK_THROWS_AS(ops::linear_split(x, w, b, {2, 4}), std::invalid_argument);  // rows do not add up
}

TEST_CASE("gradcheck: add_rms_norm (residual add fused with the norm)", "[ops][gradcheck]") {
  auto x = random_f64({2, 3, 6}, 27);
  auto r = random_f64({2, 3, 6}, 28);
  auto w = random_f64({6}, 29);
  // Both outputs used (the block's case), only the normed one, only the sum, and without weight.
  CHECK_GRAD(gradcheck(
      [](auto& in) {
        auto out = ops::add_rms_norm(in[0], in[1], in[2], 1e-5);
        return ops::add(ops::scale(out[0], 0.7), ops::mul(out[1], out[1]));
      },
      {x, r, w}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::add_rms_norm(in[0], in[1], in[2], 1e-5)[1]; },
                       {x.clone(), r.clone(), w.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::mul(ops::add_rms_norm(in[0], in[1], Tensor(), 1e-5)[0], in[0]); },
                       {x.clone(), r.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::add_rms_norm(in[0], in[1], Tensor(), 1e-5)[1]; },
                       {x.clone(), r.clone()}));
  // Forward: exactly add() then rms_norm().
  const auto out = ops::add_rms_norm(x, r, w, 1e-5);
  const Tensor sum = ops::add(x, r);
  CHECK(out[0].to_vector<double>() == sum.to_vector<double>());
  CHECK(out[1].to_vector<double>() == ops::rms_norm(sum, w, 1e-5).to_vector<double>());
  CHECK_THROWS_AS(ops::add_rms_norm(x, random_f64({2, 3, 5}, 30), Tensor(), 1e-5), std::invalid_argument);
}

TEST_CASE("gradcheck: rms_norm_fork (pass-through and norm, gradients summed in the norm)", "[ops][gradcheck]") {
  auto x = random_f64({2, 3, 6}, 31);
  auto w = random_f64({6}, 32);
  // Both outputs used (the block's case), only the norm, only the pass-through, and without weight.
  CHECK_GRAD(gradcheck(
      [](auto& in) {
        auto out = ops::rms_norm_fork(in[0], in[1], 1e-5);
        return ops::add(ops::mul(out[0], out[0]), ops::scale(out[1], 0.3));
      },
      {x, w}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::rms_norm_fork(in[0], in[1], 1e-5)[1]; }, {x.clone(), w.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::scale(ops::rms_norm_fork(in[0], in[1], 1e-5)[0], 2.0); },
                       {x.clone(), w.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::mul(ops::rms_norm_fork(in[0], Tensor(), 1e-5)[1], in[0]); },
                       {x.clone()}));
  // Only the pass-through used: the weight gets no gradient (not a zero one AdamW would decay).
  {
    Tensor xi = x.clone().set_requires_grad(true), wi = w.clone().set_requires_grad(true);
    ops::sum(ops::rms_norm_fork(xi, wi, 1e-5)[0]).backward();
    CHECK(xi.grad().defined());
    CHECK_FALSE(wi.grad().defined());
  }
  // Forward: x itself and exactly rms_norm().
  const auto out = ops::rms_norm_fork(x, w, 1e-5);
  CHECK(out[0].to_vector<double>() == x.to_vector<double>());
  CHECK(out[1].to_vector<double>() == ops::rms_norm(x, w, 1e-5).to_vector<double>());
  CHECK_THROWS_AS(ops::rms_norm_fork(x, random_f64({5}, 33), 1e-5), std::invalid_argument);
}

TEST_CASE("gradcheck: linear_residual (residual added by the GEMM)", "[ops][gradcheck]") {
  auto x = random_f64({2, 3, 5}, 34);
  auto w = random_f64({4, 5}, 35);
  auto b = random_f64({4}, 36);
  auto r = random_f64({2, 3, 4}, 37);
  CHECK_GRAD(gradcheck([](auto& in) { return ops::linear_residual(in[0], in[1], Tensor(), in[2]); },
                       {x, w, r}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::linear_residual(in[0], in[1], in[2], in[3]); },
                       {x.clone(), w.clone(), b.clone(), r.clone()}));
  const Tensor y = ops::linear_residual(x, w, Tensor(), r);
  const auto expected = ops::add(r, ops::linear(x, w)).to_vector<double>();
  const auto got = y.to_vector<double>();
  REQUIRE(got.size() == expected.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(expected[i]).epsilon(1e-14));
  CHECK_THROWS_AS(ops::linear_residual(x, w, Tensor(), random_f64({2, 3, 5}, 38)), std::invalid_argument);
}

TEST_CASE("gradcheck: embedding (repeated ids accumulate)", "[ops][gradcheck]") {
  Tensor ids = Tensor::from_vector<int32_t>({1, 3, 1, 0, 3, 3}, {2, 3});
  auto table = random_f64({5, 4}, 10);
  CHECK_GRAD(gradcheck([ids](auto& in) { return ops::embedding(ids, in[0]); }, {table}));
}

TEST_CASE("gradcheck: rms_norm and layer_norm", "[ops][gradcheck]") {
  auto x = random_f64({3, 2, 6}, 11);
  auto w = random_f64({6}, 12);
  auto b = random_f64({6}, 13);
  CHECK_GRAD(gradcheck([](auto& in) { return ops::rms_norm(in[0], in[1], 1e-5); }, {x, w}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::rms_norm(in[0], Tensor(), 1e-5); }, {x.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::layer_norm(in[0], in[1], in[2], 1e-5); },
                       {x.clone(), w.clone(), b.clone()}));
  CHECK_GRAD(gradcheck([](auto& in) { return ops::layer_norm(in[0], Tensor(), Tensor(), 1e-5); }, {x.clone()}));
}

TEST_CASE("gradcheck: rope", "[ops][gradcheck]") {
  auto x = random_f64({2, 5, 3, 8}, 14);
  CHECK_GRAD(gradcheck([](auto& in) { return ops::rope(in[0], 10000.0); }, {x}));
}

TEST_CASE("gradcheck: causal attention, multi-head and grouped-query", "[ops][gradcheck]") {
  SECTION("MHA") {
    auto q = random_f64({2, 5, 2, 4}, 15), k = random_f64({2, 5, 2, 4}, 16), v = random_f64({2, 5, 2, 4}, 17);
    CHECK_GRAD(gradcheck([](auto& in) { return ops::causal_attention(in[0], in[1], in[2]); }, {q, k, v}));
  }
  SECTION("GQA") {
    auto q = random_f64({1, 6, 4, 4}, 18), k = random_f64({1, 6, 2, 4}, 19), v = random_f64({1, 6, 2, 4}, 20);
    CHECK_GRAD(gradcheck([](auto& in) { return ops::causal_attention(in[0], in[1], in[2]); }, {q, k, v}));
  }
}

TEST_CASE("gradcheck: softmax and gated linear units", "[ops][gradcheck]") {
  auto x = random_f64({4, 7}, 21);
  CHECK_GRAD(gradcheck([](auto& in) { return ops::softmax(in[0]); }, {x}));
  for (GluKind kind : {GluKind::swiglu, GluKind::geglu, GluKind::reglu}) {
    INFO("glu kind " << int(kind));
    auto g = random_f64({3, 6}, 22), u = random_f64({3, 6}, 23);
    auto gv = g.data<double>();
    for (int64_t i = 0; i < g.numel(); ++i)
      if (std::abs(gv[i]) < 0.05) gv[i] += 0.1;
    CHECK_GRAD(gradcheck([kind](auto& in) { return ops::glu(kind, in[0], in[1]); }, {g, u}));
  }
}

TEST_CASE("gradcheck: cross entropy with ignored targets", "[ops][gradcheck]") {
  auto logits = random_f64({5, 9}, 24, 2.0);
  Tensor targets = Tensor::from_vector<int32_t>({3, -1, 8, 0, 3}, {5});
  CHECK_GRAD(gradcheck([targets](auto& in) { return ops::cross_entropy(in[0], targets); }, {logits}));
}

TEST_CASE("gradcheck: fused activation mixture in all three coefficient layouts", "[ops][gradcheck]") {
  const std::vector<UnaryOp> dictionary{UnaryOp::relu, UnaryOp::gelu_tanh, UnaryOp::silu, UnaryOp::identity};
  auto h = random_f64({2, 3, 5}, 40);
  auto hv = h.data<double>();
  for (int64_t i = 0; i < h.numel(); ++i)
    if (std::abs(hv[i]) < 0.05) hv[i] += 0.1;  // away from relu's kink
  CHECK_GRAD(gradcheck([&](auto& in) { return ops::activation_mixture(in[0], dictionary, in[1], MixtureCoef::per_row); },
                       {h.clone(), random_f64({2, 3, 4}, 41)}));
  CHECK_GRAD(gradcheck([&](auto& in) { return ops::activation_mixture(in[0], dictionary, in[1], MixtureCoef::shared); },
                       {h.clone(), random_f64({4}, 42)}));
  CHECK_GRAD(gradcheck([&](auto& in) { return ops::activation_mixture(in[0], dictionary, in[1], MixtureCoef::per_channel); },
                       {h.clone(), random_f64({4, 5}, 43)}));
}
