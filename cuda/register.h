// Start-up registration of the CUDA backend. Plain C++: no CUDA headers, so cmd/ and test/ can
// include it. Call once at the start of main (idempotent; later calls return the first answer).
#pragma once

namespace pt::cuda {

// Registers the CUDA backend and its caching allocator for DeviceType::cuda when the CUDA runtime
// reports at least one device. Returns false (registering nothing) on a machine without a usable
// GPU or driver, so CPU-only machines keep working; `device cuda:0 is not available` is then the
// error a cuda tensor produces.
bool register_cuda_backend();

// Which attention implementation CudaBackend::attention_forward/backward use (attention.cu).
//   automatic: cuDNN fused SDPA when it supports the problem (bf16, head_dim a multiple of 8, ...),
//              else the own tiled kernel, else the simple kernel (f64, very large head_dim);
//   cudnn / tiled / simple: exactly that one; a problem it cannot run is an error, not a fallback.
// The start-up value comes from the environment variable PRETRAIN_ATTENTION (auto | cudnn |
// tiled | simple; anything else is an error at the first attention call). Tests switch it.
enum class AttentionImpl { automatic, cudnn, tiled, simple };
void set_attention_impl(AttentionImpl impl);
AttentionImpl attention_impl();
const char* attention_impl_name(AttentionImpl impl);

}  // namespace pt::cuda
