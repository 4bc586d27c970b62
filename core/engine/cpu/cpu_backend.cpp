#include "core/engine/cpu/cpu_backend.h"

namespace pt {

Backend& cpu_backend() {
  static cpu::CpuBackend backend;
  return backend;
}

}  // namespace pt
