// The selection tail on chosen keys (select_tail_probe.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/select_tail.cuh"
#include "kernels/cuda/select_tail_probe.h"

namespace resa::cuda {
namespace {

using select_tail::HistOutcome;
using select_tail::kDirectRank;
using select_tail::kMaxHintCandidates;
using select_tail::kMaxRegKeys;
using select_tail::kRadixBins;
using select_tail::kSelThreads;
using select_tail::TailSmem;

// One CTA, set up as SelectRow (selection.cu) leaves it for the tail: s.hist zero, s.kmin /
// s.kmax / s.ncand initialised, no barrier after. info[0] = hint key, info[1] = 1 when a
// candidate tail selected, 2 when the histogram tail did, info[2] = the threshold key.
template <SelectTailForm kForm>
__global__ void __launch_bounds__(kSelThreads, 1)
    SelectTailProbeKernel(const uint32_t* keys, const uint32_t* bits, uint32_t* count,
                          uint32_t* hist, uint32_t hint_key, uint32_t shift, int32_t mo,
                          uint32_t need, uint32_t hint_rank, int32_t* out, uint32_t* info) {
  extern __shared__ uint4 s_dyn[];  // kStridedShared: the keys
  __shared__ TailSmem s;
  const int tid = threadIdx.x;
  for (int i = tid; i < kRadixBins; i += kSelThreads) s.hist[i] = 0;
  if (tid == 0) s.kmin = 0xffffffffu, s.kmax = 0, s.ncand = 0;
  uint32_t hint = 0, t_key = 0;
  uint32_t hinted = 0;
  if constexpr (kForm == SelectTailForm::kRegister) {
    select_tail::RegisterTail(s, keys, mo, need, out, hint_rank, &hint);
  } else if constexpr (kForm == SelectTailForm::kStrided) {
    select_tail::StridedTail(s, keys, nullptr, mo, need, out);
  } else if constexpr (kForm == SelectTailForm::kStridedShared) {
    select_tail::StridedTail(s, keys, reinterpret_cast<uint32_t*>(s_dyn), mo, need, out);
  } else if constexpr (kForm == SelectTailForm::kCandidate) {
    hinted = select_tail::CandidateTail(s, keys, bits, count, mo, need, out, hint_rank, &hint);
    if (!hinted) select_tail::RegisterTail(s, keys, mo, need, out, hint_rank, &hint);
  } else {
    const HistOutcome o = select_tail::HistTail(s, keys, bits, count, hist, mo, need, out, hint_key,
                                                shift, hint_rank, &hint, &t_key);
    if (o == HistOutcome::kDone) {
      hinted = 2;
    } else if (o == HistOutcome::kDeclined) {
      hinted =
          select_tail::CandidateTail(s, keys, bits, count, mo, need, out, hint_rank, &hint, &t_key);
    }
    if (!hinted) select_tail::RegisterTail(s, keys, mo, need, out, hint_rank, &hint, &t_key);
  }
  if (tid == 0) info[0] = hint, info[1] = hinted, info[2] = t_key;
}

struct CudaFree {
  void operator()(void* p) const { cudaFree(p); }
};
template <typename T>
using DevicePtr = std::unique_ptr<T, CudaFree>;

template <typename T>
absl::StatusOr<DevicePtr<T>> DeviceCopy(const std::vector<T>& host, size_t n) {
  T* p = nullptr;
  absl::Status st = CudaStatus(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)),
                               "select tail probe: cudaMalloc");
  if (!st.ok()) return st;
  DevicePtr<T> d(p);
  st.Update(CudaStatus(cudaMemset(p, 0, std::max<size_t>(n, 1) * sizeof(T)),
                       "select tail probe: cudaMemset"));
  if (st.ok() && !host.empty()) {
    st.Update(
        CudaStatus(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
                   "select tail probe: cudaMemcpy"));
  }
  if (!st.ok()) return st;
  return d;
}

}  // namespace

const char* SelectTailFormName(SelectTailForm form) {
  switch (form) {
    case SelectTailForm::kRegister:
      return "register";
    case SelectTailForm::kStrided:
      return "strided";
    case SelectTailForm::kStridedShared:
      return "strided_shared";
    case SelectTailForm::kCandidate:
      return "candidate";
    case SelectTailForm::kHistogram:
      return "histogram";
  }
  return "unknown";
}

