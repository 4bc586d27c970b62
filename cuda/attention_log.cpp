// Logging for cuda/attention.cu. A separate host-only file because spdlog's fmt headers do not
// compile under nvcc (consteval format strings); the .cu declares attention_log itself.
#include <spdlog/spdlog.h>

#include <string>

namespace pt::cuda {

void attention_log(bool warning, const std::string& message) {
  if (warning) spdlog::warn("{}", message);
  else spdlog::info("{}", message);
}

}  // namespace pt::cuda
