// Placeholder until the data pipeline lands: tokenize / tokenizer subcommands.
#include <CLI/CLI.hpp>

#include "cmd/commands.h"

namespace pt::cmd {
void register_data_commands(CLI::App& app) { (void)app; }
}  // namespace pt::cmd
