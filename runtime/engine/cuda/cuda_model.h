// The CUDA backend: the Llama/Qwen2 forward of cpu_model.h on one GPU, bf16 weights and paged
// bf16 KV cache in device memory, fp32 residual stream and accumulation.
//
// Per forward the rows are regrouped (sparse decode rows by sparse options, then dense decode
// rows, then multi-token chunks) so that each attention kind is one launch over contiguous
// rows; every other op is row-wise. Per layer: AddRmsNorm (with the previous residual add) ->
// QKV (GEMV for <= 8 rows, cuBLASLt (LtGemm) otherwise) -> bias + RoPE -> SelectBlocksCuda (writes
// the sparse rows' K/V, selects) + sparse DecodeAttentionCuda / WriteKvCuda (other rows' K/V +
// summaries of every touched page) + dense DecodeAttentionCuda / ChunkAttentionCuda (prefill
// and rectification) -> o_proj (the GEMV reads the fp32 attention output) -> AddRmsNorm ->
// gate_up -> SiluMul -> down (chunks: gate_up rounded to bf16 by the GEMM, as the bf16
// reference models compute it; decode rows: the GEMV's fp32 sums). Decode-only batches of <= 8 rows
// run as CUDA graphs, one per shape key (rows of each kind, sparse options, context bucket of 4096
// tokens), and so do rectification passes (forwards of at most 64 chunks of at most 64 tokens
// that ask for no logits; keyed by chunks, rows and the longest chunk's context bucket); the
// forward's host metadata (tokens, positions, page tables) goes to a fixed device buffer before
// launch. A shape runs eagerly when first seen and is captured when seen again.
//
// Sparse decode rows are exactly those of the CPU backend (a row is sparse iff n < M). The
// selection on the GPU scores bf16 summaries of bf16 keys; the CPU scores fp32 ones, so the two
// may pick different blocks where scores nearly tie (selection_cuda.h).
//
// Sampling stays on the device: the last forward's logits rows stay in device memory, Sample
// runs SampleRowsCuda over them and downloads only the token ids.
//
// Distributed (DESIGN.md §5, the GPU form of CpuModel's): one CudaModel per rank of a TP x SP
// grid, every rank called with the same chunks. The weights hold the rank's TpShard (local
// heads, MLP columns, lm_head rows) and the cache its KV heads and SP blocks (page_table[j] =
// logical block j * S + sp_rank). TP: o_proj and down outputs are all-reduced over the TP group,
// logits all-gathered (vocab-parallel lm_head) so every rank samples the same rows; with more
// TP ranks than KV heads the group's queries are all-gathered for the pooled selection query.
// SP: each rank attends over its own blocks presented as a packed local sequence (local block j
// = logical block j * S + r): dense decode rows over all of them, prefill/rectification chunks
// with per-row causal limits (ChunkAttentionParams::row_num_keys), sparse rows over their owned
// part of the global top-n, which ScoreBlocksCuda (local scores) + SelectBlocksAcrossRanks (one
// exchange of candidates over the host SP group per layer, parallel/sp_attention.h) choose
// exactly as one rank would from the same scores; the owner of a position's block writes its
// K/V; partial (O, lse) states are all-gathered over the SP group and merged in rank order, so
// every SP rank continues with identical bits. Device-buffer communicators (NCCL) run on the
// model's stream; host-buffer ones (MPI, the in-process fake: ranks sharing one GPU, tests) are
// staged through pinned memory. Grids of more than one rank run eagerly (no CUDA graphs).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/sp_attention.h"
#include "runtime/engine/cpu_weights.h"
#include "runtime/engine/cuda/device_memory.h"
#include "runtime/engine/cuda/lt_gemm.h"
#include "runtime/engine/cuda/sampling_cuda.h"
#include "runtime/engine/cuda/skinny_gemm.h"
#include "runtime/engine/model_backend.h"

