// The backend seam on the CPU: a Decoder over a ModelBackend decodes exactly as the one built
// from CpuModel + KvCache, and the seam's additions (Adopt, host logits off, null logits)
// keep their contracts.
#include "runtime/engine/model_backend.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/engine/backend_factory.h"
#include "runtime/engine/decoder.h"
#include "runtime/engine/sampler.h"
#include "runtime/engine/synthetic_model.h"

namespace resa {
namespace {

class BackendSeamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source_ = MakeSyntheticWeights(SyntheticConfig("tiny").value(), 5);
    weights_ = std::move(LoadCpuWeights(*source_).value());
  }
  std::vector<int32_t> Prompt(int n) const {
    std::vector<int32_t> t(n);
    for (int i = 0; i < n; ++i) t[i] = (i * 37 + 1) % weights_->config.vocab_size;
    return t;
  }
  std::unique_ptr<WeightSource> source_;
  std::unique_ptr<CpuWeights> weights_;
};

TEST_F(BackendSeamTest, FactoryBackendDecodesBitwiseLikeTheCpuModel) {
  auto cache = KvCache::Create(weights_->config, 64).value();
  CpuModel model(*weights_, *cache);
  Decoder direct(model, *cache);
  auto backend = MakeBackend(*weights_, BackendOptions{Device::kCpu, 64 * kPageTokens});
  ASSERT_TRUE(backend.ok()) << backend.status();
  Decoder seam(*backend->model);
  const ResaOptions o{DecodeMode::kResa, 0.25f, 4, 8};
  const int a = direct.Start(Prompt(150), o).value();
  const int b = seam.Start(Prompt(150), o).value();
  const int vocab = weights_->config.vocab_size;
  for (int step = 0; step < 20; ++step) {
    ASSERT_EQ(0, std::memcmp(direct.logits(a), seam.logits(b), size_t(vocab) * 4)) << step;
    const int32_t t = ArgMax(direct.logits(a), vocab);
    Decoder::Feed fa{a, t}, fb{b, t};
    ASSERT_TRUE(direct.Step({&fa, 1}).ok());
    ASSERT_TRUE(seam.Step({&fb, 1}).ok());
  }
  EXPECT_EQ(direct.report(a).rectifications, seam.report(b).rectifications);
  EXPECT_GT(seam.report(b).rectifications, 0);
}

TEST_F(BackendSeamTest, HostLogitsOffKeepsThePrefillLogits) {
  auto backend = MakeBackend(*weights_, BackendOptions{Device::kCpu, 64 * kPageTokens}).value();
  Decoder dec(*backend.model);
  dec.set_host_logits(false);
  const int vocab = weights_->config.vocab_size;
  const int id = dec.Start(Prompt(40), ResaOptions{DecodeMode::kDense}).value();
  const std::vector<float> prefill(dec.logits(id), dec.logits(id) + vocab);
  Decoder::Feed f{id, 3};
  ASSERT_TRUE(dec.Step({&f, 1}).ok());  // the CPU backend gets a null destination
  EXPECT_EQ(0, std::memcmp(prefill.data(), dec.logits(id), size_t(vocab) * 4));
  EXPECT_EQ(dec.kv(id).length, 41);
}

TEST_F(BackendSeamTest, AdoptTakesThePagesAndReturnsThemOnError) {
  auto cache = KvCache::Create(weights_->config, 8).value();
  CpuModel model(*weights_, *cache);
  Decoder dec(model, *cache);
  SequenceKv kv;
  ASSERT_TRUE(cache->Reserve(kv, 40).ok());
  kv.length = 40;
  ResaOptions bad{DecodeMode::kResa, 0.1f, 16, 0};  // rectify_every 0 in resa mode
  EXPECT_FALSE(dec.Adopt(kv, bad).ok());
  EXPECT_EQ(cache->free_pages(), 8);
  SequenceKv good;
  ASSERT_TRUE(cache->Reserve(good, 40).ok());
  good.length = 40;
  auto id = dec.Adopt(good, ResaOptions{DecodeMode::kDense});
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(dec.report(*id).prompt_tokens, 40);
  Decoder::Feed f{*id, 7};
  EXPECT_TRUE(dec.Step({&f, 1}).ok());
  dec.Finish(*id);
  EXPECT_EQ(cache->free_pages(), 8);
}

