// CudaBackend: construction (stream, cuBLAS/cuBLASLt handles, GEMM workspace, error word),
// host <-> device transfers and synchronisation. The kernels are in the other cuda/ files.
#include "cuda/backend.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/check.h"

namespace pt::cuda {

namespace {
constexpr size_t kWorkspaceBytes = size_t{64} << 20;  // cuBLASLt workspace (Hopper kernels like >= 32 MiB)
constexpr int kReduceBlocks = 1024;                   // sum_squares partials (see reduce.cu)

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}
}  // namespace

CudaBackend::CudaBackend() {
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUBLAS_CHECK(cublasCreate(&cublas_));
  CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  CUBLAS_CHECK(cublasLtCreate(&cublaslt_));
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device));
  allow_tf32_ = env_flag("PRETRAIN_ALLOW_TF32");
  const char* gemm = std::getenv("PRETRAIN_GEMM");
  force_cublas_ = gemm && std::strcmp(gemm, "cublas") == 0;
  // Full fp32 GEMMs unless TF32 is asked for (parity with the CPU reference).
  CUBLAS_CHECK(cublasSetMathMode(cublas_, allow_tf32_ ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  workspace_bytes_ = kWorkspaceBytes;
  CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
  CUBLAS_CHECK(cublasSetWorkspace(cublas_, workspace_, workspace_bytes_));
  CUDA_CHECK(cudaMalloc(&device_error_, sizeof(DeviceError)));
  CUDA_CHECK(cudaMemset(device_error_, 0, sizeof(DeviceError)));
  CUDA_CHECK(cudaMalloc(&reduce_scratch_, sizeof(double) * (kReduceBlocks + 1)));
  CUDA_CHECK(cudaMallocHost(&reduce_host_, sizeof(double)));
  CUDA_CHECK(cudaDeviceSynchronize());
}

void CudaBackend::sync_and_check() {
  // The error word is read behind all queued work on stream_, so one synchronisation covers both.
  DeviceError err{};
  CUDA_CHECK(cudaMemcpyAsync(&err, device_error_, sizeof err, cudaMemcpyDeviceToHost, stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (err.code == kNoError) return;
  // Cleared on stream_: a plain cudaMemset runs on the legacy default stream, which does not
  // order with the non-blocking stream_, so a later kernel's report could race with the clear.
  CUDA_CHECK(cudaMemsetAsync(device_error_, 0, sizeof(DeviceError), stream_));
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  switch (err.code) {
    case kBadEmbeddingId:
      throw std::out_of_range("embedding: token id " + std::to_string(err.value) + " at position " +
                              std::to_string(err.position) + " is outside the vocabulary [0, " +
                              std::to_string(err.limit) + ") (found on the GPU, reported at the next sync)");
    case kBadTarget:
      throw std::out_of_range("cross_entropy: target " + std::to_string(err.value) + " at row " +
                              std::to_string(err.position) + " is outside [0, " + std::to_string(err.limit) +
                              ") (found on the GPU, reported at the next sync)");
    default: throw std::runtime_error("CUDA backend: unknown device error code " + std::to_string(err.code));
  }
}

void CudaBackend::synchronize() { sync_and_check(); }

int64_t CudaBackend::record_timestamp() {
  if (next_timestamp_ == static_cast<int64_t>(timestamps_.size())) {
    cudaEvent_t event = nullptr;
    CUDA_CHECK(cudaEventCreate(&event));
    timestamps_.push_back(event);
  }
  CUDA_CHECK(cudaEventRecord(timestamps_[static_cast<size_t>(next_timestamp_)], stream_));
  return next_timestamp_++;
}

double CudaBackend::seconds_between(int64_t from, int64_t to) {
  if (from < 0 || to < 0 || from >= next_timestamp_ || to >= next_timestamp_)
    throw std::out_of_range("seconds_between: timestamp " + std::to_string(from) + " or " + std::to_string(to) +
                            " was not recorded (" + std::to_string(next_timestamp_) + " since the last reset)");
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, timestamps_[static_cast<size_t>(from)], timestamps_[static_cast<size_t>(to)]));
  return static_cast<double>(ms) * 1e-3;
}

void CudaBackend::copy_from_host(const void* src, const Tensor& dst) {
  if (!dst.is_contiguous()) throw std::invalid_argument("copy_from_host into a non-contiguous tensor");
  if (!dst.nbytes()) return;
  CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src, dst.nbytes(), cudaMemcpyHostToDevice, stream_));
  // The host buffer may be freed as soon as we return (pageable or not): wait for the copy.
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy_to_host(const Tensor& src, void* dst) {
  if (!src.is_contiguous()) throw std::invalid_argument("copy_to_host from a non-contiguous tensor");
  if (src.nbytes()) CUDA_CHECK(cudaMemcpyAsync(dst, src.raw_data(), src.nbytes(), cudaMemcpyDeviceToHost, stream_));
  sync_and_check();
}

}  // namespace pt::cuda
