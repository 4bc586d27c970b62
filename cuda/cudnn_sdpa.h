// Causal scaled-dot-product attention through cuDNN's fused flash-attention engine (cuDNN 9
// backend graph API, no cudnn-frontend): forward and backward for bf16 q/k/v with fp32 softmax
// statistics, grouped-query heads included. Internal to cuda/; attention.cu decides when to use it.
//
// Layouts are the Backend's (core/engine/backend.h): q/out/dout/dq [B, T, Hq, D], k/v/dk/dv [B, T, Hkv, D]
// (all contiguous), lse [B, Hq, T] f32 = the natural log-sum-exp of each row of scale * q k^T
// (exactly what the own kernels store, so either implementation's backward can consume it).
//
// Implementation notes (cuda/cudnn_sdpa.cpp has the full graph description): the graphs are the
// "composite" SDPA operation graphs cudnn-frontend emits (matmul/pointwise/reduction/reshape),
// which cuDNN 9 maps to its fused flash-attention engines; one execution plan per
// (forward/backward, B, T, Hq, Hkv, D), built on first use and cached together with failures. The
// attention scale is a by-value runtime scalar, so plans do not depend on it. Workspaces are
// per-call tensors on Device::cuda() (the caching allocator). All work runs on the stream given to
// the constructor; calls are serialised by an internal mutex. Destroy the object while the CUDA
// allocator is still alive (cached plans may hold small device tensors).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "core/engine/tensor.h"

namespace pt::cuda {

class CudnnSdpa {
 public:
  // Creates the cuDNN handle bound to `stream`; throws std::runtime_error naming the failing call
  // when the cuDNN library cannot be loaded or initialised.
  explicit CudnnSdpa(cudaStream_t stream);
  ~CudnnSdpa();
  CudnnSdpa(const CudnnSdpa&) = delete;
  CudnnSdpa& operator=(const CudnnSdpa&) = delete;

  // Empty when cuDNN can run this problem, else a one-line reason ("dtype f32 (cuDNN SDPA needs
  // bf16)", "head_dim 60 is not a multiple of 8", "plan finalisation failed for ...: <cuDNN call and
  // status>": the last after trying to build the plan, which is then cached either way, so a failed
  // build is not retried). Checks q/k/v/lse only; forward/backward also check out/dout/dq/dk/dv and
  // throw on an unsupported problem.
  std::string unsupported_reason(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                                 bool backward);

  void forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& out,
               const Tensor& lse);
  void backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                const Tensor& dout, double scale, const Tensor& dq, const Tensor& dk, const Tensor& dv);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pt::cuda
