// The dense feed-forward block with the activation options (docs/options.md, "Activations"):
//
//   plain:  down(act(up(x)))                    act = relu | gelu | gelu_tanh | silu | relu2
//   GLU:    down(act(gate(x)) * up(x))          swiglu | geglu | reglu (one fused gate|up projection)
//   LA:     act(h) = sum_k a_k phi_k(h)         learnable coefficients per layer or per channel
//   MoA:    act_t(h) = sum_k alpha_tk phi_k(h)  alpha = softmax or sigmoid of a per-token router
//
// LA and MoA are gated (Type-II) or not. The down projection adds the block's residual in its GEMM.
// A feed-forward block is one implementation of FeedForward; a Mixture-of-Experts block is another.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/engine/backend.h"
#include "core/model/module.h"

namespace pt {

// What a block's feed-forward layer produces: the residual stream after it, and any auxiliary losses.
struct FeedForwardOutput {
  Tensor h;
  std::vector<NamedLoss> aux;
};

class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // x [B, T, d] (normed) -> residual + FFN(x).
  virtual FeedForwardOutput forward(const ForwardContext& ctx, const Tensor& x, const Tensor& residual) const = 0;
  // Diagnostics read from the parameters alone (LA coefficients), appended to `out`.
  virtual void parameter_diagnostics(const ParamStore& params, Diagnostics& out) const {}
};

class DenseFeedForward final : public FeedForward {
 public:
  DenseFeedForward(const ModelSpec& spec, ParamTable& table, const std::string& prefix, double out_init_std);
  FeedForwardOutput forward(const ForwardContext& ctx, const Tensor& x, const Tensor& residual) const override;
  void parameter_diagnostics(const ParamStore& params, Diagnostics& out) const override;

 private:
  Tensor activate(const ForwardContext& ctx, const Tensor& x, const Tensor& h) const;  // h: the (gate) projection

  Activation activation_;
  bool gated_;
  std::vector<UnaryOp> dictionary_;  // LA / MoA
  UnaryOp plain_ = UnaryOp::identity;  // plain activations
  bool moa_sigmoid_ = false, moa_exact_ = false;
  UnaryOp moa_base_ = UnaryOp::identity;
  BranchScales up_branches_, router_branches_;
  LinearParams up_, down_;
  ParamRef la_coef_, router_weight_, router_bias_, moa_blend_;
};

}  // namespace pt
