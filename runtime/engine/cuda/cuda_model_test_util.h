// Shared by the CUDA model's tests (cuda_model_test.cc, cuda_model_sampling_test.cc): the small
// Qwen2-shaped synthetic model (head_dim 128, QKV bias: the R1-Distill shapes scaled down) and
// the fixture of the GPU-only invariants, which builds CudaModels on its random weights.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>

#include "kernels/cuda/cuda_test_util.h"
#include "runtime/engine/cuda/cuda_model.h"
#include "runtime/engine/synthetic_model.h"
#include "runtime/model/weight_source.h"

namespace resa::cuda::model_test {

inline ModelConfig SmallQwen() {
  ModelConfig c = SyntheticConfig("r1-qwen-1.5b").value();
  c.model_name = "qwen-d128-small";
  c.vocab_size = 2048;
  c.hidden_size = 512;
  c.intermediate_size = 1024;
  c.num_layers = 4;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  return c;
}

class CudaModelInvariants : public testing::CudaTest {
 protected:
  void SetUp() override {
    testing::CudaTest::SetUp();
    if (IsSkipped()) return;
    source_ = MakeSyntheticWeights(SmallQwen(), 3);
    weights_ = std::move(LoadCpuWeights(*source_).value());
  }
  std::unique_ptr<CudaModel> Model(bool graphs, int32_t pages = 512, int gemv_max_rows = 8) {
    CudaModelOptions o;
    o.kv_pages = pages;
    o.graphs = graphs;
    o.gemv_max_rows = gemv_max_rows;
    return std::move(CudaModel::FromCpuWeights(*weights_, o).value());
  }
  std::unique_ptr<WeightSource> source_;
  std::unique_ptr<CpuWeights> weights_;
};

}  // namespace resa::cuda::model_test