namespace resa::cuda {

// Keys of positions [0, num_keys) an SP rank holds: its blocks packed into one local sequence
// (local block j = logical block j * S + rank; only the sequence's last block can be partial).
int32_t LocalKeys(const SequenceShard& shard, int32_t num_keys);

// The default of CudaModelOptions::skinny_gemm: off unless RESA_CUDA_SKINNY_GEMM=1 in the
// environment (A/B runs of one binary).
bool SkinnyGemmDefault();

struct CudaModelOptions {
  // KV pages (16 tokens each); 0 sizes the cache from the device's free memory after the
  // weights, keeping `reserve_bytes` for activations and workspaces.
  int32_t kv_pages = 0;
  uint64_t reserve_bytes = uint64_t(3) << 30;
  // Capture decode steps of <= 8 rows and rectification passes (forwards of short chunks, no
  // logits) in CUDA graphs, one per shape and context bucket (cuda_model.h, top).
  bool graphs = true;
  // Linear layers of up to this many rows (<= kGemvMaxRows) use GemvBf16Cuda (one row on the
  // CUDA cores, batches on the tensor cores, with the SwiGLU and QKV epilogues fused), larger
  // ones cuBLASLt (LtGemm). 8: on the H200 (`resa-bench e2e --gemv-max-rows 1` vs 8, same call) the
  // tensor-core GEMV makes batch-8 steps 1-10% faster than cuBLAS (1.5B 32K ReSA 2.684 ->
  // 2.459 ms, 7B 256K 12.374 -> 12.058).
  int gemv_max_rows = 8;  // kGemvMaxRows
  // Linear layers of gemv_max_rows + 1 to SkinnyGemm::kMaxRows (64) rows (a batch-1
  // rectification pass has 32) on SkinnyGemm, with gate_up writing the SwiGLU product, when the
  // device is an sm_90 one; otherwise, and for more rows, cuBLASLt. Off by default: on the H200
  // it measured level with cuBLASLt end to end (docs/cuda_backend.md, run 50).
  bool skinny_gemm = SkinnyGemmDefault();
};

// The bf16 GEMM rate (TFLOP/s) of an n x n x n product through CudaModel's GEMM (LtGemm: bf16
// in, fp32 accumulation and out), best of 10: the compute ceiling benchmarks compare against.
absl::StatusOr<double> MeasureGemmTflops(int n);

// Whether the GEMVs of a step of up to gemv_max_rows rows run their element-wise epilogues
// themselves: gate_up writes the SwiGLU activations (GemvSwiGluBf16Cuda instead of GEMV +
// SiluMulCuda) and qkv writes bf16 q, k, v with bias and RoPE (GemvQkvRopeBf16Cuda instead of
// GEMV + QkvRopeCuda), and for a step of dense decode rows also their K/V into the cache
// (instead of WriteKvCuda); the same bits, two to four launches less per layer. Process-wide, on by
// default; a switch for A/B runs (resa-bench e2e --swiglu-epilogue both; the name predates the
// QKV epilogue). Graphs are keyed by it.
bool SwiGluEpilogue();
void SetSwiGluEpilogue(bool on);

// Whether a step of up to CudaModelOptions::gemv_max_rows rows (8) runs its RMSNorms inside its
// GEMVs (RowNorm, GemvResidualBf16Cuda):
// o_proj and down add into the residual and write the next norm's numerator, qkv and gate_up
// scale their sums by 1 / rms; two launches less a layer. Needs SwiGluEpilogue(); not under
// TP or SP. Not bit for bit the norm kernel's path (the bf16 rounding of the GEMV input comes
// before the 1 / rms scaling): within a bf16 step. Process-wide, on by default
// (RESA_CUDA_FUSED_NORMS=0 turns it off at start); a switch for A/B runs (resa-bench e2e
// --fused-norms both). Graphs are keyed by it.
bool FusedNorms();
void SetFusedNorms(bool on);

// Whether the decode step's fused selections keep a threshold hint per (layer, row, KV head)
// from one step to the next (SelectBlocksParams::hints): the same blocks, a shorter selection
// tail when a row's top-n moves little between steps. Process-wide, on by default; a switch
// for A/B runs (resa-bench e2e --selection-hints both). Graphs are keyed by it.
bool SelectionHints();
void SetSelectionHints(bool on);

// The groups of one rank of a TP x SP grid (model_grid.h). Null stands for a group of one.
struct CudaModelGroups {
  // Device-buffer (NCCL) or host-buffer communicators; sized and ranked as the weights' TpShard
  // (tp) and the cache's SequenceShard (sp).
  Communicator* tp = nullptr;
  Communicator* sp = nullptr;
  // The SP group over host buffers, for the selection exchange (it runs on the host). Required
  // when `sp` is a device-buffer communicator; otherwise null means `sp`.
  Communicator* sp_host = nullptr;
};

class CudaModel final : public ModelBackend {
 public:
  // `weights` hold one TpShard; the groups must match it (InvalidArgument otherwise).
  static absl::StatusOr<std::unique_ptr<CudaModel>> Create(std::unique_ptr<DeviceWeights> weights,
                                                           const CudaModelOptions& options,
                                                           const CudaModelGroups& groups = {});
  // bf16 copies of CPU weights (the whole model or the TpShard the groups' TP rank holds).
  static absl::StatusOr<std::unique_ptr<CudaModel>> FromCpuWeights(
      const CpuWeights& weights, const CudaModelOptions& options,
      const CudaModelGroups& groups = {});
  ~CudaModel() override;

