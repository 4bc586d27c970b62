// Causal SDPA (forward and backward) through cuDNN's fused flash-attention engines, written against
// the cuDNN 9 backend graph API in plain C (no cudnn-frontend).
//
// ---- Route
// cuDNN 9 recognises scaled-dot-product attention in two forms:
//   (a) the "composite" operation graph of matmul / pointwise / reduction / reshape operations that
//       cudnn-frontend's CompositeSDPANode / CompositeSDPABackwardNode emit. The runtime matches the
//       pattern to its fused flash-attention engines (Ampere and Hopper since cuDNN 8.9/9.0);
//   (b) the single-operation descriptors CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR /
//       ..._SDPA_BWD_DESCRIPTOR ("unified" SDPA). They are present in the 9.19 headers of this
//       machine, but cudnn-frontend only uses the forward one from cuDNN 9.13.1 and the backward
//       one from 9.17.0, and a causal mask on them needs a score-modifier subgraph
//       (CUDNN_ATTR_OPERATION_SDPA_FWD_SUBGRAPH), which needs cuDNN 9.21. The target runtime is
//       cuDNN 9.14 on Hopper, where (b) cannot express "causal" at all and has no backward.
// So this file builds (a), mirroring exactly what cudnn-frontend emits for
//   sdpa(q, k, v, causal (right_bound = 0, top-left diagonal), attn_scale = value, generate_stats)
//   sdpa_backward(q, k, v, o, dO, stats, causal, attn_scale = value)
// with graph io type bf16, intermediate and compute type f32.
//
// ---- Layouts (no transposes, no copies)
// Tensors are [B, T, H, D] contiguous; cuDNN sees them as [B, H, T, D] with strides
// [T*H*D, D, H*D, 1] ("BSHD"). K (and V in the backward) enter the first matmul as K^T: dims
// [B, Hkv, D, T], strides [T*Hkv*D, D, 1, Hkv*D]. Stats (= our lse) is f32 [B, Hq, T, 1] with
// strides [Hq*T, T, 1, 1]; it is the natural log-sum-exp of each row of scale * q k^T over the
// unmasked keys, which is what the own kernels and the CPU backend store. Grouped-query attention
// (Hq % Hkv == 0) is expressed by the head dimension alone (matmul batch broadcast over the group);
// in the backward the per-query-head dK / dV are reduced to Hkv heads by a reduction operation.
// Every tensor descriptor: byte alignment 16, 4 dims. By-value scalars: f32 [1,1,1,1] with
// CUDNN_ATTR_TENSOR_IS_BY_VALUE; the variant pack points at host floats.
//
// ---- Forward graph (names as in the code; S = [B,Hq,T,T] virtual f32 unless noted)
//   matmul    bmm1         Q [B,Hq,T,D], K^T [B,Hkv,D,T]            -> S
//   pointwise MUL          S, attn_scale (by value)                 -> S_scaled
//   causal mask (top-left, as cudnn-frontend's right_bound = 0 band mask before cuDNN 9.21):
//     pointwise GEN_INDEX  axis 2, math i32                         -> row (i32)
//     pointwise GEN_INDEX  axis 3, math i32                         -> col (i32)
//     pointwise CMP_GE     row, col, math bool                      -> keep (bool)
//     pointwise BINARY_SELECT x = S_scaled, b = -inf (by value), t = keep -> S_masked
//     (GEN_INDEX math i32 as in cudnn-frontend's causal_mask before its diagonal-band rewrite; the
//     current CompositeDiagonalBandMaskNode leaves it at the graph's f32 compute type.)
//   softmax (cudnn-frontend's CompositeSoftmaxNode with stats):
//     reduction MAX        S_masked                                 -> M [B,Hq,T,1]
//     pointwise SUB        S_masked, M                              -> S_shifted
//     pointwise EXP        S_shifted                                -> E
//     reduction ADD        E                                        -> Z [B,Hq,T,1]
//     pointwise LOG        Z                                        -> log_Z
//     pointwise ADD        M, log_Z                                 -> Stats (non-virtual f32)
//     pointwise DIV        E, Z                                     -> P (virtual bf16)
//   matmul    bmm2         P, V [B,Hkv,T,D]                         -> O [B,Hq,T,D] bf16
//
// ---- Backward graph (cudnn-frontend's CompositeSDPABackwardNode, no dropout, no bias, dQ
//      accumulated in an f32 workspace tensor: the "non dP-workspace" path used since cuDNN 9.0)
//   pointwise MUL          dO, O                                    -> dO_O [B,Hq,T,D]
//   reduction ADD          dO_O                                     -> row_dot [B,Hq,T,1]
//   pointwise MUL          row_dot, one (by value 1.0)              -> softmax_sum (NON-virtual f32
//                                                                      [B,Hq,T,1], in our workspace)
//   matmul    Q_KT         Q, K^T                                   -> S
//   pointwise MUL          S, attn_scale                            -> S_scaled
//   pointwise SUB          S_scaled, Stats                          -> S_minus_lse
//   [padding mask, only while cuDNN <= 9.15 and T % 128 != 0: cudnn-frontend's workaround for a
//    backward bug of those versions. seq_len_q / seq_len_kv are i32 [B,1,1,1] device tensors that
//    hold T; the five matmuls then also get them as M/N/K overrides:
//     GEN_INDEX axis 2 -> row; GEN_INDEX axis 3 -> col; CMP_LT row, seq_len_q -> row_ok;
//     CMP_LT col, seq_len_kv -> col_ok; LOGICAL_AND -> in_range;
//     BINARY_SELECT x, -inf, in_range -> S_minus_lse]
//   causal mask as in the forward                                   -> S_masked
//   pointwise EXP          S_masked                                 -> P (f32)
//   reshape                P -> P^T [B,Hq,T,T] strides [Hq*T*T, T*T, 1, T], bf16
//   matmul    pT_dO        P^T, dO                                  -> dV        (Hq == Hkv)
//                                                                   -> dV_full [B,Hq,T,D] bf16,
//   reduction ADD          dV_full                                  -> dV [B,Hkv,T,D]   (GQA)
//   matmul    dO_VT        dO, V^T [B,Hkv,D,T]                      -> dP
//   pointwise SUB          dP, softmax_sum                          -> dP_centered
//   pointwise MUL          dP_centered, P                           -> dS_unscaled
//   pointwise MUL          dS_unscaled, attn_scale                  -> dS
//   reshape                dS -> dS^T (as P^T), bf16
//   matmul    dST_Q        dS^T, Q                                  -> dK, or dK_full + reduction ADD (GQA)
//   reshape                K^T -> K [B,Hkv,T,D] (virtual f32, as the frontend leaves it)
//   matmul    dS_K         dS, K                                    -> dQ_accum (NON-virtual f32,
//                                                                      [B,Hq,T,D] packed BHSD, workspace)
//   pointwise IDENTITY     dQ_accum                                 -> dQ [B,Hq,T,D] bf16
// Before cuDNN 9.6 dQ_accum must be zeroed by the caller (cudnn-frontend memsets it); from 9.6 the
// engine initialises it. It is zeroed here on every version (one cudaMemsetAsync of B*Hq*T*D*4
// bytes, negligible next to the backward) so a wrong guess about that cannot corrupt dQ.
//
// ---- Plans and memory
// One execution plan per (backward?, B, T, Hq, Hkv, D), built on first use: operation graph ->
// heuristics (mode A, then FALLBACK) -> the first engine config whose execution plan finalises.
// The attention scale is a by-value scalar, so a plan serves every scale (the key needs none and
// unsupported_reason, which has no scale, can share the verdict). Failed builds are cached too,
// with the reason. The workspace (cuDNN's own plus softmax_sum and dQ_accum for the backward) is a
// per-call i32 tensor on Device::cuda(), i.e. the caching allocator: no cudaMalloc in steady state.
//
// ---- Sources (read, not copied)
//   NVIDIA/cudnn-frontend include/cudnn_frontend/node/scaled_dot_product_flash_attention.h
//     (CompositeSDPANode::expand_node, CompositeSDPABackwardNode, pre_validate_node_derived's
//     workaround padding mask, UnifiedSDPANode / UnifiedSDPABackwardNode version gates),
//   .../node/softmax.h (CompositeSoftmaxNode), .../node/diagonal_band_mask.h,
//   .../utils/attn_score_modifiers.h (causal = right_bound 0; padding_mask),
//   .../node/sdpa_support_surface.h (head-dim limits, s_q = s_kv = 1 rejected in the backward),
//   .../node/{pointwise,matmul,reshape}.h and include/cudnn_frontend_{PointWiseDesc,MatMulDesc,
//     ReductionDesc,Operation}.h (attribute names and types: GEN_INDEX axis as INT64, math precision
//     as DATA_TYPE, ALPHA1/ALPHA2 as FLOAT, matmul padding value as DOUBLE 0.0),
//   samples/legacy_samples/f16_flash_mha_sample.cpp (the same graph in backend terms, cuDNN 8.9),
//   docs.nvidia.com/deeplearning/cudnn/frontend/latest/operations/Attention.html (support matrix:
//     Hopper fp16/bf16 prefill and bprop d <= 256; Ampere bprop d <= 128).
#include "cuda/cudnn_sdpa.h"

