#include <CLI/CLI.hpp>

#include "cmd/commands.h"

namespace pt::cmd {
void register_train_commands(CLI::App& app) { (void)app; }
}  // namespace pt::cmd
