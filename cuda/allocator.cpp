// Caching device allocator.
//
// Requests are rounded up to a size class (512 B granularity up to 1 MiB, 2 MiB granularity
// above) and served from a pool of previously freed blocks: the smallest cached block that fits
// and wastes at most a quarter of itself (exact size-class hits in practice, since a training
// step allocates the same shapes every step). Only a miss calls cudaMalloc, so after the first
// step the steady state makes no system allocations. Blocks are never split or merged.
//
// Stream safety: the backend runs every kernel, copy and cuBLAS call on one stream, so a block
// freed on the host while kernels that use it are still queued can be handed out again at once:
// its next user is queued behind them on the same stream.
//
// On cudaMalloc failure the cache is released (cudaFree of every cached block) and the
// allocation retried once; a second failure throws with the allocator's statistics.
#include "cuda/allocator.h"

#include <stdexcept>
#include <string>

#include "cuda/check.h"

namespace pt::cuda {

namespace {
constexpr size_t kSmallLimit = size_t{1} << 20;  // 1 MiB
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t{2} << 20;  // 2 MiB

std::string mib(int64_t bytes) { return std::to_string(bytes / (1 << 20)) + " MiB"; }
}  // namespace

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes <= kSmallLimit) return (bytes + kSmallRound - 1) / kSmallRound * kSmallRound;
  return (bytes + kLargeRound - 1) / kLargeRound * kLargeRound;
}

void* CachingAllocator::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  void* ptr = nullptr;
  size_t block = size;
  auto it = free_blocks_.lower_bound(size);
  if (it != free_blocks_.end() && it->first - size <= it->first / 4) {
    block = it->first;
    ptr = it->second;
    free_blocks_.erase(it);
  } else {
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the sticky-free error state of the failed call
      release_cached_locked();
      err = cudaMalloc(&ptr, size);
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      // Only a real allocation failure is "out of memory"; anything else (typically a sticky error
      // left by an earlier faulting kernel) is reported under its own name.
      throw std::runtime_error(std::string(err == cudaErrorMemoryAllocation ? "CUDA out of memory: " : "CUDA error: ") +
                               "cudaMalloc of " + std::to_string(size) + " bytes failed (" + cudaGetErrorName(err) +
                               ": " + cudaGetErrorString(err) + "); allocated " + mib(stats_.allocated_bytes) +
                               ", reserved " + mib(stats_.reserved_bytes) + ", peak " +
                               mib(stats_.peak_allocated_bytes));
    }
    ++stats_.num_system_allocs;
    stats_.reserved_bytes += static_cast<int64_t>(size);
  }
  live_blocks_.emplace(ptr, block);
  stats_.allocated_bytes += static_cast<int64_t>(bytes);
  if (stats_.allocated_bytes > stats_.peak_allocated_bytes) stats_.peak_allocated_bytes = stats_.allocated_bytes;
  return ptr;
}

void CachingAllocator::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_blocks_.find(ptr);
  if (it == live_blocks_.end()) return;  // not ours (cannot happen through Storage); ignore rather than crash
  free_blocks_.emplace(it->second, ptr);
  live_blocks_.erase(it);
  stats_.allocated_bytes -= static_cast<int64_t>(bytes);
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
}

void CachingAllocator::release_cached() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached_locked();
}

void CachingAllocator::release_cached_locked() {
  // Cached blocks may still be read/written by queued kernels (they were freed on the host, not on
  // the stream): wait for the device explicitly rather than rely on cudaFree's implicit sync.
  if (!free_blocks_.empty()) CUDA_CHECK(cudaDeviceSynchronize());
  for (auto& [size, ptr] : free_blocks_) {
    CUDA_CHECK(cudaFree(ptr));
    stats_.reserved_bytes -= static_cast<int64_t>(size);
  }
  free_blocks_.clear();
}

}  // namespace pt::cuda