TEST(BackendFactoryTest, ParsesDevicesAndRejectsACpuWithoutCapacity) {
  EXPECT_EQ(ParseDevice("cpu").value(), Device::kCpu);
  EXPECT_EQ(ParseDevice("cuda").value(), Device::kCuda);
  EXPECT_FALSE(ParseDevice("tpu").ok());
  auto source = MakeSyntheticWeights(SyntheticConfig("tiny").value(), 1);
  auto w = LoadCpuWeights(*source).value();
  EXPECT_FALSE(MakeBackend(*w, BackendOptions{Device::kCpu, 0}).ok());
}

// The device check programs run before loading a model: the CPU is always there; CUDA is there
// exactly when this build has the backend and the device is visible, else the message names
// --device cuda (the CI machine: no GPU; the H200: device 0 usable, device 1000 not).
TEST(BackendFactoryTest, DeviceCheckBeforeTheModelLoads) {
  EXPECT_TRUE(CheckDevice(Device::kCpu).ok());
  const absl::Status cuda = CheckDevice(Device::kCuda);
  EXPECT_EQ(cuda.ok(), CudaBackendBuilt() && CudaDeviceCount() > 0) << cuda;
  if (!cuda.ok()) {
    EXPECT_NE(std::string(cuda.message()).find("--device cuda"), std::string::npos) << cuda;
  }
  const absl::Status missing = CheckDevice(Device::kCuda, 1000);
  EXPECT_FALSE(missing.ok());
  if (CudaDeviceCount() > 0) {
    EXPECT_NE(std::string(missing.message()).find("does not exist"), std::string::npos) << missing;
  }
}

// The CUDA tuning switches: on by default (PDL unless RESA_CUDA_PDL=0; an L2 fetch granularity
// of 128 bytes unless RESA_CUDA_L2_FETCH is set), set and read back in a build with the CUDA
// backend; without it they read as the defaults and setting them does nothing.
TEST(BackendFactoryTest, CudaTuningSwitchesRoundTrip) {
  const CudaTuning start = GetCudaTuning();
  const char* env = std::getenv("RESA_CUDA_PDL");
  EXPECT_EQ(start.programmatic_launch,
            !CudaBackendBuilt() || env == nullptr || std::strcmp(env, "0") != 0);
  EXPECT_TRUE(start.swiglu_epilogue);
  const char* norms_env = std::getenv("RESA_CUDA_FUSED_NORMS");
  EXPECT_EQ(start.fused_norms,
            !CudaBackendBuilt() || norms_env == nullptr || std::strcmp(norms_env, "0") != 0);
  const char* chunk_env = std::getenv("RESA_CUDA_CHUNK_KERNEL");
  EXPECT_EQ(start.wgmma_chunk,
            !CudaBackendBuilt() || chunk_env == nullptr || std::strcmp(chunk_env, "mma") != 0);
  const char* l2_env = std::getenv("RESA_CUDA_L2_FETCH");
  if (!CudaBackendBuilt() || l2_env == nullptr) {
    EXPECT_EQ(start.l2_fetch_bytes, 128);
  }
  SetCudaTuning({.programmatic_launch = false,
                 .swiglu_epilogue = false,
                 .fused_norms = false,
                 .wgmma_chunk = false,
                 .selection_hints = true,
                 .l2_fetch_bytes = 32});
  const CudaTuning off = GetCudaTuning();
  EXPECT_EQ(off.programmatic_launch, CudaBackendBuilt() ? false : start.programmatic_launch);
  EXPECT_EQ(off.swiglu_epilogue, !CudaBackendBuilt());
  EXPECT_EQ(off.fused_norms, CudaBackendBuilt() ? false : start.fused_norms);
  EXPECT_EQ(off.wgmma_chunk, !CudaBackendBuilt());
  EXPECT_EQ(off.l2_fetch_bytes, CudaBackendBuilt() ? 32 : 128);
  SetCudaTuning({.l2_fetch_bytes = 1000});  // clamped to the limit's range
  EXPECT_EQ(GetCudaTuning().l2_fetch_bytes, 128);
  SetCudaTuning(start);
  EXPECT_EQ(GetCudaTuning().programmatic_launch, start.programmatic_launch);
  EXPECT_EQ(GetCudaTuning().swiglu_epilogue, start.swiglu_epilogue);
  EXPECT_EQ(GetCudaTuning().fused_norms, start.fused_norms);
  EXPECT_EQ(GetCudaTuning().wgmma_chunk, start.wgmma_chunk);
  EXPECT_EQ(GetCudaTuning().l2_fetch_bytes, start.l2_fetch_bytes);
}

}  // namespace
}  // namespace resa
