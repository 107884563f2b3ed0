// kldrift_echo_server: the transport ceiling for `kldrift bench`.
//
//   kldrift_echo_server --listen 127.0.0.1:0 --port-file FILE
//
// Serves the KlDrift API with gRPC's callback API and does nothing else: Ingest acknowledges every
// request's sequence as soon as it is read (acks written while another is in flight are coalesced
// into the next, which is cumulative anyway), holding acks for batches marked more_follows as
// kldriftd does (up to kMaxHeldAcks), so both answer with as many responses; PutReference answers
// version 1, ListReferences an empty list, GetDrift an empty report. `kldrift bench` runs unchanged
// against it, with the same message sizes, so what kldriftd achieves can be set against what gRPC
// alone achieves on the same machine in the same run (tests/bench/service_bench.py). Stops on
// SIGTERM or SIGINT.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "server/allocator.h"
#include "server/core/mutex.h"
#include "server/service/kldrift_service.h"

namespace kldrift {
namespace {

// Largest request accepted: kldriftd's default --max-receive-message-bytes.
constexpr int kMaxReceiveMessageBytes = 16 << 20;
constexpr char kUsage[] =
    "usage: kldrift_echo_server [--listen 127.0.0.1:0] [--port-file FILE]\n"
    "  --listen     host:port to serve on (port 0: any free port; default 127.0.0.1:0)\n"
    "  --port-file  write the bound port here once serving\n";
// How long calls in flight may take to finish at shutdown.
constexpr absl::Duration kShutdownGrace = absl::Seconds(2);

// One Ingest stream: reads continuously; acknowledges the latest sequence read, one write at a
// time.
class EchoIngest final : public grpc::ServerBidiReactor<v1::IngestRequest, v1::IngestResponse> {
 public:
  EchoIngest() { StartRead(&request_); }

  // Start* and Finish are called outside the lock: gRPC may run the next reaction inline.
  void OnReadDone(bool ok) override {
    Action action;
    {
      MutexLock lock(&mutex_);
      if (ok) {
        latest_ = std::max(latest_, request_.sequence());
        ++held_;
        hold_ = request_.more_follows() && held_ < kMaxHeldAcks;
      } else {
        reads_done_ = true;
      }
      action = NextActionLocked();
    }
    Perform(action);
    if (ok) StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    Action action;
    {
      MutexLock lock(&mutex_);
      writing_ = false;
      if (!ok) broken_ = true;
      action = NextActionLocked();
    }
    Perform(action);
  }

  void OnDone() override { delete this; }

 private:
  enum class Action { kNone, kWrite, kFinish };

  Action NextActionLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (writing_ || finished_) return Action::kNone;
    if (!broken_ && latest_ != written_ && (!hold_ || reads_done_)) {
      response_.set_acked_sequence(latest_);
      written_ = latest_;
      held_ = 0;
      hold_ = false;
      writing_ = true;
      return Action::kWrite;
    }
    if (reads_done_ || broken_) {
      finished_ = true;
      return Action::kFinish;
    }
    return Action::kNone;
  }

  void Perform(Action action) {
    if (action == Action::kWrite) StartWrite(&response_);
    if (action == Action::kFinish) Finish(grpc::Status::OK);
  }

  Mutex mutex_;
  v1::IngestRequest request_;    // Only touched by the one read in progress.
  v1::IngestResponse response_;  // Changed only while no write is in progress.
  uint64_t latest_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t written_ ABSL_GUARDED_BY(mutex_) = 0;
  size_t held_ ABSL_GUARDED_BY(mutex_) = 0;    // Batches read since the last write started.
  bool hold_ ABSL_GUARDED_BY(mutex_) = false;  // The last one said another follows at once.
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mutex_) = false;
  bool broken_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
};

class EchoService final : public v1::KlDrift::CallbackService {
 public:
  grpc::ServerBidiReactor<v1::IngestRequest, v1::IngestResponse>* Ingest(
      grpc::CallbackServerContext* /*context*/) override {
    return new EchoIngest();
  }

  grpc::ServerUnaryReactor* PutReference(grpc::CallbackServerContext* context,
                                         const v1::PutReferenceRequest* /*request*/,
                                         v1::PutReferenceResponse* response) override {
    response->set_version(1);
    return Ok(context);
  }

  grpc::ServerUnaryReactor* ListReferences(grpc::CallbackServerContext* context,
                                           const v1::ListReferencesRequest* /*request*/,
                                           v1::ListReferencesResponse* /*response*/) override {
    return Ok(context);
  }

  grpc::ServerUnaryReactor* GetDrift(grpc::CallbackServerContext* context,
                                     const v1::GetDriftRequest* /*request*/,
                                     v1::GetDriftResponse* /*response*/) override {
    return Ok(context);
  }

 private:
  static grpc::ServerUnaryReactor* Ok(grpc::CallbackServerContext* context) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

struct Flags {
  std::string listen = "127.0.0.1:0";
  std::string port_file;
};

// --name value or --name=value; false (after a message) for anything else.
bool ParseFlags(const std::vector<std::string>& args, Flags* flags) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i];
    std::string value;
    const size_t equals = name.find('=');
    if (equals != std::string::npos) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      std::fprintf(stderr, "kldrift_echo_server: %s needs a value\n%s", name.c_str(), kUsage);
      return false;
    }
    if (name == "--listen") {
      flags->listen = value;
    } else if (name == "--port-file") {
      flags->port_file = value;
    } else {
      std::fprintf(stderr, "kldrift_echo_server: unknown flag %s\n%s", name.c_str(), kUsage);
      return false;
    }
  }
  return true;
}

int Serve(const Flags& flags) {
  // Block the stop signals in every thread (gRPC's inherit the mask) and wait for them here.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  grpc::EnableDefaultHealthCheckService(true);
  EchoService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(flags.listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxReceiveMessageBytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "kldrift_echo_server: cannot listen on %s\n", flags.listen.c_str());
    return 1;
  }
  const std::string& port_file = flags.port_file;
  if (!port_file.empty()) {
    // Written whole under another name first, so a reader never sees a partial port.
    const std::string partial = port_file + ".partial";
    std::ofstream(partial) << port << "\n";
    if (std::rename(partial.c_str(), port_file.c_str()) != 0) {
      std::fprintf(stderr, "kldrift_echo_server: cannot write --port-file %s\n", port_file.c_str());
      return 1;
    }
  }
  std::printf("kldrift_echo_server: serving on port %d\n", port);
  std::fflush(stdout);
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  server->Shutdown(absl::ToChronoTime(absl::Now() + kShutdownGrace));
  return 0;
}

}  // namespace
}  // namespace kldrift

int main(int argc, char** argv) {
  kldrift::ConfigureAllocator();  // As kldriftd: the same malloc, set up the same way.
  kldrift::Flags flags;
  if (!kldrift::ParseFlags(std::vector<std::string>(argv + 1, argv + argc), &flags)) return 2;
  return kldrift::Serve(flags);
}