#include <cudnn.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/check.h"

// Sets one attribute of a backend descriptor; the error message names the attribute.
#define SDPA_SET(desc, attribute, type, count, values) \
  CUDNN_CHECK(cudnnBackendSetAttribute(desc, attribute, type, count, values))

namespace pt::cuda {
namespace {

using Dims = std::array<int64_t, 4>;

// Unique ids of the non-virtual tensors (the variant pack). Virtual tensors count up from 1000.
enum TensorUid : int64_t {
  kUidQ = 1,
  kUidK = 2,
  kUidV = 3,
  kUidO = 4,
  kUidStats = 5,
  kUidScale = 6,
  kUidNegInfCausal = 7,
  kUidDO = 8,
  kUidDQ = 9,
  kUidDK = 10,
  kUidDV = 11,
  kUidOne = 12,
  kUidSoftmaxSum = 13,
  kUidDQAccum = 14,
  kUidSeqLenQ = 15,
  kUidSeqLenKV = 16,
  kUidNegInfPadding = 17,
  kFirstVirtualUid = 1000,
};

constexpr int64_t kTensorAlignment = 16;    // bytes; tensor-core engines need 16
constexpr size_t kWorkspaceAlignment = 256;  // bytes between the pieces of one workspace

// cuDNN's detailed message for the last failure on this thread, on one line and capped.
std::string last_cudnn_error() {
  char message[2048] = {0};
  cudnnGetLastErrorString(message, sizeof(message));
  std::string text = message;
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  while (!text.empty() && text.back() == ' ') text.pop_back();
  if (text.size() > 400) text = text.substr(0, 400) + "...";
  return text;
}

std::string status_text(cudnnStatus_t status) {
  std::string text = cudnnGetErrorString(status);
  const std::string detail = last_cudnn_error();
  if (!detail.empty()) text += " (" + detail + ")";
  return text;
}

// e.what() plus cuDNN's detailed message when it adds something (CUDNN_CHECK reports the status only).
std::string with_cudnn_detail(const std::exception& e) {
  std::string text = e.what();
  const std::string detail = last_cudnn_error();
  if (!detail.empty() && text.find(detail) == std::string::npos) text += " [cuDNN last error: " + detail + "]";
  return text;
}

size_t round_up(size_t bytes, size_t alignment) { return (bytes + alignment - 1) / alignment * alignment; }

// Owns one backend descriptor.
class Descriptor {
 public:
  explicit Descriptor(cudnnBackendDescriptorType_t type) {
    CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &desc_));
  }
  ~Descriptor() {
    if (desc_) cudnnBackendDestroyDescriptor(desc_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  cudnnBackendDescriptor_t get() const { return desc_; }

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
};

// Builds the descriptors of one operation graph and keeps them alive (the plan owns the builder).
class GraphBuilder {
 public:
  explicit GraphBuilder(size_t cudnn_version) : cudnn_version_(cudnn_version) {}

  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type) {
    owned_.push_back(std::make_unique<Descriptor>(type));
    return owned_.back()->get();
  }

  const std::vector<cudnnBackendDescriptor_t>& operations() const { return operations_; }

  cudnnBackendDescriptor_t tensor(int64_t uid, cudnnDataType_t dtype, const Dims& dims, const Dims& strides,
                                  bool is_virtual, bool by_value = false) {
    cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    SDPA_SET(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype);
    SDPA_SET(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
    SDPA_SET(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
    SDPA_SET(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SDPA_SET(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &kTensorAlignment);
    if (is_virtual) {
      const bool yes = true;
      SDPA_SET(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &yes);
    }
    if (by_value) {
      const bool yes = true;
      SDPA_SET(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes);
    }
    CUDNN_CHECK(cudnnBackendFinalize(t));
    return t;
  }
  cudnnBackendDescriptor_t virtual_tensor(cudnnDataType_t dtype, const Dims& dims, const Dims& strides) {
    return tensor(next_virtual_uid_++, dtype, dims, strides, /*is_virtual=*/true);
  }
  // f32 [1,1,1,1] passed by value (a host float in the variant pack).
  cudnnBackendDescriptor_t scalar(int64_t uid) {
    return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, /*is_virtual=*/false, /*by_value=*/true);
  }

  // y = mode(x[, b[, t]]). `axis` only for GEN_INDEX.
  void pointwise(const std::string& name, cudnnPointwiseMode_t mode, cudnnDataType_t math,
                 cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                 cudnnBackendDescriptor_t y, int64_t axis = -1) {
    try {
      cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
      SDPA_SET(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
      SDPA_SET(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math);
      if (mode == CUDNN_POINTWISE_GEN_INDEX) SDPA_SET(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
      CUDNN_CHECK(cudnnBackendFinalize(pw));

      cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
      if (b) SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
      if (t) SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
      const float one = 1.0f;
      SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one);
      CUDNN_CHECK(cudnnBackendFinalize(op));
      operations_.push_back(op);
    } catch (const std::exception& e) {
      throw std::runtime_error("operation '" + name + "': " + e.what());
    }
  }
  void unary(const std::string& name, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
             cudnnBackendDescriptor_t y) {
    pointwise(name, mode, CUDNN_DATA_FLOAT, x, nullptr, nullptr, y);
  }
  void binary(const std::string& name, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
              cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t y, cudnnDataType_t math = CUDNN_DATA_FLOAT) {
    pointwise(name, mode, math, x, b, nullptr, y);
  }
  void gen_index(const std::string& name, cudnnBackendDescriptor_t x, int64_t axis, cudnnBackendDescriptor_t y) {
    pointwise(name, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, x, nullptr, nullptr, y, axis);
  }
  // y = keep ? x : fill
  void select(const std::string& name, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t fill,
              cudnnBackendDescriptor_t keep, cudnnBackendDescriptor_t y) {
    pointwise(name, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, x, fill, keep, y);
  }

  // c = a @ b (batched over the leading dims, broadcasting a head group), f32 accumulation.
  void matmul(const std::string& name, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
              cudnnBackendDescriptor_t c, cudnnBackendDescriptor_t m_override = nullptr,
              cudnnBackendDescriptor_t n_override = nullptr, cudnnBackendDescriptor_t k_override = nullptr) {
    try {
      cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
      const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
      const double padding_value = 0.0;
      SDPA_SET(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
      SDPA_SET(mm, CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, &padding_value);
      CUDNN_CHECK(cudnnBackendFinalize(mm));

      cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
      if (m_override)
        SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_override);
      if (n_override)
        SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_override);
      if (k_override)
        SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_override);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm);
      CUDNN_CHECK(cudnnBackendFinalize(op));
      operations_.push_back(op);
    } catch (const std::exception& e) {
      throw std::runtime_error("operation '" + name + "': " + e.what());
    }
  }

  // y = reduce(x) over the dims where y is smaller than x, f32 accumulation.
  void reduction(const std::string& name, cudnnReduceTensorOp_t reduce_op, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t y) {
    try {
      cudnnBackendDescriptor_t red = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
      const cudnnDataType_t compute = CUDNN_DATA_FLOAT;
      SDPA_SET(red, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute);
      SDPA_SET(red, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce_op);
#if CUDNN_VERSION >= 91100
      // cudnn-frontend states "not deterministic" explicitly from cuDNN 9.11 on (its default).
      if (cudnn_version_ >= 91100) {
        const bool deterministic = false;
        SDPA_SET(red, CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, CUDNN_TYPE_BOOLEAN, 1, &deterministic);
      }
#endif
      CUDNN_CHECK(cudnnBackendFinalize(red));

      cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &red);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
      CUDNN_CHECK(cudnnBackendFinalize(op));
      operations_.push_back(op);
    } catch (const std::exception& e) {
      throw std::runtime_error("operation '" + name + "': " + e.what());
    }
  }

