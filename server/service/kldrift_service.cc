#include "server/service/kldrift_service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/arena.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "server/service/ingest_decoder.h"
#include "server/service/proto_conversion.h"
#include "server/service/status_conversion.h"

namespace kldrift {
namespace {

// Runs `body` and finishes the unary call with its status, recorded in `metrics` (if not null)
// first, so that a client that has its answer finds the call counted.
template <typename Body>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, DriftMetrics* metrics,
                                RequestMethod method, Body body) {
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = body();
  if (metrics != nullptr) {
    metrics->RecordRequest(method, status.code(),
                           absl::FromChrono(std::chrono::steady_clock::now() - start));
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// The `authorization` metadata of a call ("" if absent).
std::string AuthorizationOf(const grpc::CallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  return it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

// The shard key's metadata (as client/kldrift_client.h's kModelMetadataKey).
constexpr char kModelMetadataKey[] = "x-kldrift-model";

// A ListReferences page holds at most this much (or one reference larger than it), so a page of
// large references fits a client's default 4 MiB receive limit.
constexpr size_t kListPageByteBudget = (size_t{4} << 20) - (size_t{64} << 10);

// INVALID_ARGUMENT if the call's x-kldrift-model metadata names another model than `model`
// (calls without the header, or about no single model, pass).
absl::Status CheckShardKey(const grpc::CallbackServerContext* context, const std::string& model) {
  if (model.empty()) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  auto it = metadata.find(kModelMetadataKey);
  if (it == metadata.end()) return absl::OkStatus();
  const absl::string_view shard_key(it->second.data(), it->second.size());
  if (shard_key == model) return absl::OkStatus();
  // Not echoed verbatim beyond a bound: metadata is the caller's and may be long.
  return absl::InvalidArgumentError(absl::StrCat(
      kModelMetadataKey, " metadata names model \"", absl::CEscape(shard_key.substr(0, 128)),
      "\" but the request is for model \"", model,
      "\"; a proxy sharding by that header would send it to another model's replica (one model "
      "per call, and per Ingest stream)"));
}

}  // namespace

absl::Status KlDriftService::Authorize(const grpc::CallbackServerContext* context, Role role,
                                       const std::string& model) const {
  if (options_.authorizer != nullptr) {
    if (absl::Status s =
            options_.authorizer->Authorize(AuthorizationOf(context), AccessRequest{role, model});
        !s.ok()) {
      return s;
    }
  }
  return CheckShardKey(context, model);
}

// One Ingest stream. See the class comment of KlDriftService for the flow control.
class KlDriftService::IngestReactor
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  IngestReactor(KlDriftService* service, grpc::CallbackServerContext* context)
      : service_(service), metrics_(service->metrics()), context_(context) {
    if (metrics_ != nullptr) metrics_->RecordIngestStreamOpened();
    // A stream without a valid token ends at once: its batches stay with the client, which keeps
    // them until it reconnects with a token that works.
    if (absl::Status s = service_->Authorize(context_, Role::kWriter, ""); !s.ok()) {
      EndStream(ToGrpcStatus(s));
      return;
    }
    // With tokens, each token's client ids are its own: the engine and the live-stream table see
    // "<tenant>:<client id>", so another tenant can neither take over this client's stream nor
    // make its batches look like duplicates.
    if (service_->options_.authorizer != nullptr) {
      tenant_prefix_ =
          absl::StrCat(service_->options_.authorizer->TenantOf(AuthorizationOf(context_)), ":");
    }
    StartNextRead();
  }

  void OnReadDone(bool ok) override {
    {
      MutexLock lock(&mutex_);
      if (!ok || taken_over_) {
        // After a takeover the batch just read is dropped unacknowledged: the client resends it
        // on its newer stream.
        reads_done_ = true;
        MaybeFinishLocked();
        return;
      }
    }
    const auto start = std::chrono::steady_clock::now();
    // kldrift_request_duration_seconds{method="Ingest"}: from here until the ack is queued.
    const auto record = [&](const absl::Status& result) {
      if (metrics_ == nullptr) return;
      metrics_->RecordRequest(RequestMethod::kIngest, result.code(),
                              absl::FromChrono(std::chrono::steady_clock::now() - start));
    };
    IngestBatch batch;
    bool more_follows = false;
    absl::Status conversion;
    if (!Decode(&batch, &more_follows, &conversion)) {
      // Not an IngestRequest at all: nothing in it can be acknowledged or named.
      const absl::Status bad = absl::InvalidArgumentError(
          "an Ingest message that is not an IngestRequest (protobuf parse failed); send "
          "kldrift.v1.IngestRequest messages");
      record(bad);
      EndStream(ToGrpcStatus(bad));
      return;
    }
    const uint64_t sequence = batch.sequence;
    absl::Status status;
    uint64_t acked = 0;
    if (!client_id_.empty() && batch.client_id != client_id_) {
      status = absl::InvalidArgumentError(
          absl::StrCat("client_id changed from \"", client_id_, "\" to \"", batch.client_id,
                       "\" within one Ingest stream; open a stream per client id"));
    } else if (sequence == 0) {
      status = absl::InvalidArgumentError("sequence numbers start at 1");
    } else if (sequence <= last_sequence_) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "sequence ", sequence, " after ", last_sequence_,
          " on the same stream; sequence numbers must increase (resend only after reconnecting)"));
    } else if (absl::Status id = ValidateName("client_id", batch.client_id, false); !id.ok()) {
      // Checked before the id claims its live-stream slot and names this stream: a refused id
      // holds neither (an empty one would never be released).
      status = id;
    } else if (absl::Status auth = service_->Authorize(context_, Role::kWriter, batch.model);
               !auth.ok()) {
      if (absl::IsUnauthenticated(auth)) {
        // The token was revoked (tokens file reloaded): end the stream, the batch unacknowledged.
        record(auth);
        EndStream(ToGrpcStatus(auth));
        return;
      }
      status = auth;  // PERMISSION_DENIED for this batch's model.
      acked = sequence;
    } else {
      const std::string engine_client_id = tenant_prefix_ + batch.client_id;
      if (client_id_.empty() && metrics_ != nullptr &&
          service_->engine_->KnowsClient(engine_client_id)) {
        metrics_->RecordIngestReconnect();
      }
      if (client_id_.empty()) service_->ClaimClientId(engine_client_id, this);
      client_id_ = batch.client_id;
      engine_client_id_ = engine_client_id;
      last_sequence_ = sequence;
      if (conversion.ok()) {
        batch.client_id = engine_client_id;
        const IngestResult result = service_->engine_->Ingest(std::move(batch));
        status = result.status;
        acked = result.acked_sequence;
        if (result.duplicate && metrics_ != nullptr) metrics_->RecordDuplicateBatch();
        if (absl::IsUnavailable(status) || absl::IsDataLoss(status)) {
          if (metrics_ != nullptr) metrics_->RecordBatchRejected(status.code());
          record(status);
          // The store failed: the batch was neither applied nor acknowledged. End the stream so
          // the client reconnects and resends it (a batch error would read as a rejection).
          EndStream(ToGrpcStatus(status));
          return;
        }
      } else {
        status = conversion;
        acked = sequence;  // Malformed: done with it, reported below.
      }
    }
    ReleaseBatchMemory();
    if (!status.ok() && metrics_ != nullptr) metrics_->RecordBatchRejected(status.code());
    record(status);
    MutexLock lock(&mutex_);
    pending_.set_acked_sequence(std::max({pending_.acked_sequence(), acked, highest_acked_}));
    highest_acked_ = pending_.acked_sequence();
    if (!status.ok()) {
      v1::BatchError* error = pending_.add_errors();
      error->set_sequence(sequence);
      const grpc::Status grpc_status = ToGrpcStatus(status);
      error->set_code(static_cast<int32_t>(grpc_status.error_code()));
      error->set_message(grpc_status.error_message());
    }
    has_pending_ = true;
    ++held_batches_;
    // Held while the client promises another batch at once and nothing needs saying now.
    hold_ack_ = more_follows && pending_.errors_size() == 0 && held_batches_ < kMaxHeldAcks;
    if (!writing_ && !hold_ack_) StartWriteLocked();
    if (static_cast<size_t>(pending_.errors_size()) < service_->options_.max_pending_batch_errors) {
      StartNextRead();
    } else {
      read_paused_ = true;  // Resumed when the errors have been written.
    }
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&mutex_);
    writing_ = false;
    if (ok && has_pending_ && !hold_ack_) StartWriteLocked();
    if (read_paused_ && !reads_done_) {
      read_paused_ = false;
      StartNextRead();
    }
    if (!ok) write_failed_ = true;
    MaybeFinishLocked();
  }

  void OnDone() override {
    if (!engine_client_id_.empty()) service_->ReleaseClientId(engine_client_id_, this);
    if (metrics_ != nullptr) metrics_->RecordIngestStreamClosed();
    delete this;
  }

  // A newer stream of the same client id took over: end this one with ABORTED. Its unacknowledged
  // batches are the client's to resend on the newer stream (de-duplication makes that safe).
  void TakeOver() {
    MutexLock lock(&mutex_);
    taken_over_ = true;
    if (end_status_.ok()) {
      end_status_ = grpc::Status(
          grpc::StatusCode::ABORTED,
          "a newer Ingest stream with this client id took over; one live stream per client id");
    }
    reads_done_ = true;
    MaybeFinishLocked();
  }

 private:
  // Ends the stream with `status` once its pending acknowledgement (if any) is written; the batch
  // being read is not acknowledged.
  void EndStream(const grpc::Status& status) {
    MutexLock lock(&mutex_);
    end_status_ = status;
    reads_done_ = true;
    MaybeFinishLocked();
  }

  void StartNextRead() { StartRead(&request_bytes_); }

  // Decodes the request just read into `batch` and its more_follows flag: by the IngestDecoder,
  // or, for what it declines, by protobuf into a message on the arena (so that a parse allocates
  // little and freeing it is one reset) and FromProto. `conversion` is FromProto's error if it had
  // one (the batch then holds only the request's client id, sequence and model). False if protobuf
  // cannot parse the bytes.
  bool Decode(IngestBatch* batch, bool* more_follows, absl::Status* conversion) {
    slices_.clear();
    if (request_bytes_.Dump(&slices_).ok()) {
      chunks_.clear();
      for (const grpc::Slice& slice : slices_) {
        chunks_.emplace_back(reinterpret_cast<const char*>(slice.begin()), slice.size());
      }
      if (decoder_.Decode(chunks_, batch, more_follows)) return true;
    }
    arena_used_ = true;
    v1::IngestRequest* request = google::protobuf::Arena::CreateMessage<v1::IngestRequest>(&arena_);
    grpc::ProtoBufferReader reader(&request_bytes_);
    if (!request->ParseFromZeroCopyStream(&reader)) return false;
    absl::StatusOr<IngestBatch> converted = FromProto(*request);
    if (converted.ok()) {
      *batch = *std::move(converted);
    } else {
      *batch = IngestBatch();
      batch->client_id = request->client_id();
      batch->sequence = request->sequence();
      batch->model = request->model();
      *conversion = converted.status();
    }
    *more_follows = request->more_follows();
    return true;
  }

  // Done with the batch just applied or rejected: frees what only a large or declined request
  // needed, and the request's bytes, so that an idle stream keeps no batch's memory.
  void ReleaseBatchMemory() {
    decoder_.ReleaseLargeBuffer();
    if (arena_used_) {
      arena_.Reset();
      arena_used_ = false;
    }
    chunks_.clear();
    slices_.clear();
    request_bytes_.Clear();
  }

  void StartWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (metrics_ != nullptr) metrics_->RecordAck();
    in_flight_.Clear();
    bool own_buffer;
    // Serializing a small message into a fresh buffer cannot fail.
    (void)grpc::SerializationTraits<v1::IngestResponse>::Serialize(pending_, &in_flight_,
                                                                   &own_buffer);
    pending_.Clear();
    has_pending_ = false;
    held_batches_ = 0;
    hold_ack_ = false;
    writing_ = true;
    StartWrite(&in_flight_);
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (finished_ || writing_ || !reads_done_) return;
    if (has_pending_ && !write_failed_) {
      // The client promised more and then ended the stream (or it was ended): no more will come.
      StartWriteLocked();
      return;
    }
    finished_ = true;
    Finish(end_status_);
  }

  KlDriftService* const service_;
  DriftMetrics* const metrics_;  // May be null.
  grpc::CallbackServerContext* const context_;
  // Touched only by OnReadDone, which gRPC never runs concurrently with itself (and by
  // StartNextRead before each read). A batch of 100 histograms of 64 bins is ~52 KB.
  grpc::ByteBuffer request_bytes_;
  std::vector<grpc::Slice> slices_;
  std::vector<absl::string_view> chunks_;
  IngestDecoder decoder_;
  google::protobuf::Arena arena_{IngestArenaOptions()};  // For requests the decoder declines.
  bool arena_used_ = false;
  std::string client_id_;         // As the client sent it.
  std::string engine_client_id_;  // With the tenant prefix: the engine's and live table's key.
  std::string tenant_prefix_;     // "<tenant>:" with tokens, else empty.
  uint64_t last_sequence_ = 0;

  Mutex mutex_;
  grpc::ByteBuffer in_flight_ ABSL_GUARDED_BY(mutex_);  // The IngestResponse being written.
  v1::IngestResponse pending_ ABSL_GUARDED_BY(mutex_);
  uint64_t highest_acked_ ABSL_GUARDED_BY(mutex_) = 0;
  bool has_pending_ ABSL_GUARDED_BY(mutex_) = false;
  // Batches pending_ acknowledges (since the last write started), and whether it is being held
  // for a batch the client said follows at once.
  size_t held_batches_ ABSL_GUARDED_BY(mutex_) = 0;
  bool hold_ack_ ABSL_GUARDED_BY(mutex_) = false;
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mutex_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mutex_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  bool taken_over_ ABSL_GUARDED_BY(mutex_) = false;
  // The stream's final status: OK unless the store failed or the token was refused.
  grpc::Status end_status_ ABSL_GUARDED_BY(mutex_);
};

