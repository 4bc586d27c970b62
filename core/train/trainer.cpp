#include "core/train/trainer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "core/engine/autograd.h"
#include "core/engine/backend.h"
#include "core/io/checkpoint.h"
#include "core/train/train_state.h"
#include "core/model/model.h"
#include "core/engine/ops.h"
#include "core/train/optim.h"
#include "data/loader.h"
#include "data/synthetic.h"

namespace pt {
namespace fs = std::filesystem;

namespace {

std::atomic<int> stop_signal{0};
// First SIGINT/SIGTERM: finish the step, checkpoint, stop. A second one: give up at once.
extern "C" void on_stop_signal(int sig) {
  if (stop_signal != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  stop_signal = sig;
}

// Installs SIGINT/SIGTERM handlers for the scope of a training run (Slurm sends SIGTERM before
// killing a job): the loop finishes its step, writes a checkpoint and returns.
class SignalScope {
 public:
  SignalScope() {
    stop_signal = 0;
    previous_int_ = std::signal(SIGINT, on_stop_signal);
    previous_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~SignalScope() {
    std::signal(SIGINT, previous_int_);
    std::signal(SIGTERM, previous_term_);
  }

 private:
  void (*previous_int_)(int);
  void (*previous_term_)(int);
};

data::MarkovSpec markov_spec(const ExperimentSpec& spec) {
  return {spec.model.vocab_size, spec.data.synthetic.support, spec.data.synthetic.concentration, spec.data.synthetic.seed};
}

std::string human_count(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

std::string human_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", long(s / 3600), long(s / 60 % 60));
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", long(s / 60), long(s % 60));
  else std::snprintf(buf, sizeof buf, "%lds", long(s));
  return buf;
}

// Keeps the metrics lines of steps <= `step` (a resumed run rewrites what came after).
void truncate_metrics(const fs::path& file, int64_t step) {
  if (!fs::exists(file)) return;
  std::ifstream in(file);
  std::vector<std::string> kept;
  for (std::string line; std::getline(in, line);) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= step) kept.push_back(line);
    } catch (const nlohmann::json::exception&) {
      // a torn last line from a crash: drop it
    }
  }
  in.close();
  std::ofstream out(file, std::ios::trunc);
  for (const std::string& line : kept) out << line << '\n';
}

class Trainer {
 public:
  Trainer(const ExperimentSpec& spec, const TrainOptions& options)
      : spec_(spec),
        options_(options),
        device_(parse_device(std::string(to_string(spec.training.device)))),
        init_rng_(spec.training.seed),
        model_(spec.model, init_rng_, DType::f32, device_),
        optimizer_(model_.params(), spec.optim),
        train_step_(model_, optimizer_, spec.training.grad_accum, device_),
        train_data_(make_batch_source(spec, "train")),
        val_data_(make_batch_source(spec, "val")),
        total_steps_(spec.total_steps()),
        floor_(entropy_floor(spec)) {
    model_.set_execution(execution_options(spec.training));
    if (train_data_->vocab_size() > spec.model.vocab_size)
      throw std::runtime_error("data produces token ids up to " + std::to_string(train_data_->vocab_size() - 1) +
                               " but model.vocab_size is " + std::to_string(spec.model.vocab_size));
    if (val_data_) val_start_state_ = val_data_->state();
  }

