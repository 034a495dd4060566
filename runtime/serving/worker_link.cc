#include "runtime/serving/worker_link.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
#include "resa.grpc.pb.h"
#include "runtime/core/status.h"
#include "runtime/serving/support/logging.h"

namespace resa::serving {

namespace {

// Rank 0 sends `cmd` to every rank: its length, then its bytes.
absl::Status ShareCommand(Communicator* world, v1::WorkerCommand& cmd) {
  if (world == nullptr || world->size() == 1) return absl::OkStatus();
  std::string bytes;
  int64_t n = 0;
  if (world->rank() == 0) {
    cmd.SerializeToString(&bytes);
    n = int64_t(bytes.size());
  }
  RESA_RETURN_IF_ERROR(world->Broadcast(std::span<int64_t>(&n, 1), 0));
  bytes.resize(size_t(n));
  if (n > 0) RESA_RETURN_IF_ERROR(world->Broadcast(DataType::kUint8, bytes.data(), size_t(n), 0));
  if (world->rank() != 0 && !cmd.ParseFromString(bytes)) {
    return absl::InternalError("rank 0 broadcast a command that does not parse");
  }
  return absl::OkStatus();
}

// "UNAUTHENTICATED: invalid bearer token" (gRPC and absl share the code numbers).
std::string Describe(const grpc::Status& st) {
  return absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code())),
                      ": ", st.error_message());
}

// Rank 0's stream to the coordinator: a reader thread queues commands, a heartbeat thread and
// the plan loop write events (one writer at a time).
class CoordinatorStream {
 public:
  ~CoordinatorStream() { Close(); }

  absl::Status Open(const WorkerLinkOptions& o, const v1::WorkerRegister& reg) {
    std::shared_ptr<grpc::Channel> channel = o.channel;
    const std::string target = o.channel ? "the in-process coordinator" : o.coordinator;
    if (channel == nullptr) {
      RESA_ASSIGN_OR_RETURN(channel, MakeChannel(o.coordinator, o.security, o.max_message_bytes));
    }
    const auto deadline = std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(o.connect_timeout);
    // An in-process channel is connected by construction (and has no connectivity state).
    if (o.channel == nullptr && !channel->WaitForConnected(deadline)) {
      return absl::UnavailableError(absl::StrCat("cannot reach the coordinator at ", target,
                                                 " within ",
                                                 absl::FormatDuration(o.connect_timeout),
                                                 " (--connect-timeout)"));
    }
    stub_ = v1::WorkerControl::NewStub(channel);
    AddAuth(context_, o.security);
    stream_ = stub_->Connect(&context_);
    v1::WorkerEvent ev;
    *ev.mutable_register_() = reg;
    if (!stream_->Write(ev)) {
      stream_->WritesDone();
      const grpc::Status st = stream_->Finish();
      stream_.reset();
      return absl::UnavailableError(absl::StrCat("the coordinator at ", target,
                                                 " refused the registration: ", Describe(st)));
    }
    reader_ = std::thread([this] {
      v1::WorkerCommand cmd;
      while (stream_->Read(&cmd)) {
        std::lock_guard<std::mutex> lock(mu_);
        queue_.push_back(cmd);
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      cv_.notify_all();
    });
    heartbeat_ = std::thread([this, interval = o.heartbeat_interval] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stop_) {
        cv_.wait_for(lock, absl::ToChronoMilliseconds(interval));
        if (stop_) break;
        lock.unlock();
        v1::WorkerEvent hb;
        hb.mutable_heartbeat()->set_running(running.load());
        hb.mutable_heartbeat()->set_kv_pages_used(pages_used.load());
        const absl::Time now = absl::Now();
        const int64_t busy = busy_ns.exchange(0);
        const double span = absl::ToDoubleNanoseconds(now - last_beat);
        last_beat = now;
        if (span > 0) hb.mutable_heartbeat()->set_busy_fraction(std::min(1.0, double(busy) / span));
        Write(hb);
        lock.lock();
      }
    });
    return absl::OkStatus();
  }

  // The next command, or an empty one after `wait`. False once the stream has closed.
  bool Next(v1::WorkerCommand& cmd, absl::Duration wait) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, absl::ToChronoMilliseconds(wait),
                 [&] { return !queue_.empty() || closed_; });
    cmd.Clear();
    if (!queue_.empty()) {
      cmd = std::move(queue_.front());
      queue_.pop_front();
      return true;
    }
    return !closed_;
  }

  bool Write(const v1::WorkerEvent& ev) {
    std::lock_guard<std::mutex> lock(write_mu_);
    return stream_ != nullptr && !write_closed_ && stream_->Write(ev);
  }

  // Why the stream ended (after Next returned false).
  std::string CloseReason() {
    Close();
    return final_status_.ok() ? "the coordinator ended the stream"
                              : absl::StrCat("the stream failed: ", Describe(final_status_));
  }

  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      stop_ = true;
      cv_.notify_all();
    }
    if (heartbeat_.joinable()) heartbeat_.join();
    if (stream_ == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      stream_->WritesDone();
      write_closed_ = true;
    }
    {
      std::unique_lock<std::mutex> lock(mu_);
      // The coordinator ends the stream after our WritesDone; do not wait on a broken peer.
      if (!cv_.wait_for(lock, std::chrono::seconds(5), [&] { return closed_; })) {
        context_.TryCancel();
      }
    }
    if (reader_.joinable()) reader_.join();
    final_status_ = stream_->Finish();
  }

  std::atomic<int32_t> running{0};
  std::atomic<int64_t> pages_used{0};
  std::atomic<int64_t> busy_ns{0};  // time in plans since the last heartbeat
  absl::Time last_beat = absl::Now();

 private:
  std::unique_ptr<v1::WorkerControl::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerEvent, v1::WorkerCommand>> stream_;
  std::thread reader_, heartbeat_;
  std::mutex mu_, write_mu_;
  std::condition_variable cv_;
  std::deque<v1::WorkerCommand> queue_;
  bool closed_ = false, stop_ = false, write_closed_ = false;
  grpc::Status final_status_;
};

}  // namespace

