// Each subcommand family registers itself on the top-level CLI11 app.
#pragma once

namespace CLI {
class App;
}

namespace pt::cmd {

void register_train_commands(CLI::App& app);     // train, validate, bench  (cmd/train.cpp)
void register_data_commands(CLI::App& app);      // tokenize, tokenizer train (cmd/data_commands.cpp)

}  // namespace pt::cmd
