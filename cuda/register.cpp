// pt::cuda::register_cuda_backend(): probe for a GPU, then register the backend and allocator.
#include "cuda/register.h"

#include <cuda_runtime.h>

#include <spdlog/spdlog.h>

#include <exception>
#include <mutex>

#include "core/engine/allocator.h"
#include "core/engine/backend.h"
#include "cuda/allocator.h"
#include "cuda/backend.h"
#include "cuda/check.h"

namespace pt::cuda {

bool register_cuda_backend() {
  static std::once_flag once;
  static bool registered = false;
  std::call_once(once, [] {
    int count = 0;
    // No driver, no device, or a driver too old for this runtime: stay CPU-only.
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
      (void)cudaGetLastError();
      return;
    }
    try {
      CUDA_CHECK(cudaSetDevice(0));
      // Deliberately leaked: they must outlive every tensor, including static ones destroyed at exit.
      auto* allocator = new CachingAllocator();
      auto* backend = new CudaBackend();
      register_allocator(DeviceType::cuda, allocator);
      register_backend(DeviceType::cuda, backend);
      registered = true;
    } catch (const std::exception& e) {
      spdlog::warn("CUDA backend disabled: {}", e.what());
    }
  });
  return registered;
}

}  // namespace pt::cuda