  // y = x with y's dims/strides (a relabelling of the same elements, e.g. a transpose).
  void reshape(const std::string& name, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    try {
      cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
      SDPA_SET(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
      CUDNN_CHECK(cudnnBackendFinalize(op));
      operations_.push_back(op);
    } catch (const std::exception& e) {
      throw std::runtime_error("operation '" + name + "': " + e.what());
    }
  }

 private:
  size_t cudnn_version_;
  int64_t next_virtual_uid_ = kFirstVirtualUid;
  std::vector<std::unique_ptr<Descriptor>> owned_;
  std::vector<cudnnBackendDescriptor_t> operations_;
};

// The problem a plan is built for. The attention scale is a by-value runtime scalar: not part of it.
struct ProblemKey {
  bool backward;
  int64_t B, T, Hq, Hkv, D;
  bool operator<(const ProblemKey& o) const {
    return std::tie(backward, B, T, Hq, Hkv, D) < std::tie(o.backward, o.B, o.T, o.Hq, o.Hkv, o.D);
  }
  std::string str() const {
    return std::string(backward ? "backward" : "forward") + " B=" + std::to_string(B) + " T=" + std::to_string(T) +
           " Hq=" + std::to_string(Hq) + " Hkv=" + std::to_string(Hkv) + " D=" + std::to_string(D);
  }
};

struct Plan {
  std::unique_ptr<GraphBuilder> graph;  // tensors and operations the plan was built from
  std::vector<std::unique_ptr<Descriptor>> owned;  // operation graph, heuristics, engine configs
  cudnnBackendDescriptor_t execution_plan = nullptr;
  int64_t cudnn_workspace_bytes = 0;
  // backward only
  size_t softmax_sum_bytes = 0;  // f32 [B, Hq, T, 1]
  size_t dq_accum_bytes = 0;     // f32 [B, Hq, T, D]
  bool padding_workaround = false;
  Tensor seq_len_q, seq_len_kv;         // i32 [B] holding T (padding workaround)
  std::vector<int32_t> seq_len_host;    // their host source (kept for the async copy)
};

struct CacheEntry {
  std::shared_ptr<Plan> plan;  // null when the build failed
  std::string failure;         // why (one line)
};

// Causal mask of scores x: keep (row >= col) ? x : -inf.
cudnnBackendDescriptor_t add_causal_mask(GraphBuilder& g, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t neg_inf,
                                         const Dims& score_dims, const Dims& score_strides) {
  cudnnBackendDescriptor_t row = g.virtual_tensor(CUDNN_DATA_INT32, score_dims, score_strides);
  cudnnBackendDescriptor_t col = g.virtual_tensor(CUDNN_DATA_INT32, score_dims, score_strides);
  cudnnBackendDescriptor_t keep = g.virtual_tensor(CUDNN_DATA_BOOLEAN, score_dims, score_strides);
  cudnnBackendDescriptor_t masked = g.virtual_tensor(CUDNN_DATA_FLOAT, score_dims, score_strides);
  g.gen_index("causal_row_index", x, 2, row);
  g.gen_index("causal_col_index", x, 3, col);
  g.binary("causal_row_ge_col", CUDNN_POINTWISE_CMP_GE, row, col, keep, CUDNN_DATA_BOOLEAN);
  g.select("causal_select", x, neg_inf, keep, masked);
  return masked;
}

// Padding mask of scores x: keep (row < seq_len_q && col < seq_len_kv) ? x : -inf.
cudnnBackendDescriptor_t add_padding_mask(GraphBuilder& g, cudnnBackendDescriptor_t x,
                                          cudnnBackendDescriptor_t seq_len_q, cudnnBackendDescriptor_t seq_len_kv,
                                          cudnnBackendDescriptor_t neg_inf, const Dims& score_dims,
                                          const Dims& score_strides) {
  cudnnBackendDescriptor_t row = g.virtual_tensor(CUDNN_DATA_INT32, score_dims, score_strides);
  cudnnBackendDescriptor_t col = g.virtual_tensor(CUDNN_DATA_INT32, score_dims, score_strides);
  cudnnBackendDescriptor_t row_ok = g.virtual_tensor(CUDNN_DATA_BOOLEAN, score_dims, score_strides);
  cudnnBackendDescriptor_t col_ok = g.virtual_tensor(CUDNN_DATA_BOOLEAN, score_dims, score_strides);
  cudnnBackendDescriptor_t in_range = g.virtual_tensor(CUDNN_DATA_BOOLEAN, score_dims, score_strides);
  cudnnBackendDescriptor_t masked = g.virtual_tensor(CUDNN_DATA_FLOAT, score_dims, score_strides);
  g.gen_index("padding_row_index", x, 2, row);
  g.gen_index("padding_col_index", x, 3, col);
  g.binary("padding_row_lt_seq_len_q", CUDNN_POINTWISE_CMP_LT, row, seq_len_q, row_ok, CUDNN_DATA_BOOLEAN);
  g.binary("padding_col_lt_seq_len_kv", CUDNN_POINTWISE_CMP_LT, col, seq_len_kv, col_ok, CUDNN_DATA_BOOLEAN);
  g.binary("padding_and", CUDNN_POINTWISE_LOGICAL_AND, row_ok, col_ok, in_range, CUDNN_DATA_BOOLEAN);
  g.select("padding_select", x, neg_inf, in_range, masked);
  return masked;
}

struct Layouts {
  Dims q_dims, q_strides;      // [B,Hq,T,D] over [B,T,Hq,D] memory
  Dims kv_dims, kv_strides;    // [B,Hkv,T,D] over [B,T,Hkv,D] memory
  Dims kvt_dims, kvt_strides;  // [B,Hkv,D,T] (K^T / V^T) over the same memory
  Dims score_dims, score_strides, score_t_strides;  // [B,Hq,T,T] packed, and its transpose
  Dims row_dims, row_strides;  // [B,Hq,T,1] packed (stats)
  Dims full_dims, full_strides;  // [B,Hq,T,D] packed BHSD (dQ_accum, dK/dV per query head)
  Dims seq_len_dims, seq_len_strides;  // [B,1,1,1]
};

Layouts layouts(const ProblemKey& p) {
  const int64_t B = p.B, T = p.T, Hq = p.Hq, Hkv = p.Hkv, D = p.D;
  Layouts l;
  l.q_dims = {B, Hq, T, D};
  l.q_strides = {T * Hq * D, D, Hq * D, 1};
  l.kv_dims = {B, Hkv, T, D};
  l.kv_strides = {T * Hkv * D, D, Hkv * D, 1};
  l.kvt_dims = {B, Hkv, D, T};
  l.kvt_strides = {T * Hkv * D, D, 1, Hkv * D};
  l.score_dims = {B, Hq, T, T};
  l.score_strides = {Hq * T * T, T * T, T, 1};
  l.score_t_strides = {Hq * T * T, T * T, 1, T};
  l.row_dims = {B, Hq, T, 1};
  l.row_strides = {Hq * T, T, 1, 1};
  l.full_dims = {B, Hq, T, D};
  l.full_strides = {Hq * T * D, T * D, D, 1};
  l.seq_len_dims = {B, 1, 1, 1};
  l.seq_len_strides = {1, 1, 1, 1};
  return l;
}

void build_forward_graph(GraphBuilder& g, const ProblemKey& p) {
  const Layouts l = layouts(p);
  cudnnBackendDescriptor_t q = g.tensor(kUidQ, CUDNN_DATA_BFLOAT16, l.q_dims, l.q_strides, false);
  cudnnBackendDescriptor_t k_t = g.tensor(kUidK, CUDNN_DATA_BFLOAT16, l.kvt_dims, l.kvt_strides, false);
  cudnnBackendDescriptor_t v = g.tensor(kUidV, CUDNN_DATA_BFLOAT16, l.kv_dims, l.kv_strides, false);
  cudnnBackendDescriptor_t o = g.tensor(kUidO, CUDNN_DATA_BFLOAT16, l.q_dims, l.q_strides, false);
  cudnnBackendDescriptor_t stats = g.tensor(kUidStats, CUDNN_DATA_FLOAT, l.row_dims, l.row_strides, false);
  cudnnBackendDescriptor_t scale = g.scalar(kUidScale);
  cudnnBackendDescriptor_t neg_inf = g.scalar(kUidNegInfCausal);

  cudnnBackendDescriptor_t s = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.matmul("bmm1 Q K^T", q, k_t, s);
  cudnnBackendDescriptor_t s_scaled = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.binary("attn_scale", CUDNN_POINTWISE_MUL, s, scale, s_scaled);
  cudnnBackendDescriptor_t s_masked = add_causal_mask(g, s_scaled, neg_inf, l.score_dims, l.score_strides);

  cudnnBackendDescriptor_t row_max = g.virtual_tensor(CUDNN_DATA_FLOAT, l.row_dims, l.row_strides);
  g.reduction("softmax max", CUDNN_REDUCE_TENSOR_MAX, s_masked, row_max);
  cudnnBackendDescriptor_t s_shifted = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.binary("softmax sub max", CUDNN_POINTWISE_SUB, s_masked, row_max, s_shifted);
  cudnnBackendDescriptor_t e = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.unary("softmax exp", CUDNN_POINTWISE_EXP, s_shifted, e);
  cudnnBackendDescriptor_t z = g.virtual_tensor(CUDNN_DATA_FLOAT, l.row_dims, l.row_strides);
  g.reduction("softmax sum", CUDNN_REDUCE_TENSOR_ADD, e, z);
  cudnnBackendDescriptor_t log_z = g.virtual_tensor(CUDNN_DATA_FLOAT, l.row_dims, l.row_strides);
  g.unary("softmax log", CUDNN_POINTWISE_LOG, z, log_z);
  g.binary("softmax stats", CUDNN_POINTWISE_ADD, row_max, log_z, stats);
  cudnnBackendDescriptor_t probs = g.virtual_tensor(CUDNN_DATA_BFLOAT16, l.score_dims, l.score_strides);
  g.binary("softmax div", CUDNN_POINTWISE_DIV, e, z, probs);

  g.matmul("bmm2 P V", probs, v, o);
}

void build_backward_graph(GraphBuilder& g, const ProblemKey& p, bool padding_workaround) {
  const Layouts l = layouts(p);
  const bool grouped = p.Hq != p.Hkv;
  cudnnBackendDescriptor_t q = g.tensor(kUidQ, CUDNN_DATA_BFLOAT16, l.q_dims, l.q_strides, false);
  cudnnBackendDescriptor_t k_t = g.tensor(kUidK, CUDNN_DATA_BFLOAT16, l.kvt_dims, l.kvt_strides, false);
  cudnnBackendDescriptor_t v_t = g.tensor(kUidV, CUDNN_DATA_BFLOAT16, l.kvt_dims, l.kvt_strides, false);
  cudnnBackendDescriptor_t o = g.tensor(kUidO, CUDNN_DATA_BFLOAT16, l.q_dims, l.q_strides, false);
  cudnnBackendDescriptor_t d_o = g.tensor(kUidDO, CUDNN_DATA_BFLOAT16, l.q_dims, l.q_strides, false);
  cudnnBackendDescriptor_t stats = g.tensor(kUidStats, CUDNN_DATA_FLOAT, l.row_dims, l.row_strides, false);
  cudnnBackendDescriptor_t d_q = g.tensor(kUidDQ, CUDNN_DATA_BFLOAT16, l.q_dims, l.q_strides, false);
  cudnnBackendDescriptor_t d_k = g.tensor(kUidDK, CUDNN_DATA_BFLOAT16, l.kv_dims, l.kv_strides, false);
  cudnnBackendDescriptor_t d_v = g.tensor(kUidDV, CUDNN_DATA_BFLOAT16, l.kv_dims, l.kv_strides, false);
  cudnnBackendDescriptor_t scale = g.scalar(kUidScale);
  cudnnBackendDescriptor_t one = g.scalar(kUidOne);
  cudnnBackendDescriptor_t neg_inf = g.scalar(kUidNegInfCausal);
  cudnnBackendDescriptor_t softmax_sum = g.tensor(kUidSoftmaxSum, CUDNN_DATA_FLOAT, l.row_dims, l.row_strides, false);
  cudnnBackendDescriptor_t dq_accum = g.tensor(kUidDQAccum, CUDNN_DATA_FLOAT, l.full_dims, l.full_strides, false);
  cudnnBackendDescriptor_t seq_len_q = nullptr, seq_len_kv = nullptr;
  if (padding_workaround) {
    seq_len_q = g.tensor(kUidSeqLenQ, CUDNN_DATA_INT32, l.seq_len_dims, l.seq_len_strides, false);
    seq_len_kv = g.tensor(kUidSeqLenKV, CUDNN_DATA_INT32, l.seq_len_dims, l.seq_len_strides, false);
  }

  // softmax_sum = rowsum(dO * O) (the "delta" of flash attention), stored in the workspace.
  // (The frontend gives this virtual product the strides below; they do not describe memory.)
  const Dims do_o_strides = {p.Hq * p.T * p.D, p.T * p.D, p.Hq * p.D, 1};
  cudnnBackendDescriptor_t do_o = g.virtual_tensor(CUDNN_DATA_FLOAT, l.q_dims, do_o_strides);
  g.binary("mul dO O", CUDNN_POINTWISE_MUL, d_o, o, do_o);
  cudnnBackendDescriptor_t row_dot = g.virtual_tensor(CUDNN_DATA_FLOAT, l.row_dims, l.row_strides);
  g.reduction("reduce dO O", CUDNN_REDUCE_TENSOR_ADD, do_o, row_dot);
  g.binary("softmax_sum", CUDNN_POINTWISE_MUL, row_dot, one, softmax_sum);

  // P = exp(scale * Q K^T - stats), masked.
  cudnnBackendDescriptor_t s = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.matmul("matmul Q K^T", q, k_t, s, seq_len_q, seq_len_kv, nullptr);
  cudnnBackendDescriptor_t s_scaled = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.binary("mul S attn_scale", CUDNN_POINTWISE_MUL, s, scale, s_scaled);
  cudnnBackendDescriptor_t s_minus_lse = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.binary("sub S stats", CUDNN_POINTWISE_SUB, s_scaled, stats, s_minus_lse);
  if (padding_workaround) {
    cudnnBackendDescriptor_t neg_inf_padding = g.scalar(kUidNegInfPadding);
    s_minus_lse = add_padding_mask(g, s_minus_lse, seq_len_q, seq_len_kv, neg_inf_padding, l.score_dims,
                                   l.score_strides);
  }
  cudnnBackendDescriptor_t s_masked = add_causal_mask(g, s_minus_lse, neg_inf, l.score_dims, l.score_strides);
  cudnnBackendDescriptor_t probs = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.unary("exp S", CUDNN_POINTWISE_EXP, s_masked, probs);

  // dV = P^T dO (summed over the query heads of each group).
  cudnnBackendDescriptor_t probs_t = g.virtual_tensor(CUDNN_DATA_BFLOAT16, l.score_dims, l.score_t_strides);
  g.reshape("reshape P^T", probs, probs_t);
  if (!grouped) {
    g.matmul("matmul P^T dO", probs_t, d_o, d_v, seq_len_kv, nullptr, seq_len_q);
  } else {
    cudnnBackendDescriptor_t d_v_full = g.virtual_tensor(CUDNN_DATA_BFLOAT16, l.full_dims, l.full_strides);
    g.matmul("matmul P^T dO", probs_t, d_o, d_v_full, seq_len_kv, nullptr, seq_len_q);
    g.reduction("reduce dV heads", CUDNN_REDUCE_TENSOR_ADD, d_v_full, d_v);
  }

  // dS = P * (dO V^T - softmax_sum) * scale.
  cudnnBackendDescriptor_t d_p = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.matmul("matmul dO V^T", d_o, v_t, d_p, seq_len_q, seq_len_kv, nullptr);
  cudnnBackendDescriptor_t d_p_centered = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.binary("sub dP softmax_sum", CUDNN_POINTWISE_SUB, d_p, softmax_sum, d_p_centered);
  cudnnBackendDescriptor_t d_s_unscaled = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.binary("mul dP P", CUDNN_POINTWISE_MUL, d_p_centered, probs, d_s_unscaled);
  cudnnBackendDescriptor_t d_s = g.virtual_tensor(CUDNN_DATA_FLOAT, l.score_dims, l.score_strides);
  g.binary("mul dS attn_scale", CUDNN_POINTWISE_MUL, d_s_unscaled, scale, d_s);

  // dK = dS^T Q (summed over the query heads of each group).
  cudnnBackendDescriptor_t d_s_t = g.virtual_tensor(CUDNN_DATA_BFLOAT16, l.score_dims, l.score_t_strides);
  g.reshape("reshape dS^T", d_s, d_s_t);
  if (!grouped) {
    g.matmul("matmul dS^T Q", d_s_t, q, d_k, seq_len_kv, nullptr, seq_len_q);
  } else {
    cudnnBackendDescriptor_t d_k_full = g.virtual_tensor(CUDNN_DATA_BFLOAT16, l.full_dims, l.full_strides);
    g.matmul("matmul dS^T Q", d_s_t, q, d_k_full, seq_len_kv, nullptr, seq_len_q);
    g.reduction("reduce dK heads", CUDNN_REDUCE_TENSOR_ADD, d_k_full, d_k);
  }

  // dQ = dS K, accumulated in f32, then converted.
  cudnnBackendDescriptor_t k = g.virtual_tensor(CUDNN_DATA_FLOAT, l.kv_dims, l.kv_strides);
  g.reshape("reshape K", k_t, k);
  g.matmul("matmul dS K", d_s, k, dq_accum, seq_len_q, nullptr, seq_len_kv);
  g.unary("identity dQ", CUDNN_POINTWISE_IDENTITY, dq_accum, d_q);
}

// Operation graph -> heuristics -> the first engine config whose execution plan finalises.
void finalize_plan(cudnnHandle_t handle, Plan& plan) {
  auto own = [&](cudnnBackendDescriptorType_t type) {
    plan.owned.push_back(std::make_unique<Descriptor>(type));
    return plan.owned.back()->get();
  };
  const std::vector<cudnnBackendDescriptor_t>& ops = plan.graph->operations();
  cudnnBackendDescriptor_t op_graph = own(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  SDPA_SET(op_graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  SDPA_SET(op_graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops.size()),
           ops.data());
  CUDNN_CHECK(cudnnBackendFinalize(op_graph));

  std::string attempts;
  int64_t tried = 0;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    const std::string mode_name = mode == CUDNN_HEUR_MODE_A ? "heuristics A" : "heuristics FALLBACK";
    cudnnBackendDescriptor_t heuristics = own(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    SDPA_SET(heuristics, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op_graph);
    SDPA_SET(heuristics, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    const cudnnStatus_t heur_status = cudnnBackendFinalize(heuristics);
    if (heur_status != CUDNN_STATUS_SUCCESS) {
      attempts += "; " + mode_name + ": cudnnBackendFinalize(engine heuristics) failed: " + status_text(heur_status);
      continue;
    }
    int64_t count = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                         &count, nullptr));
    if (count <= 0) {
      attempts += "; " + mode_name + ": no engine config";
      continue;
    }
    std::vector<cudnnBackendDescriptor_t> configs(static_cast<size_t>(count));
    for (auto& config : configs) config = own(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    int64_t returned = 0;
    CUDNN_CHECK(cudnnBackendGetAttribute(heuristics, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                         count, &returned, configs.data()));
    for (int64_t i = 0; i < returned && i < count; ++i) {
      ++tried;
      auto candidate = std::make_unique<Descriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      cudnnBackendDescriptor_t exec_plan = candidate->get();
      SDPA_SET(exec_plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
      SDPA_SET(exec_plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &configs[i]);
      const cudnnStatus_t status = cudnnBackendFinalize(exec_plan);
      if (status != CUDNN_STATUS_SUCCESS) {
        // Keep the message short: the first failures are the informative ones.
        if (tried <= 3) attempts += "; " + mode_name + " config " + std::to_string(i) + ": " + status_text(status);
        continue;
      }
      int64_t workspace = 0, got = 0;
      CUDNN_CHECK(cudnnBackendGetAttribute(exec_plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                           &got, &workspace));
      plan.cudnn_workspace_bytes = workspace;
      plan.execution_plan = exec_plan;
      plan.owned.push_back(std::move(candidate));
      return;
    }
  }
  throw std::runtime_error("no cuDNN engine could finalise an execution plan for this graph (" +
                           std::to_string(tried) + " engine configs tried" + attempts + ")");
}

// Requirements that need no plan: dtypes, shapes, layout, head dimension.
std::string static_reason(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse, bool backward,
                          int sm_major) {
  for (const Tensor* t : {&q, &k, &v, &lse})
    if (!t->defined()) return "undefined tensor";
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4)
    return "q/k/v must be [B, T, H, D], got " + shape_str(q.shape()) + ", " + shape_str(k.shape()) + ", " +
           shape_str(v.shape());
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  if (k.shape() != Shape{B, T, Hkv, D} || v.shape() != k.shape())
    return "k/v shapes " + shape_str(k.shape()) + ", " + shape_str(v.shape()) + " do not match q " +
           shape_str(q.shape());
  if (B < 1 || T < 1 || Hq < 1 || Hkv < 1 || D < 1) return "empty problem " + shape_str(q.shape());
  if (Hq % Hkv != 0)
    return "query heads " + std::to_string(Hq) + " not a multiple of kv heads " + std::to_string(Hkv);
  if (lse.shape() != Shape{B, Hq, T}) return "lse shape " + shape_str(lse.shape()) + ", expected [B, Hq, T]";
  for (const Tensor* t : {&q, &k, &v})
    if (t->dtype() != DType::bf16) return std::string("dtype ") + dtype_name(t->dtype()) + " (cuDNN SDPA needs bf16)";
  if (lse.dtype() != DType::f32) return std::string("lse dtype ") + dtype_name(lse.dtype()) + " (needs f32)";
  for (const Tensor* t : {&q, &k, &v, &lse}) {
    if (!t->device().is_cuda()) return "tensor on " + t->device().str();
    if (!t->is_contiguous()) return "non-contiguous " + t->describe();
  }
  if (D % 8 != 0) return "head_dim " + std::to_string(D) + " is not a multiple of 8";
  // cudnn-frontend's support surface: fp16/bf16 SDPA needs sm_80 or newer.
  if (sm_major < 8) return "sm_" + std::to_string(sm_major) + "x (cuDNN fused attention needs sm_80 or newer)";
  // cuDNN support matrix: Hopper d <= 256 (prefill and bprop); elsewhere bprop d <= 128 (and
  // prefill d <= 256 from cuDNN 9.10; 128 is kept for both to stay on the safe side).
  const int64_t max_d = sm_major == 9 ? 256 : 128;
  if (D > max_d)
    return "head_dim " + std::to_string(D) + " > " + std::to_string(max_d) + " (cuDNN limit on sm_" +
           std::to_string(sm_major) + "x)";
  if (backward && T == 1) return "T = 1 (cuDNN SDPA backward rejects s_q = s_kv = 1)";
  return "";
}

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % kTensorAlignment == 0; }

}  // namespace

