#include "core/engine/allocator.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

namespace pt {
namespace {

// Host memory, 64-byte aligned (cache lines, 512-bit vectors). No caching: malloc is fast enough
// on the CPU path and keeps the reference simple.
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    const size_t rounded = (bytes + 63) & ~size_t{63};
    void* ptr = std::aligned_alloc(64, rounded);
    if (!ptr) throw std::bad_alloc();
    const int64_t now = allocated_ += static_cast<int64_t>(bytes);
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    ++system_allocs_;
    return ptr;
  }
  void deallocate(void* ptr, size_t bytes) override {
    if (!ptr) return;
    allocated_ -= static_cast<int64_t>(bytes);
    std::free(ptr);
  }
  AllocatorStats stats() const override {
    return {allocated_.load(), peak_.load(), allocated_.load(), system_allocs_.load()};
  }
  void reset_peak() override { peak_ = allocated_.load(); }

 private:
  std::atomic<int64_t> allocated_{0}, peak_{0}, system_allocs_{0};
};

CpuAllocator cpu_allocator;
Allocator* cuda_allocator = nullptr;

}  // namespace

void register_allocator(DeviceType type, Allocator* allocator) {
  if (type == DeviceType::cuda) cuda_allocator = allocator;
}

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) return cpu_allocator;
  if (!cuda_allocator)
    throw std::runtime_error("device " + device.str() +
                             " is not available: this build has no CUDA backend or no GPU was found");
  return *cuda_allocator;
}

}  // namespace pt
