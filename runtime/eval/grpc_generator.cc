// MakeGrpcGenerator: up to `concurrency` blocking Resa.Generate streams, one per worker thread,
// each taking the next request from a shared counter.
#include "runtime/eval/grpc_generator.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "resa.grpc.pb.h"
#include "runtime/core/status.h"
#include "runtime/core/sysinfo.h"

namespace resa {

namespace {

v1::DecodeMode ToProto(DecodeMode m) {
  switch (m) {
    case DecodeMode::kDense:
      return v1::DECODE_MODE_DENSE;
    case DecodeMode::kSparse:
      return v1::DECODE_MODE_SPARSE;
    case DecodeMode::kResa:
      return v1::DECODE_MODE_RESA;
  }
  return v1::DECODE_MODE_UNSPECIFIED;
}

absl::Status FromGrpc(const grpc::Status& st, std::string_view context) {
  return absl::Status(absl::StatusCode(int(st.error_code())),
                      absl::StrCat(AsAbsl(context), ": ", st.error_message()));
}

class GrpcGenerator final : public MathGenerator {
 public:
  GrpcGenerator(const ServerGeneratorOptions& o, std::shared_ptr<grpc::Channel> channel,
                std::string model)
      : opt_(o), channel_(std::move(channel)), stub_(v1::Resa::NewStub(channel_)),
        model_(std::move(model)) {}

  std::string Describe() const override {
    return absl::StrCat("coordinator ", opt_.address, " (model ", model_, "), ",
                        opt_.concurrency, " streams");
  }

  absl::Status Generate(std::span<const GenerationRequest> requests,
                        const GenerationDone& on_done) override {
    std::atomic<size_t> next{0};
    std::atomic<bool> stop{false};
    std::mutex mu;  // serialises on_done and first_error
    absl::Status first_error;
    const auto fail = [&](absl::Status st) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_error.ok()) first_error = std::move(st);
      stop = true;
    };
    const auto worker = [&] {
      while (!stop) {
        const size_t i = next.fetch_add(1);
        if (i >= requests.size()) return;
        absl::StatusOr<GenerationResult> res = RunOne(requests[i], stop);
        if (!res.ok()) {
          fail(absl::Status(res.status().code(),
                            absl::StrCat("request ", i, ": ", res.status().message())));
          return;
        }
        std::lock_guard<std::mutex> lock(mu);
        if (stop) return;
        absl::Status st = on_done(i, *std::move(res));
        if (!st.ok()) {
          first_error = std::move(st);
          stop = true;
          return;
        }
      }
    };
    std::vector<std::thread> threads;
    const int n = std::max(1, std::min<int>(opt_.concurrency, int(requests.size())));
    for (int t = 0; t < n; ++t) threads.emplace_back(worker);
    for (std::thread& t : threads) t.join();
    return first_error;
  }

 private:
  absl::StatusOr<GenerationResult> RunOne(const GenerationRequest& r,
                                          const std::atomic<bool>& stop) {
    v1::GenerateRequest req;
    if (r.chat) {
      v1::ChatMessage* m = req.add_messages();
      m->set_role("user");
      m->set_content(r.prompt);
    } else {
      req.set_prompt(r.prompt);
    }
    req.set_max_tokens(r.max_new_tokens);
    req.mutable_sampling()->set_temperature(r.sampling.temperature);
    req.mutable_sampling()->set_top_k(r.sampling.top_k);
    req.mutable_sampling()->set_top_p(r.sampling.top_p);
    req.mutable_sampling()->set_seed(r.sampling.seed);
    req.mutable_resa()->set_mode(ToProto(r.resa.mode));
    req.mutable_resa()->set_sparse_ratio(r.resa.sparse_ratio);
    req.mutable_resa()->set_min_blocks(r.resa.min_blocks);
    req.mutable_resa()->set_rectify_every(r.resa.rectify_every);
    req.set_timeout_seconds(opt_.timeout_seconds);
    req.set_client_tag("resa-eval math");

    grpc::ClientContext ctx;
    Stopwatch clock;
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&ctx, req);
    GenerationResult res;
    v1::GenerateResponse msg;
    bool done = false;
    while (reader->Read(&msg)) {
      res.text += msg.text();
      if (stop) ctx.TryCancel();
      if (!msg.done()) continue;
      done = true;
      const v1::GenerationReport& rep = msg.report();
      res.prompt_tokens = rep.prompt_tokens();
      res.generated_tokens = rep.generated_tokens();
      res.report.prompt_tokens = rep.prompt_tokens();
      res.report.decode_steps = rep.decode_steps();
      res.report.sparse_steps = rep.sparse_steps();
      res.report.blocks_read = rep.blocks_read();
      res.report.blocks_total = rep.blocks_total();
      res.report.rectifications = rep.rectifications();
      res.report.rectified_tokens = rep.rectified_tokens();
      switch (msg.finish_reason()) {
        case v1::FINISH_REASON_EOS:
        case v1::FINISH_REASON_STOP:
          res.finish_reason = "stop";
          break;
        case v1::FINISH_REASON_LENGTH:
          res.finish_reason = "length";
          break;
        case v1::FINISH_REASON_CONTEXT:
          res.finish_reason = "context";
          break;
        default:
          res.finish_reason = v1::FinishReason_Name(msg.finish_reason());
      }
    }
    const grpc::Status st = reader->Finish();
    if (!st.ok()) return FromGrpc(st, absl::StrCat("Generate on ", opt_.address));
    if (!done) {
      return absl::DataLossError(
          absl::StrCat("Generate on ", opt_.address, ": stream ended without a done message"));
    }
    if (res.finish_reason != "stop" && res.finish_reason != "length" &&
        res.finish_reason != "context") {
      return absl::AbortedError(absl::StrCat("Generate on ", opt_.address, ": job ended with ",
                                             res.finish_reason));
    }
    res.seconds = clock.Seconds();
    return res;
  }

  ServerGeneratorOptions opt_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Resa::Stub> stub_;
  std::string model_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MathGenerator>> MakeGrpcGenerator(
    const ServerGeneratorOptions& o) {
  if (o.address.empty()) return absl::InvalidArgumentError("--server is empty");
  if (o.concurrency < 1) return absl::InvalidArgumentError("--batch must be at least 1");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(o.address, grpc::InsecureChannelCredentials(), args);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    return absl::UnavailableError(
        absl::StrCat("--server ", o.address, ": no coordinator answered within 10 s"));
  }
  auto stub = v1::Resa::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ModelInfoResponse info;
  const grpc::Status st = stub->ModelInfo(&ctx, v1::ModelInfoRequest(), &info);
  if (!st.ok()) {
    return absl::Status(absl::StatusCode(int(st.error_code())),
                        absl::StrCat("--server ", o.address, ": ModelInfo: ", st.error_message()));
  }
  return std::unique_ptr<MathGenerator>(
      std::make_unique<GrpcGenerator>(o, std::move(channel), info.model()));
}

}  // namespace resa