// One WatchDrift stream: engine reports are queued and written one at a time.
class KlDriftService::WatchReactor : public grpc::ServerWriteReactor<v1::DriftReport> {
 public:
  WatchReactor(KlDriftService* service, grpc::CallbackServerContext* context,
               const v1::WatchDriftRequest& request)
      : service_(service) {
    if (service_->metrics() != nullptr) service_->metrics()->RecordWatchStreamOpened();
    WatchFilter filter;
    filter.model = request.stream().model();
    filter.model_version = request.stream().model_version();
    filter.signal = request.stream().signal();
    filter.state_changes_only = request.state_changes_only();
    absl::Status status = service_->Authorize(context, Role::kReader, filter.model);
    if (status.ok()) status = ValidateName("model", filter.model, false);
    if (status.ok() && !filter.signal.empty()) {
      status = ValidateStreamKey(StreamKey{filter.model, filter.model_version, filter.signal});
    } else if (status.ok() && !filter.model_version.empty()) {
      status = absl::InvalidArgumentError(
          "model_version without signal: watch one stream (model, version, signal) or a model");
    }
    if (!status.ok()) {
      MutexLock lock(&mutex_);
      FinishLocked(ToGrpcStatus(status));
      return;
    }
    if (!service_->AddWatcher(this)) {
      MutexLock lock(&mutex_);
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down"));
      return;
    }
    watch_id_ =
        service_->engine_->Watch(filter, [this](const WindowReport& report) { Enqueue(report); });
  }