struct CudnnSdpa::Impl {
  cudaStream_t stream = nullptr;
  cudnnHandle_t handle = nullptr;
  size_t cudnn_version = 0;
  int sm_major = 0;
  std::mutex mutex;  // guards the cache and serialises use of the handle
  std::map<ProblemKey, CacheEntry> cache;

  // The cached verdict for `key`, building the plan on first use. Caller holds the mutex.
  CacheEntry& entry(const ProblemKey& key) {
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    CacheEntry result;
    try {
      result.plan = build(key);
    } catch (const std::exception& e) {
      result.failure = "plan finalisation failed for " + key.str() + ": " + with_cudnn_detail(e);
    }
    return cache.emplace(key, std::move(result)).first->second;
  }

  std::shared_ptr<Plan> build(const ProblemKey& key) {
    auto plan = std::make_shared<Plan>();
    plan->graph = std::make_unique<GraphBuilder>(cudnn_version);
    if (!key.backward) {
      build_forward_graph(*plan->graph, key);
    } else {
      plan->padding_workaround = cudnn_version <= 91500 && key.T % 128 != 0;
      plan->softmax_sum_bytes = static_cast<size_t>(key.B * key.Hq * key.T) * sizeof(float);
      plan->dq_accum_bytes = static_cast<size_t>(key.B * key.Hq * key.T * key.D) * sizeof(float);
      build_backward_graph(*plan->graph, key, plan->padding_workaround);
    }
    finalize_plan(handle, *plan);
    if (plan->padding_workaround) {
      plan->seq_len_host.assign(static_cast<size_t>(key.B), static_cast<int32_t>(key.T));
      const size_t bytes = plan->seq_len_host.size() * sizeof(int32_t);
      plan->seq_len_q = Tensor::empty({key.B}, DType::i32, Device::cuda());
      plan->seq_len_kv = Tensor::empty({key.B}, DType::i32, Device::cuda());
      CUDA_CHECK(cudaMemcpyAsync(plan->seq_len_q.raw_data(), plan->seq_len_host.data(), bytes,
                                 cudaMemcpyHostToDevice, stream));
      CUDA_CHECK(cudaMemcpyAsync(plan->seq_len_kv.raw_data(), plan->seq_len_host.data(), bytes,
                                 cudaMemcpyHostToDevice, stream));
    }
    return plan;
  }

