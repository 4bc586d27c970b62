// Start-up registration of the CUDA backend. Plain C++: no CUDA headers, so cmd/ and test/ can
// include it. Call once at the start of main (idempotent; later calls return the first answer).
#pragma once

namespace pt::cuda {

// Registers the CUDA backend and its caching allocator for DeviceType::cuda when the CUDA runtime
// reports at least one device. Returns false (registering nothing) on a machine without a usable
// GPU or driver, so CPU-only machines keep working; `device cuda:0 is not available` is then the
// error a cuda tensor produces.
bool register_cuda_backend();

}  // namespace pt::cuda
