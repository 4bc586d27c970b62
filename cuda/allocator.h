// Caching allocator for device memory (see allocator.cpp).
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <unordered_map>

#include "core/engine/allocator.h"

namespace pt::cuda {

class CachingAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
  AllocatorStats stats() const override;
  void reset_peak() override;
  void release_cached() override;

  // Block size a request of `bytes` is rounded up to (exposed for tests and docs).
  static size_t round_size(size_t bytes);

 private:
  void release_cached_locked();

  mutable std::mutex mutex_;
  std::multimap<size_t, void*> free_blocks_;       // cached blocks by size
  std::unordered_map<void*, size_t> live_blocks_;  // handed-out pointer -> block size
  AllocatorStats stats_;
};

}  // namespace pt::cuda
