// pretrain train | validate | bench
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <iostream>

#include "cmd/commands.h"
#include "core/engine/allocator.h"
#include "core/engine/autograd.h"
#include "core/engine/backend.h"
#include "core/model/model.h"
#include "core/train/optim.h"
#include "core/engine/profiling_backend.h"
#include "core/spec/spec.h"
#include "core/train/trainer.h"

namespace pt::cmd {
namespace fs = std::filesystem;

namespace {

struct SpecArgs {
  std::string spec_path;  // empty = embedded default
  std::vector<std::string> overrides;
};

void add_spec_args(CLI::App* cmd, SpecArgs& args, bool required) {
  auto* opt = cmd->add_option("spec", args.spec_path, "JSON experiment spec (default: the embedded tiny CPU spec)");
  if (required) opt->required();
  cmd->add_option("--set", args.overrides, "override a spec key, e.g. --set optim.lr=1e-3 (repeatable)");
}

ExperimentSpec resolve_spec(const SpecArgs& args) {
  ExperimentSpec spec;
  if (!args.spec_path.empty()) {
    spec = load_spec(args.spec_path, args.overrides);
  } else {
    nlohmann::json j = default_spec_json();
    for (const auto& o : args.overrides) apply_override(j, o);
    spec = parse_spec(j, "<embedded default spec>");
  }
  for (const std::string& message : inert_settings(spec)) spdlog::warn("{}", message);
  return spec;
}

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::localtime(&now));
  return buf;
}

// A fresh runs/<name>/<timestamp>[-N] directory, created atomically so two runs started in the same
// second (e.g. array tasks) never share one.
fs::path new_run_dir(const fs::path& parent) {
  fs::create_directories(parent);
  const std::string stamp = timestamp();
  for (int n = 0;; ++n) {
    const fs::path candidate = parent / (n == 0 ? stamp : stamp + "-" + std::to_string(n));
    if (fs::create_directory(candidate)) return candidate;
  }
}

// Newest run directory under runs/<name>/ (names are timestamps, so they sort by time).
fs::path latest_run_dir(const fs::path& parent) {
  fs::path best;
  if (fs::is_directory(parent))
    for (const auto& entry : fs::directory_iterator(parent))
      if (entry.is_directory() && (best.empty() || entry.path().filename() > best.filename())) best = entry.path();
  if (best.empty()) throw std::runtime_error("--resume: no run directory under " + parent.string() + "; pass --run-dir");
  return best;
}

void run_train(const SpecArgs& args, const std::string& run_dir, bool resume, int64_t stop_at) {
  const ExperimentSpec spec = resolve_spec(args);
  TrainOptions options;
  options.resume = resume;
  options.stop_at_step = stop_at;
  const fs::path parent = fs::path("runs") / spec.name;
  options.run_dir = !run_dir.empty() ? fs::path(run_dir) : resume ? latest_run_dir(parent) : new_run_dir(parent);
  spdlog::info("run directory {}", options.run_dir.string());
  const TrainResult result = train(spec, options);
  if (!result.interrupted && result.final_step >= spec.total_steps() && !std::isnan(result.final_val_loss)) {
    if (std::isnan(result.entropy_floor))
      spdlog::info("done: {} steps, final val_loss {:.4f}", result.final_step, result.final_val_loss);
    else
      spdlog::info("done: {} steps, final val_loss {:.4f} vs entropy floor {:.4f} (gap {:.4f} nats/token)",
                   result.final_step, result.final_val_loss, result.entropy_floor,
                   result.final_val_loss - result.entropy_floor);
  }
}

void run_validate(const SpecArgs& args) {
  const ExperimentSpec spec = resolve_spec(args);
  std::cout << to_json(spec).dump(2) << "\n";
  std::map<std::string, int64_t> by_kind;
  for (const ParamInfo& p : parameter_table(spec.model)) by_kind[param_kind_name(p.kind)] += shape_numel(p.shape);
  std::cout << "parameters: " << count_parameters(spec.model) << " (";
  bool first = true;
  for (const auto& [kind, n] : by_kind) {
    std::cout << (first ? "" : ", ") << kind << " " << n;
    first = false;
  }
  std::cout << ")\n";
  std::cout << "steps: " << spec.total_steps() << " x " << spec.training.tokens_per_step(spec.model.seq_len)
            << " tokens = " << spec.total_steps() * spec.training.tokens_per_step(spec.model.seq_len) << " tokens\n";
  const double floor = entropy_floor(spec);
  if (!std::isnan(floor)) std::cout << "synthetic data entropy floor: " << floor << " nats/token\n";
}