  TrainResult run() {
    TrainResult result;
    result.entropy_floor = floor_;
    result.final_val_loss = std::numeric_limits<double>::quiet_NaN();
    prepare_run_dir();
    int64_t step = 0;
    if (options_.resume) step = resume();
    result.start_step = step;
    if (step == 0) log("{} | {} parameters | {} steps of {} tokens | {}", spec_.name,
                       human_count(double(model_.num_parameters())), total_steps_,
                       spec_.training.tokens_per_step(spec_.model.seq_len), train_data_->describe());
    if (options_.stop_at_step > 0 && step >= options_.stop_at_step) {
      // Resumed at or past --stop-at (e.g. a requeued job with the same --stop-at): the checkpoint of
      // that step is already on disk, so there is nothing to train; one more step would overshoot.
      log("--stop-at {}: the run is already at step {}; nothing to do", options_.stop_at_step, step);
      result.final_step = step;
      return result;
    }
    metrics_.open(options_.run_dir / "metrics.jsonl", std::ios::app);
    SignalScope signals;
    const auto run_start = std::chrono::steady_clock::now();
    const int64_t tokens_per_step = spec_.training.tokens_per_step(spec_.model.seq_len);
    while (step < total_steps_) {
      const auto t0 = std::chrono::steady_clock::now();
      const double lr = learning_rate(spec_.optim, spec_.schedule, step, total_steps_);
      const StepStats stats = train_step_.run(
          [this] { return train_data_->next(spec_.training.micro_batch, spec_.model.seq_len); }, lr, step + 1);
      const double loss = stats.loss;
      ++step;
      result.train_losses.push_back(loss);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
      metrics_ << nlohmann::json{{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", stats.grad_norm},
                                 {"tokens", step * tokens_per_step}, {"tokens_per_s", double(tokens_per_step) / seconds},
                                 {"elapsed_s", elapsed}}.dump()
               << '\n';
      if (step % spec_.logging.every == 0 || step == total_steps_ || step == 1) {
        const double eta = elapsed / double(step - result.start_step) * double(total_steps_ - step);
        log("step {:>6}/{} | loss {:.4f} | lr {:.2e} | grad_norm {:.3f} | {} tok/s | eta {}", step, total_steps_, loss,
            lr, stats.grad_norm, human_count(double(tokens_per_step) / seconds), human_duration(eta));
      }
      const bool eval_now = (spec_.training.eval_every > 0 && step % spec_.training.eval_every == 0) || step == total_steps_;
      if (eval_now && val_data_) {
        result.final_val_loss = evaluate();
        nlohmann::json val_line{{"step", step}, {"val_loss", result.final_val_loss}};
        val_line.update(val_diagnostics_);  // model diagnostics (docs/options.md) on the first validation batch
        metrics_ << val_line.dump() << '\n';
        if (std::isnan(floor_)) log("step {:>6} | val_loss {:.4f}", step, result.final_val_loss);
        else log("step {:>6} | val_loss {:.4f} | entropy floor {:.4f} (gap {:.4f})", step, result.final_val_loss, floor_,
                 result.final_val_loss - floor_);
      }
      metrics_.flush();
      const bool stop_requested = stop_signal != 0 || (options_.stop_at_step > 0 && step >= options_.stop_at_step);
      const bool periodic = spec_.checkpoint.every > 0 && step % spec_.checkpoint.every == 0;
      if (periodic || step == total_steps_ || stop_requested) save_checkpoint(step);
      if (stop_requested) {
        result.interrupted = stop_signal != 0;
        if (stop_signal) log("caught signal {}: checkpoint at step {} written; resume with --resume", int(stop_signal), step);
        break;
      }
    }
    result.final_step = step;
    return result;
  }

 private:
  template <class... Args>
  void log(fmt::format_string<Args...> format, Args&&... args) {
    if (!options_.quiet) spdlog::info(format, std::forward<Args>(args)...);
  }

  void prepare_run_dir() {
    fs::create_directories(options_.run_dir);
    const fs::path spec_file = options_.run_dir / "spec.json";
    if (!options_.resume) {
      // A fresh run must not silently mix its metrics/checkpoints with an older one's.
      if (fs::exists(options_.run_dir / "metrics.jsonl") || !ckpt::list_checkpoints(options_.run_dir / "checkpoints").empty())
        throw std::runtime_error("run directory " + options_.run_dir.string() +
                                 " already holds a run; pass --resume to continue it or choose another --run-dir");
    }
    std::ofstream(spec_file) << to_json(spec_).dump(2) << '\n';
  }

  double evaluate() {
    NoGradGuard no_grad;
    val_data_->load_state(val_start_state_);  // the same validation batches every time
    double total = 0.0;
    for (int64_t i = 0; i < spec_.training.eval_batches; ++i) {
      auto [inputs, targets] = batch_to_device(val_data_->next(spec_.training.micro_batch, spec_.model.seq_len), device_);
      total += model_.loss(inputs, targets, targets.numel()).item();
      if (i == 0) val_diagnostics_ = model_.diagnostics(inputs);
    }
    return total / double(spec_.training.eval_batches);
  }

  void save_checkpoint(int64_t step) {
    const ckpt::Checkpoint ck = training_checkpoint(spec_, step, model_, optimizer_, train_data_->state());
    const fs::path dir = options_.run_dir / "checkpoints";
    const fs::path file = ckpt::checkpoint_file(dir, step);
    ckpt::write_checkpoint(file, ck);
    ckpt::prune_checkpoints(dir, spec_.checkpoint.keep_last);
    log("checkpoint {}", file.string());
  }

  int64_t resume() {
    const fs::path dir = options_.run_dir / "checkpoints";
    auto latest = ckpt::load_latest_valid(dir, [](const fs::path& file, const std::string& reason) {
      (void)file;  // the reason names the file
      spdlog::warn("skipping checkpoint: {}", reason);
    });
    if (!latest) {
      if (ckpt::list_checkpoints(dir).empty()) {
        // Nothing to resume from (e.g. the job was killed before its first checkpoint): start over,
        // so a requeued job makes progress instead of failing forever. Metrics of the lost steps go.
        const fs::path metrics = options_.run_dir / "metrics.jsonl";
        if (fs::exists(metrics)) {
          spdlog::warn("--resume: no checkpoint in {}; starting from scratch and discarding {}", dir.string(),
                       metrics.string());
          fs::remove(metrics);
        } else {
          log("--resume: no checkpoint in {}, starting from scratch", dir.string());
        }
        return 0;
      }
      throw std::runtime_error("--resume: no valid checkpoint in " + dir.string() +
                               " (see the warnings above); refusing to overwrite the run");
    }
    const auto& [file, ck] = *latest;
    const int64_t loaded_step = checkpoint_step(ck, file);  // checks the format version first
    const auto listed = ckpt::list_checkpoints(dir);
    const auto loaded_entry = std::find_if(listed.begin(), listed.end(), [&](const auto& e) { return e.second == file; });
    for (auto it = loaded_entry == listed.end() ? listed.end() : std::next(loaded_entry); it != listed.end(); ++it) {
      const fs::path& newer_file = it->second;
      fs::path aside = newer_file;
      aside += ".rejected";
      std::error_code ec;
      fs::rename(newer_file, aside, ec);
      if (ec) throw std::runtime_error("--resume: cannot move the invalid checkpoint " + newer_file.string() + " aside: " + ec.message());
      spdlog::warn("moved the invalid checkpoint {} aside to {}", newer_file.string(), aside.string());
    }
    const RestoredTraining restored = restore_training_state(ck, file, spec_, model_, optimizer_);
    train_data_->load_state(restored.train_data_state);
    const int64_t step = restored.step;
    truncate_metrics(options_.run_dir / "metrics.jsonl", step);
    log("resumed from {} at step {}/{}{}", file.string(), step, total_steps_,
        step >= total_steps_ ? ": the run is already complete" : "");
    return step;
  }

  ExperimentSpec spec_;
  TrainOptions options_;
  Device device_;
  Rng init_rng_;
  Transformer model_;
  AdamW optimizer_;
  TrainStep train_step_;
  std::unique_ptr<data::BatchSource> train_data_, val_data_;
  nlohmann::json val_start_state_;
  int64_t total_steps_;
  double floor_;
  std::ofstream metrics_;
  nlohmann::json val_diagnostics_ = nlohmann::json::object();
};

}  // namespace

std::unique_ptr<data::BatchSource> make_batch_source(const ExperimentSpec& spec, const std::string& split) {
  const bool val = split == "val";
  if (spec.data.source == DataSource::synthetic) {
    // Training and validation read independent streams of the same language.
    const uint64_t stream = spec.training.seed * 2 + (val ? 1 : 0);
    return std::make_unique<data::MarkovSource>(markov_spec(spec), 0x5EED0000ull + stream);
  }
  const std::string& glob = val ? spec.data.val : spec.data.train;
  if (glob.empty()) return nullptr;
  data::ShardLoaderOptions options;
  options.glob = glob;
  options.seed = spec.training.seed + (val ? 1 : 0);
  options.vocab_size = spec.model.vocab_size;
  return data::open_shard_loader(options);
}

double entropy_floor(const ExperimentSpec& spec) {
  if (spec.data.source != DataSource::synthetic) return std::numeric_limits<double>::quiet_NaN();
  return data::MarkovChain(markov_spec(spec)).entropy_rate();
}

TrainResult train(const ExperimentSpec& spec, const TrainOptions& options) {
  Trainer trainer(spec, options);
  return trainer.run();
}

}  // namespace pt
