// Allocators own device memory. Storage asks the allocator registered for its device.
// The CUDA backend registers a caching allocator (no cudaMalloc in the steady-state step);
// the CPU allocator hands out 64-byte aligned blocks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/engine/dtype.h"

namespace pt {

struct AllocatorStats {
  int64_t allocated_bytes = 0;       // live allocations handed out
  int64_t peak_allocated_bytes = 0;
  int64_t reserved_bytes = 0;        // held from the system (>= allocated for caching allocators)
  int64_t num_system_allocs = 0;     // calls into the system allocator (malloc / cudaMalloc)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void reset_peak() = 0;
  virtual void release_cached() {}  // return cached blocks to the system
};

Allocator& allocator_for(Device device);  // throws if no backend for that device is available
void register_allocator(DeviceType type, Allocator* allocator);

}  // namespace pt