  // Runs `plan` with the given (uid, pointer) pairs plus a workspace of `workspace` bytes.
  void execute(const Plan& plan, const std::vector<int64_t>& uids, const std::vector<void*>& pointers,
               void* workspace) {
    Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    SDPA_SET(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
             uids.data());
    SDPA_SET(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
             static_cast<int64_t>(pointers.size()), pointers.data());
    SDPA_SET(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    CUDNN_CHECK(cudnnBackendFinalize(pack.get()));
    CUDNN_CHECK(cudnnBackendExecute(handle, plan.execution_plan, pack.get()));
  }
};

CudnnSdpa::CudnnSdpa(cudaStream_t stream) : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream;
  impl_->cudnn_version = cudnnGetVersion();
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&impl_->sm_major, cudaDevAttrComputeCapabilityMajor, device));
  CUDNN_CHECK(cudnnCreate(&impl_->handle));
  try {
    CUDNN_CHECK(cudnnSetStream(impl_->handle, stream));
  } catch (...) {
    cudnnDestroy(impl_->handle);
    impl_->handle = nullptr;
    throw;
  }
}

CudnnSdpa::~CudnnSdpa() {
  if (!impl_) return;
  impl_->cache.clear();  // plans (and their descriptors) before the handle
  if (impl_->handle) cudnnDestroy(impl_->handle);
}