absl::Status ProbeCoordinator(const WorkerLinkOptions& o) {
  if (o.channel != nullptr) return absl::OkStatus();
  RESA_ASSIGN_OR_RETURN(auto channel, MakeChannel(o.coordinator, o.security, o.max_message_bytes));
  const auto deadline = std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(o.connect_timeout);
  if (!channel->WaitForConnected(deadline)) {
    return absl::UnavailableError(absl::StrCat("cannot reach the coordinator at ", o.coordinator,
                                               " within ", absl::FormatDuration(o.connect_timeout),
                                               " (--coordinator, --connect-timeout)"));
  }
  // One authenticated call: a wrong token or TLS setting fails here too.
  auto stub = v1::Resa::NewStub(channel);
  grpc::ClientContext context;
  AddAuth(context, o.security);
  context.set_deadline(deadline);
  v1::ModelInfoResponse info;
  const grpc::Status st = stub->ModelInfo(&context, v1::ModelInfoRequest(), &info);
  if (!st.ok()) {
    return absl::UnavailableError(absl::StrCat("the coordinator at ", o.coordinator,
                                               " refused a call: ", Describe(st)));
  }
  return absl::OkStatus();
}

absl::Status RunWorkerLink(const WorkerLinkOptions& o, const v1::WorkerRegister& registration,
                           WorkerSession& session, Communicator* world) {
  const bool root = world == nullptr || world->rank() == 0;
  std::unique_ptr<CoordinatorStream> link;
  absl::Status opened = absl::OkStatus();
  if (root) {
    link = std::make_unique<CoordinatorStream>();
    opened = link->Open(o, registration);
  }
  // Every rank learns whether rank 0 is connected.
  v1::WorkerCommand cmd;
  if (!opened.ok()) cmd.set_refuse(std::string(opened.message()));
  RESA_RETURN_IF_ERROR(ShareCommand(world, cmd));
  if (cmd.command_case() == v1::WorkerCommand::kRefuse) {
    return root ? opened : absl::UnavailableError(absl::StrCat("rank 0: ", cmd.refuse()));
  }
  if (root) {
    LogEvent(spdlog::level::info, "registered with the coordinator",
             {{"coordinator", o.channel ? "in-process" : o.coordinator}});
  }

  auto emit = [&](v1::WorkerEvent ev) {
    if (link != nullptr) link->Write(ev);
  };
  bool lost = false;
  while (true) {
    if (root && !link->Next(cmd, absl::Seconds(1))) {
      cmd.Clear();
      cmd.set_refuse(absl::StrCat("lost the coordinator: ", link->CloseReason()));
      lost = true;
    }
    if (absl::Status st = ShareCommand(world, cmd); !st.ok()) {
      v1::WorkerEvent ev;
      ev.set_fatal(std::string(st.message()));
      emit(ev);
      return st;
    }
    switch (cmd.command_case()) {
      case v1::WorkerCommand::kPlan: {
        const absl::Time start = absl::Now();
        absl::Status st = session.Execute(cmd.plan(), emit);
        if (link != nullptr) {
          link->busy_ns += absl::ToInt64Nanoseconds(absl::Now() - start);
          link->running = session.running();
          link->pages_used = session.pages_used();
        }
        if (!st.ok()) {
          v1::WorkerEvent ev;
          ev.set_fatal(std::string(st.message()));
          emit(ev);
          return st;
        }
        break;
      }
      case v1::WorkerCommand::kShutdown:
        if (root) LogEvent(spdlog::level::info, "shutdown requested by the coordinator");
        return absl::OkStatus();
      case v1::WorkerCommand::kRefuse:
        if (lost || !root) return absl::UnavailableError(cmd.refuse());
        return absl::FailedPreconditionError(
            absl::StrCat("the coordinator refused this worker group: ", cmd.refuse()));
      default:  // drain (nothing runs unless planned) or the idle keep-alive
        break;
    }
  }
}

}  // namespace resa::serving
