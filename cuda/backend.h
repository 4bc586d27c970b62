// The CUDA backend: every Backend kernel for f32, bf16 (fp32 accumulation) and f64.
//
// One stream, one cuBLAS(Lt) handle, one GEMM workspace, all created at registration. Kernels
// live one family per file (elementwise.cu, reduce.cu, gemm.cpp, embedding.cu, norms.cu, rope.cu,
// softmax.cu, attention.cu, loss.cu, optimizer.cu); this header is internal to cuda/.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "core/engine/backend.h"

namespace pt::cuda {

// Errors that kernels find in the data (a token id outside the vocabulary, ...). The first one is
// recorded in device memory and reported (thrown) at the next synchronising call: copy_to_host,
// sum_squares or synchronize. Kernels never read out of bounds because of one.
struct DeviceError {
  int code;  // 0 none, 1 embedding id, 2 cross-entropy target
  int pad;
  long long value;
  long long position;
  long long limit;
};
enum DeviceErrorCode : int { kNoError = 0, kBadEmbeddingId = 1, kBadTarget = 2 };

class CudaBackend final : public Backend {
 public:
  CudaBackend();  // creates the stream, handles and workspace on the current device
  std::string name() const override { return "cuda"; }
  void synchronize() override;
  bool has_timestamps() const override { return true; }
  int64_t record_timestamp() override;
  double seconds_between(int64_t from, int64_t to) override;
  void reset_timestamps() override { next_timestamp_ = 0; }

  // Every kernel of backend_kernels.def (the composed ones fused).
#define PT_REQUIRED_KERNEL(ret, name, params, args) ret name params override;
#define PT_COMPOSED_KERNEL(ret, name, params, args) ret name params override;
#include "core/engine/backend_kernels.def"

  cudaStream_t stream() const { return stream_; }
  DeviceError* device_error() const { return device_error_; }

 private:
  // Waits for the stream, then throws the first DeviceError recorded by a kernel (and clears it).
  void sync_and_check();
  // cuBLASLt matmul (returns false when no algorithm fits, and the caller falls back to cuBLAS).
  // d (when given) receives the result instead of c, which is then only read (beta * c).
  bool gemm_lt(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const Tensor& a,
               const Tensor& b, double beta, const Tensor& c, int64_t batch, int64_t stride_a, int64_t stride_b,
               int64_t stride_c, const Tensor* d = nullptr);
  // cos/sin tables [seq, dim/2] for rope, built on the device in double and cached.
  const Tensor& rope_table(int64_t seq, int64_t dim, double theta, DType dtype);

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t cublaslt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  int sm_count_ = 1;               // multiprocessors of the device (grid sizes)
  bool allow_tf32_ = false;       // PRETRAIN_ALLOW_TF32=1
  bool force_cublas_ = false;     // PRETRAIN_GEMM=cublas: skip cuBLASLt
  DeviceError* device_error_ = nullptr;
  double* reduce_scratch_ = nullptr;  // block partials of sum_squares
  double* reduce_host_ = nullptr;     // pinned result of sum_squares
  std::map<std::tuple<int64_t, int64_t, double, DType>, Tensor> rope_tables_;
  std::vector<cudaEvent_t> timestamps_;  // record_timestamp's markers, reused after reset_timestamps
  int64_t next_timestamp_ = 0;
  std::mutex mutex_;  // guards the caches (kernels themselves are stream-ordered)
  // cuBLASLt algorithm cache keyed by the problem (see gemm.cpp)
  struct LtPlan;
  std::unordered_map<std::string, LtPlan*> lt_plans_;
};

}  // namespace pt::cuda