std::string CudnnSdpa::unsupported_reason(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                                          bool backward) {
  std::string reason = static_reason(q, k, v, lse, backward, impl_->sm_major);
  if (!reason.empty()) return reason;
  // cudnn-frontend refuses fp16/bf16 SDPA (forward and backward) on these two releases: known bugs.
  if (impl_->cudnn_version == 91000 || impl_->cudnn_version == 91001)
    return "cuDNN " + std::to_string(impl_->cudnn_version) + " has known SDPA bugs (9.10.0/9.10.1; use 9.10.2 or newer)";
  for (const Tensor* t : {&q, &k, &v, &lse})
    if (!aligned16(*t)) return "data pointer of " + t->describe() + " is not 16-byte aligned";
  const ProblemKey key{backward, q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->entry(key).failure;
}

void CudnnSdpa::forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale, const Tensor& out,
                        const Tensor& lse) {
  const std::string reason = unsupported_reason(q, k, v, lse, /*backward=*/false);
  if (!reason.empty()) throw std::runtime_error("cuDNN SDPA forward not supported: " + reason);
  const ProblemKey key{false, q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  if (out.shape() != q.shape() || out.dtype() != DType::bf16 || !out.device().is_cuda() || !out.is_contiguous() ||
      !aligned16(out))
    throw std::runtime_error("cuDNN SDPA " + key.str() + ": out must be a contiguous, 16-byte aligned bf16 cuda " +
                             shape_str(q.shape()) + " tensor, got " + out.describe());

  std::lock_guard<std::mutex> lock(impl_->mutex);
  const CacheEntry& entry = impl_->entry(key);
  if (!entry.plan) throw std::runtime_error("cuDNN SDPA: " + entry.failure);
  const Plan& plan = *entry.plan;
  try {
    Tensor workspace;
    void* workspace_ptr = nullptr;
    if (plan.cudnn_workspace_bytes > 0) {
      workspace = Tensor::empty({(plan.cudnn_workspace_bytes + 3) / 4}, DType::i32, Device::cuda());
      workspace_ptr = workspace.raw_data();
    }
    float scale_value = static_cast<float>(scale);
    float neg_inf = -std::numeric_limits<float>::infinity();
    const std::vector<int64_t> uids{kUidQ, kUidK, kUidV, kUidO, kUidStats, kUidScale, kUidNegInfCausal};
    const std::vector<void*> pointers{q.raw_data(), k.raw_data(),   v.raw_data(), out.raw_data(),
                                      lse.raw_data(), &scale_value, &neg_inf};
    impl_->execute(plan, uids, pointers, workspace_ptr);
  } catch (const std::exception& e) {
    throw std::runtime_error("cuDNN SDPA " + key.str() + ": " + with_cudnn_detail(e));
  }
}

void CudnnSdpa::backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                         const Tensor& dout, double scale, const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  const std::string reason = unsupported_reason(q, k, v, lse, /*backward=*/true);
  if (!reason.empty()) throw std::runtime_error("cuDNN SDPA backward not supported: " + reason);
  const ProblemKey key{true, q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  auto check_operand = [&](const char* name, const Tensor& t, const Shape& shape) {
    if (!t.defined() || t.shape() != shape || t.dtype() != DType::bf16 || !t.device().is_cuda() ||
        !t.is_contiguous() || !aligned16(t))
      throw std::runtime_error("cuDNN SDPA " + key.str() + ": " + name +
                               " must be a contiguous, 16-byte aligned bf16 cuda " + shape_str(shape) +
                               " tensor, got " + (t.defined() ? t.describe() : std::string("undefined")));
  };
  check_operand("out", out, q.shape());
  check_operand("dout", dout, q.shape());
  check_operand("dq", dq, q.shape());
  check_operand("dk", dk, k.shape());
  check_operand("dv", dv, v.shape());

  std::lock_guard<std::mutex> lock(impl_->mutex);
  const CacheEntry& entry = impl_->entry(key);
  if (!entry.plan) throw std::runtime_error("cuDNN SDPA: " + entry.failure);
  const Plan& plan = *entry.plan;
  try {
    // Workspace: [cuDNN's own | softmax_sum | dQ_accum], each piece 256-byte aligned.
    const size_t cudnn_bytes = round_up(static_cast<size_t>(plan.cudnn_workspace_bytes), kWorkspaceAlignment);
    const size_t softmax_sum_offset = cudnn_bytes;
    const size_t dq_accum_offset = softmax_sum_offset + round_up(plan.softmax_sum_bytes, kWorkspaceAlignment);
    const size_t total_bytes = dq_accum_offset + plan.dq_accum_bytes;
    Tensor workspace = Tensor::empty({static_cast<int64_t>((total_bytes + 3) / 4)}, DType::i32, Device::cuda());
    char* base = static_cast<char*>(workspace.raw_data());
    void* cudnn_workspace = plan.cudnn_workspace_bytes > 0 ? base : nullptr;
    void* softmax_sum = base + softmax_sum_offset;
    void* dq_accum = base + dq_accum_offset;
    CUDA_CHECK(cudaMemsetAsync(dq_accum, 0, plan.dq_accum_bytes, impl_->stream));

    float scale_value = static_cast<float>(scale);
    float one = 1.0f;
    float neg_inf = -std::numeric_limits<float>::infinity();
    std::vector<int64_t> uids{kUidQ,  kUidK,  kUidV,     kUidO,   kUidDO,           kUidStats,      kUidDQ,
                              kUidDK, kUidDV, kUidScale, kUidOne, kUidNegInfCausal, kUidSoftmaxSum, kUidDQAccum};
    std::vector<void*> pointers{q.raw_data(),  k.raw_data(),  v.raw_data(),  out.raw_data(), dout.raw_data(),
                                lse.raw_data(), dq.raw_data(), dk.raw_data(), dv.raw_data(), &scale_value,
                                &one,           &neg_inf,      softmax_sum,   dq_accum};
    float neg_inf_padding = -std::numeric_limits<float>::infinity();
    if (plan.padding_workaround) {
      uids.insert(uids.end(), {kUidSeqLenQ, kUidSeqLenKV, kUidNegInfPadding});
      pointers.insert(pointers.end(), {plan.seq_len_q.raw_data(), plan.seq_len_kv.raw_data(), &neg_inf_padding});
    }
    impl_->execute(plan, uids, pointers, cudnn_workspace);
  } catch (const std::exception& e) {
    throw std::runtime_error("cuDNN SDPA " + key.str() + ": " + with_cudnn_detail(e));
  }
}

}  // namespace pt::cuda
