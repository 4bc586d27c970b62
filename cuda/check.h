// Checked CUDA / cuBLAS / cuDNN calls. Every runtime call and every kernel launch in cuda/ goes
// through one of these macros; a failure throws std::runtime_error naming file:line, the call
// text and the library's error string, e.g.
//   cuda/gemm.cpp:120: cublasLtMatmul(...) failed: CUBLAS_STATUS_NOT_SUPPORTED (the functionality ...)
// Include cudnn.h before this header to get CUDNN_CHECK.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pt::cuda {

[[noreturn]] inline void throw_error(const char* file, int line, const char* call, const std::string& what) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call + " failed: " + what);
}

inline void check_cuda(cudaError_t err, const char* file, int line, const char* call) {
  if (err != cudaSuccess)
    throw_error(file, line, call, std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")");
}

inline void check_cublas(cublasStatus_t status, const char* file, int line, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw_error(file, line, call, std::string(cublasGetStatusName(status)) + " (" + cublasGetStatusString(status) + ")");
}

}  // namespace pt::cuda

#define CUDA_CHECK(call) ::pt::cuda::check_cuda((call), __FILE__, __LINE__, #call)
#define CUBLAS_CHECK(call) ::pt::cuda::check_cublas((call), __FILE__, __LINE__, #call)
// After every kernel launch: catches bad launch configurations immediately (asynchronous
// faults surface at the next synchronising call, which is checked too).
#define CUDA_CHECK_LAUNCH() ::pt::cuda::check_cuda(cudaGetLastError(), __FILE__, __LINE__, "kernel launch")

#if defined(CUDNN_VERSION)
namespace pt::cuda {
inline void check_cudnn(cudnnStatus_t status, const char* file, int line, const char* call) {
  if (status != CUDNN_STATUS_SUCCESS) throw_error(file, line, call, cudnnGetErrorString(status));
}
}  // namespace pt::cuda
#define CUDNN_CHECK(call) ::pt::cuda::check_cudnn((call), __FILE__, __LINE__, #call)
#endif