namespace {
// The histogram a HistTail's scoring CTAs build: candidates (key >= candidate_key) by bin, the
// top bin left out.
std::vector<uint32_t> ProbeHistogram(const SelectTailProbe& p) {
  std::vector<uint32_t> hist(kRadixBins, 0u);
  for (uint32_t k : p.keys) {
    if (k < p.candidate_key) continue;
    const uint32_t bin = std::min<uint32_t>((k - p.candidate_key) >> p.hist_shift, kRadixBins - 1);
    if (bin < uint32_t(kRadixBins - 1)) ++hist[bin];
  }
  return hist;
}
}  // namespace

int HistTailOutcomeReference(const SelectTailProbe& p) {
  const int64_t total =
      std::count_if(p.keys.begin(), p.keys.end(), [&](uint32_t k) { return k >= p.candidate_key; });
  if (total < int64_t(p.need) || total > kMaxHintCandidates) return 0;
  std::vector<uint32_t> hist = ProbeHistogram(p);
  int64_t others = 0;
  for (uint32_t c : hist) others += c;
  hist[kRadixBins - 1] = uint32_t(total - others);
  int64_t above = 0;
  for (int bin = kRadixBins - 1; bin >= 0; --bin) {
    if (above + hist[size_t(bin)] >= int64_t(p.need)) {
      const int64_t remaining = int64_t(p.need) - above;
      if (bin == kRadixBins - 1) return 1;
      return remaining == int64_t(hist[size_t(bin)]) || hist[size_t(bin)] <= uint32_t(kDirectRank)
                 ? 2
                 : 1;
    }
    above += hist[size_t(bin)];
  }
  return 1;  // unreachable: the bins hold total >= need
}