  // Finishes the stream once the write in flight (if any) completes.
  void Stop(grpc::Status status) {
    MutexLock lock(&mutex_);
    if (writing_) {
      stop_status_ = std::move(status);
      stop_requested_ = true;
    } else {
      FinishLocked(status);
    }
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(&mutex_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status::CANCELLED);
      return;
    }
    if (stop_requested_) {
      FinishLocked(stop_status_);
      return;
    }
    if (!queue_.empty() && !finished_) {
      current_ = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
      StartWrite(&current_);
    }
  }

  void OnCancel() override {
    MutexLock lock(&mutex_);
    if (!writing_) FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    // After Unwatch returns no engine callback is running or will run, so deleting is safe.
    if (watch_id_ != 0) service_->engine_->Unwatch(watch_id_);
    service_->RemoveWatcher(this);
    if (service_->metrics() != nullptr) service_->metrics()->RecordWatchStreamClosed();
    delete this;
  }

 private:
  void Enqueue(const WindowReport& report) {
    MutexLock lock(&mutex_);
    if (finished_ || stop_requested_) return;
    if (!writing_) {
      current_.Clear();
      ToProto(report, &current_);
      writing_ = true;
      StartWrite(&current_);
      return;
    }
    if (queue_.size() >= service_->options_.max_queued_watch_reports) {
      queue_.pop_front();
      service_->dropped_watch_reports_.fetch_add(1);
    }
    queue_.emplace_back();
    ToProto(report, &queue_.back());
  }

  void FinishLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (finished_) return;
    finished_ = true;
    Finish(std::move(status));
  }

  KlDriftService* const service_;
  uint64_t watch_id_ = 0;
  Mutex mutex_;
  v1::DriftReport current_ ABSL_GUARDED_BY(mutex_);
  std::deque<v1::DriftReport> queue_ ABSL_GUARDED_BY(mutex_);
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  bool stop_requested_ ABSL_GUARDED_BY(mutex_) = false;
  grpc::Status stop_status_ ABSL_GUARDED_BY(mutex_);
};