  const ModelConfig& config() const override { return weights_->config(); }
  absl::Status Forward(std::span<const ForwardChunk> chunks, float* logits) override;
  // One launch of SampleRowsCuda after the forward (not part of its graph), then a download of
  // the ids and a synchronisation. Greedy rows after a forward that already took the arg-max of
  // its logits (below) read those ids: no launch, no wait.
  absl::Status Sample(std::span<const RowSampling> rows, int32_t* tokens) override;
  absl::Status CopySequence(const SequenceKv& from, SequenceKv& to) override;
  void Release(SequenceKv& seq) override { cache_->Release(seq); }
  int32_t max_tokens() const override { return cache_->max_tokens(); }
  // 4096: on the H200 (`resa-bench prefill`) 512-token chunks took 1.05-1.39x the time of the
  // best of 512 / 2048 / 8192, which re-read the weights less often and fill the GEMMs.
  int prefill_chunk() const override { return 4096; }
  int32_t num_pages() const override { return cache_->num_pages(); }
  int32_t free_pages() const override { return cache_->free_pages(); }
  // Blocks read / total are counted; kernel times are not attributed (zeros): the forward does
  // not synchronise between kernels.
  ForwardStats stats() const override { return stats_; }
  void ResetStats() override { stats_ = ForwardStats{.phases_timed = false}; }

  // Benchmarks: the first call fills every page of the pool with random K/V (bf16 noise of
  // unit scale) and summarises them; each call then reserves `length` positions of it for seq.
  absl::Status AdoptSyntheticContext(SequenceKv& seq, int32_t length) override;

  // Debug hook (CpuModel's SelectionTrace semantics: every sparse row's selection per layer and
  // KV head, ascending, `row` = the row's index in the caller's chunk order). While set,
  // forwards run eagerly and synchronise after every selection.
  bool set_selection_trace(SelectionTrace trace) override {
    trace_ = std::move(trace);
    return true;
  }
  void set_profiling(bool on) override { profiling_ = on; }
  std::vector<std::pair<std::string, double>> TakeProfile() override;

  const DeviceWeights& weights() const { return *weights_; }
  const DeviceKvCache& cache() const { return *cache_; }
  cudaStream_t stream() const { return stream_; }
  int graphs_captured() const;
  // Sample calls answered from the forward's own greedy ids (no launch of their own).
  int64_t greedy_samples_from_forward() const { return greedy_from_forward_; }
  // Chunk forwards (rectification passes) replayed from a captured graph.
  int64_t chunk_graph_replays() const { return chunk_graph_replays_; }
  // Off: forwards planned for graphs run their launches eagerly instead, the bits a replay must
  // reproduce (tests, debugging). On by default.
  void set_graph_capture(bool on) { graph_capture_ = on; }
  // One line: device, weights and KV bytes, KV capacity in tokens and how it was sized.
  std::string Describe() const;

