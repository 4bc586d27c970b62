// pretrain: the command-line entry point. Subcommands live in cmd/*.cpp.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <exception>

#include "cmd/commands.h"
#ifdef PRETRAIN_WITH_CUDA
#include "cuda/register.h"
#endif

int main(int argc, char** argv) {
  // Progress and diagnostics go to stderr; stdout carries results (validate's spec, bench's JSON).
  spdlog::set_default_logger(spdlog::stderr_color_mt("pretrain"));
  spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
#ifdef PRETRAIN_WITH_CUDA
  pt::cuda::register_cuda_backend();  // no-op (returns false) without a GPU
#endif
  CLI::App app{"pretrain: pretrain dense and Mixture-of-Experts transformers from a JSON experiment spec"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "pretrain 0.1.0");
  pt::cmd::register_train_commands(app);
  pt::cmd::register_data_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