KlDriftService::KlDriftService(DriftEngine* engine, ServiceOptions options)
    : engine_(engine), options_(options) {}

KlDriftService::~KlDriftService() = default;

bool KlDriftService::AddWatcher(WatchReactor* reactor) {
  MutexLock lock(&watchers_mutex_);
  if (shutting_down_) return false;
  watchers_.insert(reactor);
  return true;
}

void KlDriftService::RemoveWatcher(WatchReactor* reactor) {
  MutexLock lock(&watchers_mutex_);
  watchers_.erase(reactor);
}

void KlDriftService::ClaimClientId(const std::string& client_id, IngestReactor* reactor) {
  MutexLock lock(&clients_mutex_);
  IngestReactor*& holder = live_clients_[client_id];
  // The previous holder is alive while it is in the map: it leaves in OnDone, under this lock.
  if (holder != nullptr && holder != reactor) holder->TakeOver();
  holder = reactor;
}

void KlDriftService::ReleaseClientId(const std::string& client_id, IngestReactor* reactor) {
  MutexLock lock(&clients_mutex_);
  auto it = live_clients_.find(client_id);
  if (it != live_clients_.end() && it->second == reactor) live_clients_.erase(it);
}

void KlDriftService::BeginShutdown() {
  MutexLock lock(&watchers_mutex_);
  shutting_down_ = true;
  // OnDone (which removes a watcher) runs on a gRPC executor thread, never inside Finish().
  for (WatchReactor* reactor : watchers_) {
    reactor->Stop(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down"));
  }
}

grpc::ServerUnaryReactor* KlDriftService::PutReference(grpc::CallbackServerContext* context,
                                                       const v1::PutReferenceRequest* request,
                                                       v1::PutReferenceResponse* response) {
  return Unary(context, metrics(), RequestMethod::kPutReference, [&]() -> absl::Status {
    if (absl::Status s = Authorize(context, Role::kWriter, request->stream().model()); !s.ok()) {
      return s;
    }
    absl::StatusOr<ReferenceSpec> spec = FromProto(*request);
    if (!spec.ok()) return spec.status();
    absl::StatusOr<std::shared_ptr<const Reference>> ref = engine_->PutReference(*spec);
    if (!ref.ok()) return ref.status();
    response->set_version((*ref)->version);
    // BASIC unless asked: echoing a large reference's bins could exceed the caller's receive
    // limit and turn a stored put into an error the caller would retry as a new version.
    ToProto(**ref, response->mutable_reference(),
            request->view() == v1::REFERENCE_VIEW_FULL ? v1::REFERENCE_VIEW_FULL
                                                       : v1::REFERENCE_VIEW_BASIC);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* KlDriftService::GetReference(grpc::CallbackServerContext* context,
                                                       const v1::GetReferenceRequest* request,
                                                       v1::Reference* response) {
  return Unary(context, metrics(), RequestMethod::kGetReference, [&]() -> absl::Status {
    if (absl::Status s = Authorize(context, Role::kReader, request->stream().model()); !s.ok()) {
      return s;
    }
    absl::StatusOr<std::shared_ptr<const Reference>> ref =
        engine_->GetReference(FromProto(request->stream()), request->version());
    if (!ref.ok()) return ref.status();
    ToProto(**ref, response,
            request->view() == v1::REFERENCE_VIEW_BASIC ? v1::REFERENCE_VIEW_BASIC
                                                        : v1::REFERENCE_VIEW_FULL);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* KlDriftService::ListReferences(grpc::CallbackServerContext* context,
                                                         const v1::ListReferencesRequest* request,
                                                         v1::ListReferencesResponse* response) {
  return Unary(context, metrics(), RequestMethod::kListReferences, [&]() -> absl::Status {
    if (absl::Status s = Authorize(context, Role::kReader, request->model()); !s.ok()) return s;
    // A token scoped to some models lists only those; the engine skips the others before it
    // cuts the page, so the page token never names a hidden stream.
    std::function<bool(const std::string&)> visible;
    if (options_.authorizer != nullptr) {
      visible = [readable = options_.authorizer->ReadableModels(AuthorizationOf(context))](
                    const std::string& model) { return readable(model); };
    }
    absl::StatusOr<DriftEngine::ReferencePage> page = engine_->ListReferences(
        request->model(), request->page_size(), request->page_token(), visible);
    if (!page.ok()) return page.status();
    const v1::ReferenceView view = request->view() == v1::REFERENCE_VIEW_BASIC
                                       ? v1::REFERENCE_VIEW_BASIC
                                       : v1::REFERENCE_VIEW_FULL;
    response->set_next_page_token(page->next_page_token);
    size_t bytes = 0;
    for (size_t i = 0; i < page->references.size(); ++i) {
      v1::Reference* out = response->add_references();
      ToProto(*page->references[i], out, view);
      bytes += out->ByteSizeLong() + 8;  // + field tag and length
      if (bytes > kListPageByteBudget && i > 0) {
        // Cut before this one; the next page starts after the last reference sent.
        response->mutable_references()->RemoveLast();
        response->set_next_page_token(DriftEngine::PageTokenAfter(page->references[i - 1]->stream));
        break;
      }
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* KlDriftService::DeleteReference(grpc::CallbackServerContext* context,
                                                          const v1::DeleteReferenceRequest* request,
                                                          v1::DeleteReferenceResponse* response) {
  return Unary(context, metrics(), RequestMethod::kDeleteReference, [&]() -> absl::Status {
    if (absl::Status s = Authorize(context, Role::kWriter, request->stream().model()); !s.ok()) {
      return s;
    }
    absl::StatusOr<uint64_t> deleted = engine_->DeleteReference(FromProto(request->stream()));
    if (!deleted.ok()) return deleted.status();
    response->set_versions_deleted(*deleted);
    return absl::OkStatus();
  });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* KlDriftService::Ingest(
    grpc::CallbackServerContext* context) {
  return new IngestReactor(this, context);
}

grpc::ServerUnaryReactor* KlDriftService::GetDrift(grpc::CallbackServerContext* context,
                                                   const v1::GetDriftRequest* request,
                                                   v1::GetDriftResponse* response) {
  return Unary(context, metrics(), RequestMethod::kGetDrift, [&]() -> absl::Status {
    if (absl::Status s = Authorize(context, Role::kReader, request->stream().model()); !s.ok()) {
      return s;
    }
    std::optional<absl::Duration> window;
    if (request->has_window()) {
      absl::StatusOr<absl::Duration> w = FromProto(request->window(), "window");
      if (!w.ok()) return w.status();
      window = *w;
    }
    uint32_t top_bins = request->top_bins() == 0 ? options_.default_top_bins : request->top_bins();
    if (top_bins > options_.max_top_bins) {
      return absl::InvalidArgumentError(
          absl::StrCat("top_bins = ", top_bins, " exceeds the limit of ", options_.max_top_bins));
    }
    absl::StatusOr<std::vector<WindowReport>> reports =
        engine_->GetDrift(FromProto(request->stream()), window, top_bins);
    if (!reports.ok()) return reports.status();
    for (const WindowReport& report : *reports) ToProto(report, response->add_reports());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* KlDriftService::Backup(grpc::CallbackServerContext* context,
                                                 const v1::BackupRequest* request,
                                                 v1::BackupResponse* response) {
  return Unary(context, metrics(), RequestMethod::kBackup, [&]() -> absl::Status {
    if (absl::Status s = Authorize(context, Role::kAdmin, ""); !s.ok()) return s;
    absl::StatusOr<uint64_t> bytes = engine_->Backup(request->directory());
    if (!bytes.ok()) return bytes.status();
    response->set_directory(request->directory());
    response->set_bytes(*bytes);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::DriftReport>* KlDriftService::WatchDrift(
    grpc::CallbackServerContext* context, const v1::WatchDriftRequest* request) {
  return new WatchReactor(this, context, *request);
}

grpc::ServerUnaryReactor* KlDriftService::ExportModel(grpc::CallbackServerContext* context,
                                                      const v1::ExportModelRequest* request,
                                                      v1::ModelExport* response) {
  return Unary(context, metrics(), RequestMethod::kExportModel, [&]() -> absl::Status {
    if (absl::Status s = Authorize(context, Role::kAdmin, request->model()); !s.ok()) return s;
    const absl::Time now = absl::Now();
    absl::StatusOr<std::vector<StreamExport>> streams = engine_->ExportModel(request->model());
    if (!streams.ok()) return streams.status();
    response->set_model(request->model());
    response->mutable_exported_at()->set_seconds(absl::ToUnixSeconds(now));
    for (const StreamExport& stream : *streams) ToProto(stream, response->add_streams());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* KlDriftService::ImportModel(grpc::CallbackServerContext* context,
                                                      const v1::ImportModelRequest* request,
                                                      v1::ImportModelResponse* response) {
  return Unary(context, metrics(), RequestMethod::kImportModel, [&]() -> absl::Status {
    const std::string& model = request->model_export().model();
    if (absl::Status s = Authorize(context, Role::kAdmin, model); !s.ok()) return s;
    std::vector<StreamExport> streams;
    streams.reserve(request->model_export().streams_size());
    for (const v1::StreamExport& stream : request->model_export().streams()) {
      absl::StatusOr<StreamExport> converted =
          FromProto(stream, engine_->options().reference_limits);
      if (!converted.ok()) return converted.status();
      streams.push_back(*std::move(converted));
    }
    absl::StatusOr<size_t> installed =
        engine_->ImportModel(model, std::move(streams), request->replace(), request->append());
    if (!installed.ok()) return installed.status();
    response->set_streams(static_cast<uint32_t>(*installed));
    return absl::OkStatus();
  });
}

}  // namespace kldrift