std::vector<int32_t> SelectTailReference(const std::vector<uint32_t>& keys, uint32_t need) {
  std::vector<int32_t> ids(keys.size());
  std::iota(ids.begin(), ids.end(), 0);
  need = std::min<uint32_t>(need, uint32_t(keys.size()));
  std::partial_sort(ids.begin(), ids.begin() + need, ids.end(), [&](int32_t a, int32_t b) {
    return keys[size_t(a)] != keys[size_t(b)] ? keys[size_t(a)] > keys[size_t(b)] : a < b;
  });
  ids.resize(need);
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::StatusOr<SelectTailResult> RunSelectTailCuda(const SelectTailProbe& p) {
  const size_t mo = p.keys.size();
  // Every form but the strided one from L2 holds the keys in registers or shared memory.
  const bool bounded = p.form != SelectTailForm::kStrided;
  if (mo < 2 || p.need < 1 || p.need >= mo || (bounded && mo > size_t(kMaxRegKeys)) ||
      mo > size_t(1) << 24) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RunSelectTailCuda: ", mo, " keys, need ", p.need, ", form ", SelectTailFormName(p.form),
        " (2 <= keys, 1 <= need < keys; at most ", kMaxRegKeys, " keys but for ",
        SelectTailFormName(SelectTailForm::kStrided), ")"));
  }
  // Candidate flags: bit i % 32 of word i / 32 for block i with key >= candidate_key.
  const size_t words = (mo + 31) / 32;
  std::vector<uint32_t> bits(words, 0u), count(1, 0u);
  for (size_t i = 0; i < mo; ++i) {
    if (p.keys[i] >= p.candidate_key) bits[i / 32] |= 1u << (i % 32), ++count[0];
  }
  // Padded to whole 16-byte groups (the strided form reads uint4s).
  auto d_keys = DeviceCopy(p.keys, (mo + 3) / 4 * 4);
  if (!d_keys.ok()) return d_keys.status();
  auto d_bits = DeviceCopy(bits, words);
  if (!d_bits.ok()) return d_bits.status();
  auto d_count = DeviceCopy(count, 1);
  if (!d_count.ok()) return d_count.status();
  if (p.form == SelectTailForm::kHistogram && p.hist_shift > 31) {
    return absl::InvalidArgumentError(
        absl::StrCat("RunSelectTailCuda: hist_shift ", p.hist_shift, " (0-31)"));
  }
  auto d_hist =
      DeviceCopy(p.form == SelectTailForm::kHistogram ? ProbeHistogram(p) : std::vector<uint32_t>{},
                 kRadixBins);
  if (!d_hist.ok()) return d_hist.status();
  auto d_out = DeviceCopy(std::vector<int32_t>(mo, -1), mo);
  if (!d_out.ok()) return d_out.status();
  auto d_info = DeviceCopy(std::vector<uint32_t>{}, 3);
  if (!d_info.ok()) return d_info.status();

  const int32_t n = int32_t(mo);
  size_t smem = 0;
  auto launch = [&](auto kernel) {
    kernel<<<1, kSelThreads, smem>>>(d_keys->get(), d_bits->get(), d_count->get(), d_hist->get(),
                                     p.candidate_key, p.hist_shift, n, p.need, p.hint_rank,
                                     d_out->get(), d_info->get());
  };
  switch (p.form) {
    case SelectTailForm::kRegister:
      launch(SelectTailProbeKernel<SelectTailForm::kRegister>);
      break;
    case SelectTailForm::kStrided:
      launch(SelectTailProbeKernel<SelectTailForm::kStrided>);
      break;
    case SelectTailForm::kStridedShared: {
      smem = (mo + 3) / 4 * 16;
      absl::Status st =
          CudaStatus(cudaFuncSetAttribute(SelectTailProbeKernel<SelectTailForm::kStridedShared>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
                     "select tail probe: cudaFuncSetAttribute");
      if (!st.ok()) return st;
      launch(SelectTailProbeKernel<SelectTailForm::kStridedShared>);
      break;
    }
    case SelectTailForm::kCandidate:
      launch(SelectTailProbeKernel<SelectTailForm::kCandidate>);
      break;
    case SelectTailForm::kHistogram:
      launch(SelectTailProbeKernel<SelectTailForm::kHistogram>);
      break;
  }
  if (absl::Status st = CheckLaunch("SelectTailProbeKernel"); !st.ok()) return st;
  if (absl::Status st =
          CudaStatus(cudaDeviceSynchronize(), "select tail probe: cudaDeviceSynchronize");
      !st.ok()) {
    return st;
  }
  SelectTailResult res;
  std::vector<int32_t> out(mo);
  uint32_t info[3] = {0, 0, 0}, left = 0;
  std::vector<uint32_t> hist_left(kRadixBins);
  absl::Status st =
      CudaStatus(cudaMemcpy(out.data(), d_out->get(), mo * sizeof(int32_t), cudaMemcpyDeviceToHost),
                 "select tail probe: cudaMemcpy");
  st.Update(CudaStatus(cudaMemcpy(info, d_info->get(), sizeof(info), cudaMemcpyDeviceToHost),
                       "select tail probe: cudaMemcpy"));
  st.Update(CudaStatus(cudaMemcpy(&left, d_count->get(), sizeof(left), cudaMemcpyDeviceToHost),
                       "select tail probe: cudaMemcpy"));
  st.Update(CudaStatus(cudaMemcpy(hist_left.data(), d_hist->get(), kRadixBins * sizeof(uint32_t),
                                  cudaMemcpyDeviceToHost),
                       "select tail probe: cudaMemcpy"));
  if (!st.ok()) return st;
  // The candidate tails reset their count (and the histogram tail its histogram) for the next
  // launch whether they run or decline; the ids past need must be untouched.
  const bool counted = p.form == SelectTailForm::kCandidate || p.form == SelectTailForm::kHistogram;
  if (counted && left != 0) {
    return absl::InternalError(
        absl::StrCat("select tail probe: candidate count left at ", left, ", not reset to 0"));
  }
  if (p.form == SelectTailForm::kHistogram &&
      std::any_of(hist_left.begin(), hist_left.end(), [](uint32_t c) { return c != 0; })) {
    return absl::InternalError("select tail probe: histogram not reset to 0");
  }
  for (size_t i = p.need; i < mo; ++i) {
    if (out[i] != -1) {
      return absl::InternalError(absl::StrCat("select tail probe: wrote out[", i, "] = ", out[i],
                                              " past the ", p.need, " selected"));
    }
  }
  out.resize(p.need);
  res.ids = std::move(out);
  res.hint_key = info[0];
  res.from_candidates = info[1] != 0;
  res.from_histogram = info[1] == 2;
  res.threshold_key = info[2];
  return res;
}

}  // namespace resa::cuda