 private:
  CudaModel() = default;
  struct Plan;
  struct Launches;
  Launches BuildLaunches(const Plan& plan, int layer) const;
  absl::Status Prepare(std::span<const ForwardChunk> chunks, Plan& plan);
  absl::Status EnsureCapacity(const Plan& plan);
  // Brings the device's page tables (tables_dev_) to the plan's chunks, copying only what
  // changed since the last forward.
  absl::Status UploadTables(std::span<const ForwardChunk> chunks, const Plan& plan);
  // Plan::greedy: the arg-max of the plan's logits rows into greedy_host_ (enqueued; with
  // Plan::greedy_key the lm_head GEMV's key, which Forward turns into the id).
  absl::Status GreedyIds(const Plan& plan);
  // Plan::greedy_key: the device slot of the lm_head GEMV's arg-max key (in the step metadata).
  uint64_t* ArgMaxSlot(const Plan& plan) const;
  // Row `row` (plan order) of the device's page tables.
  const int32_t* Tables(const Plan& plan, size_t row) const;
  absl::Status Enqueue(const Plan& plan);
  absl::Status Linear(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k,
                      float* y);
  // Whether a linear layer of > gemv_max_rows rows runs on skinny_ (SkinnyGemm::Supported and
  // 16-byte aligned operands).
  bool UseSkinny(const __nv_bfloat16* x, const __nv_bfloat16* w, int rows, int n, int k,
                 bool swiglu) const;
  // cuda_model_grid.cc: the distributed steps.
  bool tp_parallel() const { return tp_ != nullptr && tp_->size() > 1; }
  bool sp_parallel() const { return sp_ != nullptr && sp_->size() > 1; }
  // Collectives on device buffers, staged through pinned memory for host-buffer communicators.
  absl::Status AllReduceSum(Communicator& comm, float* data, size_t count);
  absl::Status AllGather(Communicator& comm, DataType type, const void* send, void* recv,
                         size_t count);
  // Sharded Prepare: local-view attention limits, owned K/V runs, sparse rows' owned blocks.
  void PrepareSharded(std::span<const ForwardChunk> chunks, Plan& plan);
  // kv_replicas > 1: the whole group's queries of the local KV head, [rows][group][d] in gq_.
  absl::Status GatherGroupQueries(const Plan& plan);
  // SP, one layer: owned K/V writes, local scores, the selection exchange, attention over the
  // owned blocks, the merge across the group into attn_.
  absl::Status ShardedAttention(const Plan& plan, int layer);
  // SP, one layer: only this rank's owned K/V writes (the first part of ShardedAttention).
  absl::Status WriteOwnedKv(const Plan& plan, int layer);
  absl::Status SelectAcrossRanks(const Plan& plan, int layer);
  absl::Status MergeAcrossRanks(const Plan& plan);
  // Vocab-parallel logits: the local rows, then [nl][vocab] in dlogits_ on every TP rank.
  absl::Status GatherLogits(const Plan& plan, const __nv_bfloat16* xl);
  // Waits for the work device communicators enqueued (under their timeouts).
  absl::Status SyncCommunicators();
  void DropGraphs();
  // Profiling: an event after each group of kernels (group ids index kProfileGroups).
  absl::Status Mark(int group);
  absl::Status CollectProfile();
  absl::Status TraceSelection(const Plan& plan, int group, int layer);

  std::unique_ptr<DeviceWeights> weights_;
  std::unique_ptr<DeviceKvCache> cache_;
  CudaModelOptions options_;
  Communicator* tp_ = nullptr;
  Communicator* sp_ = nullptr;
  Communicator* sp_host_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<LtGemm> gemm_;  // linear layers of > gemv_max_rows rows
  std::unique_ptr<SkinnyGemm> skinny_;  // ... of up to 64 of them, when on and on sm_90
  std::string sizing_;  // how the KV capacity was chosen
  bool pool_filled_ = false;

