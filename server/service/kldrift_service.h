// KlDriftService: the gRPC adapter over DriftEngine (callback API).
//
// Thin by design: each RPC decodes its request (proto_conversion.h), calls the engine and encodes
// the result; statuses are converted in one place (status_conversion.h). Streaming RPCs are
// reactors that never block a gRPC thread:
//   - Ingest reads one batch at a time, applies it, and answers with a cumulative ack. It is
//     served on gRPC's raw form (bytes in and out) so that a batch is decoded straight into the
//     engine's types (IngestDecoder; protobuf and FromProto for what that declines). Acks that
//     pile up while a write is in flight are merged into one (acks are cumulative), so a client
//     that stops reading acks costs one pending response, and reading pauses once too many batch
//     errors are waiting to be written. A batch marked more_follows (the client sends another at
//     once) may have its ack held and merged with a later batch's, up to kMaxHeldAcks batches: a
//     batch without the mark, a rejected batch or the end of the stream sends what is held.
//     A client id has one live Ingest stream: a newer one takes over (the older ends ABORTED, its
//     unacknowledged batches left for the client to resend), so a reconnecting client is never
//     locked out by a half-open old stream and two streams never interleave one id's sequences.
//   - WatchDrift registers an engine watcher whose reports are queued (bounded; the oldest are
//     dropped and counted if the client cannot keep up) and written one at a time.
// BeginShutdown() finishes every open watch stream so Server::Shutdown() can drain quickly.
//
// Thread safety: safe for concurrent RPCs; the engine must outlive the service.
#ifndef KLDRIFT_SERVER_SERVICE_KLDRIFT_SERVICE_H_
#define KLDRIFT_SERVER_SERVICE_KLDRIFT_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <set>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "server/core/drift_engine.h"
#include "server/core/mutex.h"
#include "server/metrics/drift_metrics.h"
#include "server/service/auth.h"

namespace kldrift {

// The most batches an Ingest stream acknowledges in one response when the client marks them
// more_follows (the proto's promise to clients: at most 8).
inline constexpr size_t kMaxHeldAcks = 8;

// The generated KlDrift::CallbackService with Ingest on the raw callback API (ByteBuffer in and
// out): the same methods, in the same order, each on the callback API.
using KlDriftCallbackBase = v1::KlDrift::WithCallbackMethod_PutReference<
    v1::KlDrift::WithCallbackMethod_GetReference<v1::KlDrift::WithCallbackMethod_ListReferences<
        v1::KlDrift::WithCallbackMethod_DeleteReference<v1::KlDrift::WithRawCallbackMethod_Ingest<
            v1::KlDrift::WithCallbackMethod_GetDrift<v1::KlDrift::WithCallbackMethod_WatchDrift<
                v1::KlDrift::WithCallbackMethod_Backup<v1::KlDrift::WithCallbackMethod_ExportModel<
                    v1::KlDrift::WithCallbackMethod_ImportModel<v1::KlDrift::Service>>>>>>>>>>;

struct ServiceOptions {
  // Reports a WatchDrift client may fall behind by before the oldest are dropped.
  size_t max_queued_watch_reports = 1024;
  // Batch errors waiting to be written before an Ingest stream stops reading.
  size_t max_pending_batch_errors = 256;
  // Default and largest number of top bins in a GetDrift report.
  uint32_t default_top_bins = 5;
  uint32_t max_top_bins = 100;
  // Ingest and watch stream events are counted here (not owned; may be null).
  DriftMetrics* metrics = nullptr;
  // Checks every call's token (not owned; null: no authentication, e.g. on a loopback port).
  const TokenAuthorizer* authorizer = nullptr;
};

class KlDriftService final : public KlDriftCallbackBase {
 public:
  KlDriftService(DriftEngine* engine, ServiceOptions options = {});
  ~KlDriftService() override;

  grpc::ServerUnaryReactor* PutReference(grpc::CallbackServerContext* context,
                                         const v1::PutReferenceRequest* request,
                                         v1::PutReferenceResponse* response) override;
  grpc::ServerUnaryReactor* GetReference(grpc::CallbackServerContext* context,
                                         const v1::GetReferenceRequest* request,
                                         v1::Reference* response) override;
  grpc::ServerUnaryReactor* ListReferences(grpc::CallbackServerContext* context,
                                           const v1::ListReferencesRequest* request,
                                           v1::ListReferencesResponse* response) override;
  grpc::ServerUnaryReactor* DeleteReference(grpc::CallbackServerContext* context,
                                            const v1::DeleteReferenceRequest* request,
                                            v1::DeleteReferenceResponse* response) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Ingest(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* GetDrift(grpc::CallbackServerContext* context,
                                     const v1::GetDriftRequest* request,
                                     v1::GetDriftResponse* response) override;
  grpc::ServerWriteReactor<v1::DriftReport>* WatchDrift(
      grpc::CallbackServerContext* context, const v1::WatchDriftRequest* request) override;
  grpc::ServerUnaryReactor* Backup(grpc::CallbackServerContext* context,
                                   const v1::BackupRequest* request,
                                   v1::BackupResponse* response) override;
  grpc::ServerUnaryReactor* ExportModel(grpc::CallbackServerContext* context,
                                        const v1::ExportModelRequest* request,
                                        v1::ModelExport* response) override;
  grpc::ServerUnaryReactor* ImportModel(grpc::CallbackServerContext* context,
                                        const v1::ImportModelRequest* request,
                                        v1::ImportModelResponse* response) override;

  // Ends every open WatchDrift stream (status UNAVAILABLE, "server shutting down") and makes new
  // ones fail at once, so that grpc::Server::Shutdown() does not wait for them.
  void BeginShutdown();

  // Reports dropped because a watcher fell behind (for metrics and tests).
  uint64_t dropped_watch_reports() const { return dropped_watch_reports_.load(); }

  DriftMetrics* metrics() const { return options_.metrics; }

 private:
  class IngestReactor;
  class WatchReactor;

  // The authorizer's verdict on the call's token (see auth.h; OK without an authorizer), then
  // the shard key: a call whose x-kldrift-model metadata names another model than `model` is
  // INVALID_ARGUMENT, since a proxy routing by that header would have sent it to the wrong
  // replica.
  absl::Status Authorize(const grpc::CallbackServerContext* context, Role role,
                         const std::string& model) const;

  // Makes `reactor` the live Ingest stream of `client_id`; a previous one is taken over (ended
  // with ABORTED), since a client that reconnects may leave a stream the server still thinks open.
  void ClaimClientId(const std::string& client_id, IngestReactor* reactor);
  void ReleaseClientId(const std::string& client_id, IngestReactor* reactor);

  // False once shutting down.
  bool AddWatcher(WatchReactor* reactor);
  void RemoveWatcher(WatchReactor* reactor);

  DriftEngine* const engine_;
  const ServiceOptions options_;
  std::atomic<uint64_t> dropped_watch_reports_{0};

  Mutex clients_mutex_;
  absl::flat_hash_map<std::string, IngestReactor*> live_clients_ ABSL_GUARDED_BY(clients_mutex_);

  Mutex watchers_mutex_;
  std::set<WatchReactor*> watchers_ ABSL_GUARDED_BY(watchers_mutex_);
  bool shutting_down_ ABSL_GUARDED_BY(watchers_mutex_) = false;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_SERVICE_KLDRIFT_SERVICE_H_