// FLOPs per token of a training step: 6N for the matrix products of forward + backward
// (N = non-embedding-lookup parameters: every matrix touched by a GEMM), plus 12 * L * d * T for
// attention scores and values (forward + backward, causal masking not discounted).
double flops_per_token(const ModelSpec& m) {
  int64_t gemm_params = 0;
  for (const ParamInfo& p : parameter_table(m))
    if (p.kind == ParamKind::matrix) gemm_params += shape_numel(p.shape);
  if (m.tied_embeddings) gemm_params += m.vocab_size * m.d_model;  // the LM head GEMM
  return 6.0 * double(gemm_params) + 12.0 * double(m.n_layers) * double(m.d_model) * double(m.seq_len);
}

void run_bench(const SpecArgs& args, int64_t warmup, int64_t steps, double peak_tflops, const std::string& json_out,
               int64_t profile_steps) {
  const ExperimentSpec spec = resolve_spec(args);
  const Device device = parse_device(std::string(to_string(spec.training.device)));
  Rng rng(spec.training.seed);
  Transformer model(spec.model, rng, DType::f32, device);
  model.set_execution(execution_options(spec.training));
  AdamW optimizer(model.params(), spec.optim);
  auto source = make_batch_source(spec, "train");
  const int64_t tokens_per_step = spec.training.tokens_per_step(spec.model.seq_len);
  auto next_batches = [&] {
    std::vector<data::TokenBatch> batches;
    for (int64_t micro = 0; micro < spec.training.grad_accum; ++micro)
      batches.push_back(source->next(spec.training.micro_batch, spec.model.seq_len));
    return batches;
  };
  std::vector<data::TokenBatch> batches = next_batches();
  TrainStep train_step(model, optimizer, spec.training.grad_accum, device);
  int64_t step = 0;
  auto one_step = [&] {
    size_t next = 0;
    train_step.run([&] { return batches.at(next++); }, spec.optim.lr, ++step);
    // The next step's tokens are generated on the host while the device finishes this step (as in
    // `pretrain train`, where generation overlaps the previous step's optimizer kernels), so the
    // timed step does not include a device-idle gap for host-side data generation.
    batches = next_batches();
    backend_for(device).synchronize();
  };
  spdlog::info("bench {}: {} parameters on {}, {} warm-up + {} timed steps of {} tokens", spec.name,
               model.num_parameters(), device.str(), warmup, steps, tokens_per_step);
  for (int64_t i = 0; i < warmup; ++i) one_step();
  allocator_for(device).reset_peak();
  const int64_t system_allocs_before = allocator_for(device).stats().num_system_allocs;
  std::vector<double> times;
  for (int64_t i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    one_step();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const double tokens_per_s = double(tokens_per_step) / median;
  const double tflops = flops_per_token(spec.model) * tokens_per_s / 1e12;
  nlohmann::json out = {{"spec", spec.name},
                        {"micro_batch", spec.training.micro_batch},
                        {"grad_accum", spec.training.grad_accum},
                        {"precision", std::string(to_string(spec.training.precision))},
                        {"recompute", std::string(to_string(spec.training.recompute))},
                        {"device", device.str()},
                        {"backend", backend_for(device).name()},
                        {"parameters", model.num_parameters()},
                        {"tokens_per_step", tokens_per_step},
                        {"warmup_steps", warmup},
                        {"timed_steps", steps},
                        {"ms_per_step_median", median * 1e3},
                        {"ms_per_step_min", times.front() * 1e3},
                        {"tokens_per_s", tokens_per_s},
                        {"flops_per_token", flops_per_token(spec.model)},
                        {"achieved_tflops", tflops},
                        {"peak_memory_bytes", allocator_for(device).stats().peak_allocated_bytes},
                        {"reserved_memory_bytes", allocator_for(device).stats().reserved_bytes},
                        {"system_allocs_in_timed_steps",
                         allocator_for(device).stats().num_system_allocs - system_allocs_before}};
  if (peak_tflops > 0) out["mfu"] = tflops / peak_tflops;
  if (profile_steps > 0) {
    // Per-kernel attribution: device timestamps around every backend call on CUDA (device time,
    // no added synchronisation), synchronised host clocks on the CPU (see core/engine/profiling_backend.h).
    ProfilingBackend profiler(backend_for(device));
    override_backend(device.type, &profiler);
    try {
      for (int64_t i = 0; i < profile_steps; ++i) one_step();
    } catch (...) {
      override_backend(device.type, nullptr);
      throw;
    }
    override_backend(device.type, nullptr);
    const double per_step = profiler.total_seconds() / double(profile_steps);
    std::cerr << "profile over " << profile_steps << " steps ("
              << (profiler.uses_device_timestamps() ? "device time between timestamps around each call"
                                                    : "each call synchronised and timed on the host")
              << "): " << per_step * 1e3 << " ms/step in kernels vs " << median * 1e3 << " ms/step timed\n";
    std::cerr << "   ms/step  share  calls/step  kernel\n";
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& e : profiler.entries()) {
      const double ms = e.seconds / double(profile_steps) * 1e3;
      const double calls = double(e.calls) / double(profile_steps);
      char line[64];
      std::snprintf(line, sizeof line, "%10.3f %5.1f%% %11.1f  ", ms, 100.0 * e.seconds / profiler.total_seconds(),
                    calls);
      std::cerr << line << e.key << "\n";
      rows.push_back({{"kernel", e.key}, {"ms_per_step", ms}, {"calls_per_step", calls}});
    }
    out["profile"] = {{"steps", profile_steps},
                      {"timing", profiler.uses_device_timestamps() ? "device_timestamps" : "synchronised_host_clock"},
                      {"ms_per_step_in_kernels", per_step * 1e3},
                      {"kernels", rows}};
  }
  std::cout << out.dump(2) << "\n";
  if (!json_out.empty()) std::ofstream(json_out) << out.dump(2) << "\n";
}

}  // namespace