  // Activations for up to rows_cap_ rows and logits for up to logits_cap_ rows.
  int64_t rows_cap_ = 0, logits_cap_ = 0;
  DeviceAllocation act_mem_, logits_mem_;
  float *h_ = nullptr, *qkv_ = nullptr, *attn_ = nullptr, *proj_ = nullptr, *gu_ = nullptr;
  __nv_bfloat16 *x_ = nullptr, *q_ = nullptr, *k_ = nullptr, *v_ = nullptr, *attn_bf_ = nullptr,
                *act_ = nullptr, *xl_ = nullptr;
  float* squares_ = nullptr;  // block sums of h^2 of a fused-norm step (RowNorm)
  float* dlogits_ = nullptr;
  // Step metadata: pinned host staging and its device copy (int32), selection output.
  size_t meta_cap_ = 0;
  int32_t* meta_host_ = nullptr;
  DeviceAllocation meta_dev_, blocks_mem_;
  size_t blocks_cap_ = 0;
  // Page tables [rows][stride] in plan order, zero past each table's pages. They stay on the
  // device between forwards: tables_host_ (pinned) mirrors what was last sent, tables_filled_
  // how many leading entries of each row may be non-zero (kTableRowUnknown: the device row is
  // not known), for the layout tables_stride_. A decode step at 256K then copies a page id every
  // 16 tokens a sequence instead of its whole table (64 KB) every step (UploadTables).
  static constexpr size_t kTableRowUnknown = ~size_t(0);
  DeviceAllocation tables_dev_;
  int32_t* tables_host_ = nullptr;
  size_t tables_cap_ = 0, tables_stride_ = 0;
  std::vector<size_t> tables_filled_;
  // Selection hints [num_layers][hint_rows_][local KV heads] (SelectionHints()).
  DeviceAllocation hints_mem_;
  int64_t hint_rows_ = 0;
  float* logits_host_ = nullptr;  // pinned [logits_cap_][vocab]
  // Greedy ids from the forward itself (Plan::greedy): while the last Sample call was all greedy
  // (greedy_hint_), a forward with logits ends with SampleRowsCuda's arg-max of every logits row
  // and the ids' download to greedy_host_, inside its graph, so the next Sample of greedy rows
  // costs no launch and no synchronisation of its own (the same kernel: the same ids).
  // greedy_mem_: SampleRowSpec[logits_cap_] (spec i: row i, greedy), then int32 ids.
  bool greedy_hint_ = false;
  int64_t greedy_rows_ = 0;  // rows of greedy_host_ that belong to the current logits
  int64_t greedy_from_forward_ = 0;
  int64_t chunk_graph_replays_ = 0;
  bool graph_capture_ = true;
  DeviceAllocation greedy_mem_;
  int32_t* greedy_host_ = nullptr;  // pinned [logits_cap_]
  int64_t logits_rows_ = 0;       // rows of dlogits_ the last forward with logits wrote
  // Sampling: pinned staging and device copies of the row specs and token ids for up to
  // sample_cap_ rows; the weights workspace [weights_rows_][vocab] for non-greedy rows.
  size_t sample_cap_ = 0;
  char* sample_host_ = nullptr;
  DeviceAllocation sample_dev_, sample_weights_;
  int64_t weights_rows_ = 0;
  DeviceAllocation workspace_;
  DeviceAllocation last_h_mem_;  // the last layer's kept residual rows (Plan::reduce_last)
  std::map<std::vector<int64_t>, cudaGraphExec_t> graphs_;
  ForwardStats stats_{.phases_timed = false};  // steps run as graphs: phases not timed
  bool profiling_ = false;
  SelectionTrace trace_;
  std::vector<cudaEvent_t> events_;
  std::vector<int> event_groups_;
  size_t events_used_ = 0;
  std::vector<double> profile_ms_;
  // Distributed buffers: SP partial states [rows][lq] + lse [rows][lh] (part_), the gathered
  // partials / logits / queries (gath_), owned K/V rows gathered for writing (kw_, vw_), the
  // group queries (gq_), local scores (scores_mem_) and their host copies, pinned staging for
  // host-buffer collectives and selections.
  DeviceAllocation grid_mem_, gath_mem_, scores_mem_;
  size_t grid_rows_ = 0, gath_bytes_ = 0, scores_cap_ = 0;
  float *part_ = nullptr, *merge_lse_ = nullptr, *scores_ = nullptr;
  __nv_bfloat16 *kw_ = nullptr, *vw_ = nullptr, *gq_ = nullptr;
  void* gath_ = nullptr;
  char* stage_host_ = nullptr;
  size_t stage_cap_ = 0;
  std::vector<float> scores_host_;
  std::vector<int32_t> lists_host_;
  std::vector<int32_t> selected_;
  SelectionScratch selection_scratch_;
};

}  // namespace resa::cuda
