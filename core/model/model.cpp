#include "core/model/model.h"

#include <cmath>
#include <stdexcept>

#include "core/engine/autograd.h"
#include "core/engine/memory_ops.h"
#include "core/engine/ops.h"

namespace pt {

Block::Block(const ModelSpec& spec, ParamTable& table, int64_t layer, double out_init_std) {
  const std::string p = "blocks." + std::to_string(layer);
  const bool scaled = Norm::block_norm_scaled(spec);
  attn_norm_ = Norm(spec, table, p + ".attn_norm", scaled);
  attention_ = std::make_unique<Attention>(spec, table, p + ".attn", out_init_std);
  mlp_norm_ = Norm(spec, table, p + ".mlp_norm", scaled);
  // The feed-forward layer of this block: a new kind (Mixture of Experts) is a new FeedForward here.
  ffn_ = std::make_unique<DenseFeedForward>(spec, table, p + ".mlp", out_init_std);
}

FeedForwardOutput Block::forward(const ForwardContext& ctx, const Tensor& in) const {
  const auto [h, h_normed] = attn_norm_.fork(ctx, in);
  const auto [x, x_normed] = mlp_norm_.add_forward(ctx, h, attention_->forward(ctx, h_normed));
  return ffn_->forward(ctx, x_normed, x);
}

Transformer::Transformer(const ModelSpec& spec, ParamTable& table) : spec_(spec) {
  const double std = spec.init_std;
  const double out_std = spec.scaled_residual_init ? std / std::sqrt(2.0 * static_cast<double>(spec.n_layers)) : std;
  embedding_ = std::make_unique<Embedding>(spec, table);
  for (int64_t l = 0; l < spec.n_layers; ++l) blocks_.push_back(std::make_unique<Block>(spec, table, l, out_std));
  // The final norm feeds one projection (the LM head), so its input-side scale is always its own.
  const bool final_scaled = spec.norm.scale != NormScale::none && spec.norm.scale_placement != ScalePlacement::output;
  final_norm_ = Norm(spec, table, "final_norm", final_scaled);
  head_ = std::make_unique<LMHead>(spec, table, embedding_->table());
}

Transformer::Transformer(const ModelSpec& spec, Rng& rng, DType dtype, Device device) : spec_(spec) {
  ParamTable table;
  Transformer modules(spec, table);
  embedding_ = std::move(modules.embedding_);
  blocks_ = std::move(modules.blocks_);
  final_norm_ = modules.final_norm_;
  head_ = std::move(modules.head_);
  store_ = ParamStore(table.entries(), rng, dtype, device);
}

std::vector<ParamInfo> parameter_table(const ModelSpec& spec) {
  ParamTable table;
  const Transformer modules(spec, table);
  return table.entries();
}

int64_t count_parameters(const ModelSpec& spec) {
  int64_t n = 0;
  for (const ParamInfo& p : parameter_table(spec)) n += shape_numel(p.shape);
  return n;
}

const Tensor& Transformer::param(const std::string& name) const { return store_.value(store_.at(name)); }

Tensor Transformer::hidden(const ForwardContext& ctx, const Tensor& tokens, std::vector<NamedLoss>* aux) const {
  if (tokens.ndim() != 2)
    throw std::invalid_argument("Transformer: tokens must be [batch, seq], got " + shape_str(tokens.shape()));
  Tensor h = embedding_->forward(ctx, tokens, execution_.compute_dtype);
  for (const auto& block : blocks_) {
    if (!execution_.recompute_blocks || !grad_enabled()) {
      FeedForwardOutput out = block->forward(ctx, h);
      h = out.h;
      if (aux) aux->insert(aux->end(), out.aux.begin(), out.aux.end());
      continue;
    }
    // One recompute segment per block, with the block's auxiliary losses as extra outputs (their
    // names are fixed by the spec, so the replay returns the same list). The segment outlives this
    // call (its backward re-runs it): it captures the block and the store, not the context.
    const Block* b = block.get();
    const ParamStore* store = &store_;
    auto names = std::make_shared<std::vector<std::string>>();
    const std::vector<Tensor> outs = ops::recompute(
        ops::MultiSegmentFn([b, store, names](const std::vector<Tensor>& in) {
          const ForwardContext segment_ctx{*store};
          FeedForwardOutput out = b->forward(segment_ctx, in[0]);
          std::vector<Tensor> flat{out.h};
          names->clear();
          for (NamedLoss& l : out.aux) {
            names->push_back(l.name);
            flat.push_back(l.value);
          }
          return flat;
        }),
        {h});
    h = outs[0];
    if (aux)
      for (size_t i = 1; i < outs.size(); ++i) aux->push_back({(*names)[i - 1], outs[i]});
  }
  return final_norm_.forward(ctx, h);
}

Tensor Transformer::forward(const Tensor& tokens) const {
  const ForwardContext ctx{store_};
  const Tensor h = hidden(ctx, tokens, nullptr);
  return ops::reshape(ops::linear(h, head_->weight(ctx)), {h.size(0) * h.size(1), spec_.vocab_size});
}

LossParts Transformer::loss_parts(const Tensor& tokens, const Tensor& targets, int64_t num_valid) const {
  const ForwardContext ctx{store_};
  LossParts parts;
  const Tensor h = hidden(ctx, tokens, &parts.aux);
  const int64_t rows = h.size(0) * h.size(1);
  const Tensor flat_targets = targets.contiguous().view({targets.numel()});
  parts.lm = ops::chunked_lm_loss(ops::reshape(h, {rows, spec_.d_model}), head_->weight(ctx), flat_targets,
                                  execution_.loss_chunk_rows, num_valid);
  parts.total = parts.lm;
  for (const NamedLoss& l : parts.aux) parts.total = ops::add(parts.total, ops::reshape(l.value, {}));
  return parts;
}

Tensor Transformer::loss(const Tensor& tokens, const Tensor& targets, int64_t num_valid) const {
  return loss_parts(tokens, targets, num_valid).total;
}

nlohmann::json Transformer::diagnostics(const Tensor& tokens) const {
  NoGradGuard no_grad;
  Diagnostics d;
  const ForwardContext ctx{store_, &d};
  const Tensor h = hidden(ctx, tokens, nullptr);
  ops::linear(h, head_->weight(ctx));  // the whole forward, as forward() runs it
  for (const auto& block : blocks_) block->feed_forward().parameter_diagnostics(store_, d);
  nlohmann::json j = nlohmann::json::object();
  j["attn_sink_share"] = d.attn_sink_share;
  if (!d.attn_gate_mean.empty()) j["attn_gate_mean"] = d.attn_gate_mean;
  if (!d.moa_alpha_mean.empty()) {
    j["moa_alpha_mean"] = d.moa_alpha_mean;
    j["moa_gate_entropy"] = d.moa_gate_entropy;
  }
  if (!d.la_coef.empty()) j["la_coef"] = d.la_coef;
  return j;
}

ExecutionOptions execution_options(const TrainingSpec& training) {
  ExecutionOptions options;
  if (training.precision == Precision::bf16) options.compute_dtype = DType::bf16;
  options.recompute_blocks = training.recompute == Recompute::full;
  options.loss_chunk_rows = training.loss_chunk_rows;
  return options;
}

void Transformer::set_execution(const ExecutionOptions& options) {
  if (options.compute_dtype && !is_floating(*options.compute_dtype))
    throw std::invalid_argument(std::string("compute dtype must be floating, got ") + dtype_name(*options.compute_dtype));
  execution_ = options;
  store_.set_compute_dtype(options.compute_dtype);  // forgets copies made for the previous compute dtype
}

}  // namespace pt
