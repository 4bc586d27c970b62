// The pretrain executable: exit codes and messages a user sees.
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "test/catch.h"

namespace fs = std::filesystem;

namespace {

struct Run {
  int exit_code;
  std::string output;  // stdout + stderr
};

Run run(const std::string& args) {
  const std::string command = std::string(PRETRAIN_BINARY) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace

TEST_CASE("cli: validate prints the resolved spec and the parameter count", "[cli]") {
  const Run r = run("validate " + std::string(PRETRAIN_SOURCE_DIR) + "/configs/default.json --set model.n_layers=3");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(r.output.find("\"n_layers\": 3") != std::string::npos);
  CHECK(r.output.find("parameters: ") != std::string::npos);
  CHECK(r.output.find("entropy floor") != std::string::npos);
}

TEST_CASE("cli: a bad spec fails with the file, path and value", "[cli]") {
  const fs::path file = fs::temp_directory_path() / ("pretrain_cli_bad_" + std::to_string(::getpid()) + ".json");
  std::ofstream(file) << R"({"model": {"n_heads": "twelve"}})";
  const Run r = run("validate " + file.string());
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK(r.output.find(file.string()) != std::string::npos);
  CHECK(r.output.find("model.n_heads") != std::string::npos);
  CHECK(r.output.find("twelve") != std::string::npos);
  fs::remove(file);
}

TEST_CASE("cli: train runs, checkpoints, and resumes through the command line", "[cli][e2e]") {
  const fs::path dir = fs::temp_directory_path() / ("pretrain_cli_run_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string common = "train --run-dir " + dir.string() +
                             " --set training.steps=6 --set schedule.warmup_steps=1 --set training.eval_every=3";
  Run first = run(common + " --stop-at 3");
  INFO(first.output);
  CHECK(first.exit_code == 0);
  CHECK(fs::exists(dir / "checkpoints" / "step_00000003.ckpt"));
  Run again = run(common);  // same run dir without --resume: refused
  CHECK(again.exit_code != 0);
  CHECK(again.output.find("--resume") != std::string::npos);
  Run resumed = run(common + " --resume");
  INFO(resumed.output);
  CHECK(resumed.exit_code == 0);
  CHECK(resumed.output.find("resumed from") != std::string::npos);
  CHECK(fs::exists(dir / "checkpoints" / "step_00000006.ckpt"));
  fs::remove_all(dir);
}

TEST_CASE("cli: a negative --stop-at is rejected, not silently ignored", "[cli]") {
  const fs::path dir = fs::temp_directory_path() / ("pretrain_cli_stop_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const Run r = run("train --run-dir " + dir.string() + " --set training.steps=2 --set schedule.warmup_steps=1 --stop-at -1");
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK(r.output.find("--stop-at") != std::string::npos);
  CHECK(!fs::exists(dir / "metrics.jsonl"));  // nothing was trained
  fs::remove_all(dir);
}

TEST_CASE("cli: asking for an unavailable device is a clear error", "[cli]") {
  const Run r = run("validate " + std::string(PRETRAIN_SOURCE_DIR) + "/configs/default.json --set training.device=\\\"tpu\\\"");
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK(r.output.find("training.device") != std::string::npos);
}

TEST_CASE("scripts/sweep expands a grid into resumable train commands", "[cli]") {
  const std::string sweep = std::string(PRETRAIN_SOURCE_DIR) + "/scripts/sweep";
  const std::string spec = std::string(PRETRAIN_SOURCE_DIR) + "/configs/default.json";
  FILE* pipe = popen(("python3 " + sweep + " " + spec +
                      " --grid optim.lr=1e-3,3e-3 --grid training.seed=1,2,3 --set training.steps=5 --name s 2>&1")
                         .c_str(),
                     "r");
  REQUIRE(pipe != nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  CHECK(pclose(pipe) == 0);
  INFO(out);
  CHECK(std::count(out.begin(), out.end(), '\n') == 6);
  CHECK(out.find("--run-dir runs/s/005-lr=3e-3-seed=3 --resume --set training.steps=5 --set optim.lr=3e-3 "
                 "--set training.seed=3") != std::string::npos);
}