void register_train_commands(CLI::App& app) {
  static SpecArgs train_args, validate_args, bench_args;
  static std::string run_dir;
  static bool resume = false;
  static int64_t stop_at = 0;
  auto* train = app.add_subcommand("train", "train a model from a spec (checkpoints and metrics in the run directory)");
  add_spec_args(train, train_args, false);
  train->add_option("--run-dir", run_dir, "run directory (default: runs/<name>/<timestamp>)");
  train->add_flag("--resume", resume, "continue from the newest valid checkpoint (of the newest run if no --run-dir)");
  train->add_option("--stop-at", stop_at, "checkpoint and exit after this step (e.g. to fit a job's time limit)")
      ->check(CLI::NonNegativeNumber);
  train->callback([] { run_train(train_args, run_dir, resume, stop_at); });

  auto* validate = app.add_subcommand("validate", "check a spec; print it resolved, with the parameter count");
  add_spec_args(validate, validate_args, true);
  validate->callback([] { run_validate(validate_args); });

  static int64_t warmup = 3, steps = 10;
  static double peak_tflops = 0.0;
  static std::string json_out;
  auto* bench = app.add_subcommand("bench", "steady-state training throughput (tokens/s, ms/step, TFLOP/s, MFU, memory)");
  add_spec_args(bench, bench_args, false);
  bench->add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  bench->add_option("--steps", steps, "timed steps (the median is reported)")->check(CLI::PositiveNumber);
  bench->add_option("--peak-tflops", peak_tflops, "device peak for MFU (e.g. 989 for an H100 SXM in bf16)");
  bench->add_option("--json", json_out, "also write the result to this file");
  static int64_t profile_steps = 0;
  bench->add_option("--profile", profile_steps,
                    "after the timed steps, run this many more with every kernel call timed; print a table")
      ->check(CLI::NonNegativeNumber);
  bench->callback([] { run_bench(bench_args, warmup, steps, peak_tflops, json_out, profile_steps); });
}

}  // namespace pt::cmd
