// The worker group's side of the control plane (DESIGN.md §6). Rank 0 opens the WorkerControl
// stream to the coordinator, registers, and turns each command into work for every rank: it
// broadcasts the command through the group's communicator, all ranks run it on their
// WorkerSession, and rank 0 streams the events back, plus a heartbeat every second. While idle,
// rank 0 broadcasts an empty command every second so that waiting ranks never hit the
// communicator's timeout; a rank that dies or hangs therefore surfaces within that timeout.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "parallel/communicator.h"
#include "resa.pb.h"
#include "runtime/serving/support/security.h"
#include "runtime/serving/worker_session.h"

namespace resa::serving {

struct WorkerLinkOptions {
  std::string coordinator;                  // HOST:PORT (rank 0)
  ClientSecurityOptions security;
  std::shared_ptr<grpc::Channel> channel;   // used instead of `coordinator` when set (in-process)
  absl::Duration connect_timeout = absl::Seconds(30);
  absl::Duration heartbeat_interval = absl::Seconds(1);
  int max_message_bytes = 64 << 20;
};

// Checks that the coordinator accepts connections within options.connect_timeout, so a worker
// fails before loading its weights when the address is wrong. Unavailable naming the address.
absl::Status ProbeCoordinator(const WorkerLinkOptions& options);

// Runs the group until the coordinator sends shutdown (OK). Errors: the coordinator cannot be
// reached or refused the registration, the stream broke, or a plan failed on some rank (the
// coordinator is told, as a fatal event, before this returns). Collective over `world`;
// `registration` matters on rank 0 only.
absl::Status RunWorkerLink(const WorkerLinkOptions& options, const v1::WorkerRegister& registration,
                           WorkerSession& session, Communicator* world);

}  // namespace resa::serving
