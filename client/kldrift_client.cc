#include "client/kldrift_client.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/client_interceptor.h"
#include "server/core/stream_key.h"

namespace kldrift {
namespace {

using client_internal::BatchQueue;
using client_internal::PendingBatch;
using client_internal::ReferenceBins;
using client_internal::StreamAccumulator;
using client_internal::StreamDelta;

// The channel's own reconnection backoff, kept in line with the Recorder's so that a channel does
// not sit out a long gRPC default backoff (up to 2 minutes) after an outage.
constexpr absl::Duration kChannelInitialReconnectBackoff = absl::Milliseconds(100);
constexpr absl::Duration kChannelMaxReconnectBackoff = absl::Seconds(5);
// A server that keeps handing out page tokens is broken; stop rather than loop forever.
constexpr int kMaxListPages = 100000;
// ImportModel sends an export in requests of at most about this much.
constexpr size_t kImportPartBytes = size_t{8} << 20;
// Once Close's timeout has passed, how often it cancels the background thread's call in progress.
constexpr absl::Duration kCancelRetryInterval = absl::Milliseconds(50);

std::string StatusText(const absl::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
}

// Adds `authorization: Bearer <token>` to every call's initial metadata.
class TokenInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(const std::string* authorization) : authorization_(authorization) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", *authorization_});
    }
    methods->Proceed();
  }

 private:
  const std::string* const authorization_;  // Owned by the factory, which outlives the channel.
};

class TokenInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(const std::string& token)
      : authorization_(absl::StrCat("Bearer ", token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* /*info*/) override {
    return new TokenInterceptor(&authorization_);
  }

 private:
  const std::string authorization_;
};

}  // namespace

std::shared_ptr<grpc::Channel> CreateChannel(const ChannelOptions& options) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(kChannelInitialReconnectBackoff)));
  // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is left at gRPC's default: it is also the shortest time a
  // connection attempt may take (MIN_CONNECT_TIMEOUT, 20 s), and at 100 ms a slow server or a
  // distant one (TLS handshakes over ~50 ms round trips) would never finish connecting.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(absl::ToInt64Milliseconds(kChannelMaxReconnectBackoff)));
  args.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.use_tls) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = options.tls_root_certs;
    tls.pem_cert_chain = options.tls_client_cert;
    tls.pem_private_key = options.tls_client_key;
    credentials = grpc::SslCredentials(tls);
  }
  if (options.token.empty()) return grpc::CreateCustomChannel(options.target, credentials, args);
  // An interceptor rather than call credentials: those are refused on plaintext channels, and a
  // token over a loopback plaintext port is legitimate.
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<TokenInterceptorFactory>(options.token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(options.target, credentials, args,
                                                                 std::move(interceptors));
}

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

void SetShardKey(grpc::ClientContext* context, absl::string_view model) {
  if (!model.empty()) context->AddMetadata(kModelMetadataKey, std::string(model));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// --- KlDriftClient ---------------------------------------------------------------------------

KlDriftClient::KlDriftClient(std::shared_ptr<grpc::Channel> channel, absl::Duration deadline)
    : stub_(v1::KlDrift::NewStub(std::move(channel))), deadline_(deadline) {}

absl::StatusOr<v1::PutReferenceResponse> KlDriftClient::PutReference(
    const v1::PutReferenceRequest& request) const {
  grpc::ClientContext context;
  SetDeadline(&context, deadline_);
  SetShardKey(&context, request.stream().model());
  v1::PutReferenceResponse response;
  absl::Status status = FromGrpcStatus(stub_->PutReference(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<v1::Reference> KlDriftClient::GetReference(const v1::StreamId& stream,
                                                          uint64_t version) const {
  grpc::ClientContext context;
  SetDeadline(&context, deadline_);
  SetShardKey(&context, stream.model());
  v1::GetReferenceRequest request;
  *request.mutable_stream() = stream;
  request.set_version(version);
  v1::Reference response;
  absl::Status status = FromGrpcStatus(stub_->GetReference(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<std::vector<v1::Reference>> KlDriftClient::ListReferences(
    absl::string_view model) const {
  std::vector<v1::Reference> references;
  v1::ListReferencesRequest request;
  request.set_model(std::string(model));
  for (int page = 0; page < kMaxListPages; ++page) {
    grpc::ClientContext context;
    SetDeadline(&context, deadline_);
    SetShardKey(&context, model);
    v1::ListReferencesResponse response;
    absl::Status status = FromGrpcStatus(stub_->ListReferences(&context, request, &response));
    if (!status.ok()) return status;
    for (v1::Reference& reference : *response.mutable_references()) {
      references.push_back(std::move(reference));
    }
    if (response.next_page_token().empty()) return references;
    request.set_page_token(response.next_page_token());
  }
  return absl::InternalError(
      absl::StrCat("ListReferences returned more than ", kMaxListPages, " pages"));
}

absl::StatusOr<uint64_t> KlDriftClient::DeleteReference(const v1::StreamId& stream) const {
  grpc::ClientContext context;
  SetDeadline(&context, deadline_);
  SetShardKey(&context, stream.model());
  v1::DeleteReferenceRequest request;
  *request.mutable_stream() = stream;
  v1::DeleteReferenceResponse response;
  absl::Status status = FromGrpcStatus(stub_->DeleteReference(&context, request, &response));
  if (!status.ok()) return status;
  return response.versions_deleted();
}

absl::StatusOr<uint64_t> KlDriftClient::Backup(const std::string& directory) const {
  grpc::ClientContext context;
  SetDeadline(&context, deadline_);
  v1::BackupRequest request;
  request.set_directory(directory);
  v1::BackupResponse response;
  absl::Status status = FromGrpcStatus(stub_->Backup(&context, request, &response));
  if (!status.ok()) return status;
  return response.bytes();
}

absl::StatusOr<v1::ModelExport> KlDriftClient::ExportModel(absl::string_view model) const {
  grpc::ClientContext context;
  SetDeadline(&context, deadline_);
  SetShardKey(&context, model);
  v1::ExportModelRequest request;
  request.set_model(std::string(model));
  v1::ModelExport response;
  absl::Status status = FromGrpcStatus(stub_->ExportModel(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::StatusOr<uint32_t> KlDriftClient::ImportModel(const v1::ModelExport& model_export,
                                                    bool replace) const {
  // In parts under kImportPartBytes, so a large model fits the server's receive limit (16 MiB by
  // default; a 64-bin stream with full windows is ~20 KB). The first part replaces (if asked), the
  // others append.
  uint32_t installed = 0;
  v1::ImportModelRequest request;
  auto send = [&]() -> absl::Status {
    grpc::ClientContext context;
    SetDeadline(&context, deadline_);
    SetShardKey(&context, model_export.model());
    v1::ImportModelResponse response;
    absl::Status status = FromGrpcStatus(stub_->ImportModel(&context, request, &response));
    if (!status.ok()) {
      if (installed == 0) return status;
      return absl::Status(
          status.code(),
          absl::StrCat("after ", installed, " streams were imported: ", status.message()));
    }
    installed += response.streams();
    request.set_replace(false);
    request.set_append(true);
    request.mutable_model_export()->clear_streams();
    return absl::OkStatus();
  };
  request.set_replace(replace);
  request.mutable_model_export()->set_model(model_export.model());
  *request.mutable_model_export()->mutable_exported_at() = model_export.exported_at();
  size_t bytes = 0;
  for (const v1::StreamExport& stream : model_export.streams()) {
    const size_t size = stream.ByteSizeLong();
    if (bytes > 0 && bytes + size > kImportPartBytes) {
      if (absl::Status s = send(); !s.ok()) return s;
      bytes = 0;
    }
    *request.mutable_model_export()->add_streams() = stream;
    bytes += size;
  }
  if (absl::Status s = send(); !s.ok()) return s;
  return installed;
}

absl::StatusOr<v1::GetDriftResponse> KlDriftClient::GetDrift(
    const v1::GetDriftRequest& request) const {
  grpc::ClientContext context;
  SetDeadline(&context, deadline_);
  SetShardKey(&context, request.stream().model());
  v1::GetDriftResponse response;
  absl::Status status = FromGrpcStatus(stub_->GetDrift(&context, request, &response));
  if (!status.ok()) return status;
  return response;
}

absl::Status KlDriftClient::IngestOnce(const v1::IngestRequest& request) const {
  grpc::ClientContext context;
  SetDeadline(&context, deadline_);
  SetShardKey(&context, request.model());
  std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestResponse>> stream =
      stub_->Ingest(&context);
  if (stream->Write(request)) stream->WritesDone();
  bool acked = false;
  absl::Status batch_status;
  v1::IngestResponse response;
  while (stream->Read(&response)) {
    for (const v1::BatchError& error : response.errors()) {
      if (error.sequence() == request.sequence()) {
        batch_status = absl::Status(static_cast<absl::StatusCode>(error.code()), error.message());
      }
    }
    if (response.acked_sequence() >= request.sequence()) acked = true;
  }
  const absl::Status stream_status = FromGrpcStatus(stream->Finish());
  if (acked) return batch_status;
  if (!stream_status.ok()) return stream_status;
  return absl::UnavailableError(
      "the server ended the Ingest stream without acknowledging the batch");
}

// --- Recorder --------------------------------------------------------------------------------

struct Recorder::StreamState {
  StreamState(std::string signal, size_t max_buffered)
      : accumulator(std::move(signal), max_buffered) {}

  StreamAccumulator accumulator;
  // When to call GetReference next, while the stream needs bins.
  absl::Time next_fetch = absl::InfinitePast();
  // The latest GetReference outcome.
  absl::Status fetch_status;
};

// One Ingest stream. The background thread writes; `reader` reads acknowledgements.
struct Recorder::Connection {
  uint64_t id = 0;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::IngestRequest, v1::IngestResponse>> stream;
  std::thread reader;
  bool reader_done = false;  // Guarded by the Recorder's mutex_.
};

absl::StatusOr<std::unique_ptr<Recorder>> Recorder::Create(std::shared_ptr<grpc::Channel> channel,
                                                           RecorderOptions options) {
  if (channel == nullptr) return absl::InvalidArgumentError("Recorder: no channel");
  if (absl::Status s = ValidateName("model", options.model, false); !s.ok()) return s;
  if (absl::Status s = ValidateName("model_version", options.model_version, true); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateName("client_id", options.client_id, false); !s.ok()) return s;
  const std::pair<const char*, absl::Duration> durations[] = {
      {"flush_interval", options.flush_interval},
      {"rpc_deadline", options.rpc_deadline},
      {"ack_timeout", options.ack_timeout},
      {"initial_backoff", options.initial_backoff},
      {"max_backoff", options.max_backoff},
      {"reference_retry_interval", options.reference_retry_interval},
  };
  for (const auto& [name, value] : durations) {
    if (value <= absl::ZeroDuration() || value == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Recorder: ", name, " = ", absl::FormatDuration(value), " must be positive and finite"));
    }
  }
  if (options.initial_backoff > options.max_backoff) {
    return absl::InvalidArgumentError("Recorder: initial_backoff exceeds max_backoff");
  }
  const std::pair<const char*, size_t> limits[] = {
      {"max_pending_batches", options.max_pending_batches},
      {"max_streams", options.max_streams},
      {"max_buffered_per_stream", options.max_buffered_per_stream},
      {"max_batch_numbers", options.max_batch_numbers},
  };
  for (const auto& [name, value] : limits) {
    if (value == 0) return absl::InvalidArgumentError(absl::StrCat("Recorder: ", name, " is 0"));
  }
  return std::unique_ptr<Recorder>(new Recorder(std::move(channel), std::move(options)));
}

Recorder::Recorder(std::shared_ptr<grpc::Channel> channel, RecorderOptions options)
    : options_(std::move(options)),
      stub_(v1::KlDrift::NewStub(std::move(channel))),
      queue_(options_.max_pending_batches),
      next_sequence_(options_.first_sequence != 0
                         ? options_.first_sequence
                         : static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()))),
      backoff_(options_.initial_backoff) {
  background_ = std::thread([this] { Run(); });
}

Recorder::~Recorder() { Close(options_.rpc_deadline).IgnoreError(); }

// --- Recording (any thread) ---

Recorder::StreamState* Recorder::StreamLocked(absl::string_view signal, uint64_t observations) {
  if (closing_) {
    DropLocked(observations, "the Recorder is closed");
    return nullptr;
  }
  auto it = streams_.find(signal);
  if (it != streams_.end()) return it->second.get();
  if (absl::Status s = ValidateName("signal", signal, false); !s.ok()) {
    DropLocked(observations, std::string(s.message()));
    return nullptr;
  }
  if (streams_.size() >= options_.max_streams) {
    DropLocked(observations, absl::StrCat("signal ", signal,
                                          " would exceed max_streams = ", options_.max_streams));
    return nullptr;
  }
  auto state = std::make_unique<StreamState>(std::string(signal), options_.max_buffered_per_stream);
  StreamState* stream = state.get();
  streams_.emplace(std::string(signal), std::move(state));
  changed_.SignalAll();  // Its reference is to be fetched now.
  return stream;
}

void Recorder::DropLocked(uint64_t observations, std::string reason) {
  if (observations == 0) return;
  dropped_outside_streams_ += observations;
  ++failure_count_;
  failure_status_ = absl::DataLossError(reason);
  stats_.last_error = std::move(reason);
}

void Recorder::NoteStreamDropsLocked(const StreamState& stream, uint64_t dropped_before) {
  if (stream.accumulator.dropped_observations() == dropped_before) return;
  ++failure_count_;
  failure_status_ = absl::DataLossError(stream.accumulator.last_drop_reason());
  stats_.last_error = stream.accumulator.last_drop_reason();
}

void Recorder::Record(absl::string_view signal, double value) {
  MutexLock lock(&mutex_);
  ++stats_.observations_recorded;
  StreamState* stream = StreamLocked(signal);
  if (stream == nullptr) return;
  const uint64_t dropped = stream->accumulator.dropped_observations();
  stream->accumulator.AddValue(value);
  NoteStreamDropsLocked(*stream, dropped);
}

void Recorder::Record(absl::string_view signal, absl::Span<const double> values) {
  if (values.empty()) return;
  MutexLock lock(&mutex_);
  stats_.observations_recorded += values.size();
  StreamState* stream = StreamLocked(signal, values.size());
  if (stream == nullptr) return;
  const uint64_t dropped = stream->accumulator.dropped_observations();
  // The accumulator bins its buffered values with the vector kernel every few hundred values.
  for (double value : values) stream->accumulator.AddValue(value);
  NoteStreamDropsLocked(*stream, dropped);
}

void Recorder::RecordLabel(absl::string_view signal, absl::string_view label) {
  MutexLock lock(&mutex_);
  ++stats_.observations_recorded;
  StreamState* stream = StreamLocked(signal);
  if (stream == nullptr) return;
  const uint64_t dropped = stream->accumulator.dropped_observations();
  stream->accumulator.AddLabel(label);
  NoteStreamDropsLocked(*stream, dropped);
}

void Recorder::RecordProbabilities(absl::string_view signal,
                                   absl::Span<const double> probabilities) {
  MutexLock lock(&mutex_);
  ++stats_.observations_recorded;
  StreamState* stream = StreamLocked(signal);
  if (stream == nullptr) return;
  const uint64_t dropped = stream->accumulator.dropped_observations();
  stream->accumulator.AddProbabilities(probabilities);
  NoteStreamDropsLocked(*stream, dropped);
}

uint64_t Recorder::DroppedObservationsLocked() const {
  uint64_t dropped = dropped_outside_streams_;
  for (const auto& [signal, stream] : streams_)
    dropped += stream->accumulator.dropped_observations();
  return dropped;
}

RecorderStats Recorder::Stats() const {
  MutexLock lock(&mutex_);
  RecorderStats stats = stats_;
  stats.observations_dropped = DroppedObservationsLocked();
  stats.observations_waiting = 0;
  for (const auto& [signal, stream] : streams_) {
    stats.observations_waiting += stream->accumulator.waiting_observations();
  }
  stats.pending_batches = queue_.size();
  return stats;
}

// --- Flush and Close (any thread) ---

absl::Status Recorder::FlushOutcomeLocked(uint64_t failures_before) const {
  if (failure_count_ != failures_before) return failure_status_;
  for (const auto& [signal, stream] : streams_) {
    const uint64_t waiting = stream->accumulator.waiting_observations();
    if (waiting > 0 && !stream->fetch_status.ok()) {
      return absl::Status(
          stream->fetch_status.code(),
          absl::StrCat("stream ", signal, ": ", waiting,
                       " observations wait for its reference: ", stream->fetch_status.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status Recorder::Flush(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  MutexLock lock(&mutex_);
  if (closing_) return absl::FailedPreconditionError("the Recorder is closed");
  const uint64_t failures_before = failure_count_;
  // A round cuts everything recorded so far and waits for its acknowledgement. Deltas the server
  // rejected because a reference changed come back to their streams; another round sends them.
  while (true) {
    const uint64_t requeues_before = requeue_count_;
    const uint64_t round = ++flush_rounds_requested_;
    changed_.SignalAll();
    while (flush_rounds_done_ < round) {
      if (background_done_) return absl::FailedPreconditionError("the Recorder closed");
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("Flush: the batches were not cut within ", absl::FormatDuration(timeout),
                         stats_.last_error.empty() ? "" : "; last error: ", stats_.last_error));
      }
      changed_.WaitWithDeadline(&mutex_, deadline);
    }
    const uint64_t target = flush_target_;
    while (queue_.oldest() != nullptr && queue_.oldest()->sequence <= target) {
      if (background_done_) return absl::FailedPreconditionError("the Recorder closed");
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("Flush: ", queue_.size(), " batches not acknowledged within ",
                         absl::FormatDuration(timeout), "; they stay queued for resending",
                         stats_.last_error.empty() ? "" : "; last error: ", stats_.last_error));
      }
      changed_.WaitWithDeadline(&mutex_, deadline);
    }
    if (requeue_count_ == requeues_before) break;
  }
  return FlushOutcomeLocked(failures_before);
}

absl::Status Recorder::Close(absl::Duration timeout) {
  {
    MutexLock lock(&mutex_);
    if (closing_) {
      // Another caller closes; wait for it.
      while (!closed_) changed_.Wait(&mutex_);
      return close_status_;
    }
    closing_ = true;
    close_deadline_ = absl::Now() + timeout;
    close_status_ = absl::OkStatus();
    const uint64_t failures_before = failure_count_;
    changed_.SignalAll();
    while (!background_done_) {
      const absl::Time now = absl::Now();
      if (now >= close_deadline_) {
        // The background thread may be blocked in a call: cancel it (again, should it have
        // started another meanwhile), and it exits promptly.
        if (stream_context_ != nullptr) stream_context_->TryCancel();
        if (unary_context_ != nullptr) unary_context_->TryCancel();
        changed_.WaitWithDeadline(&mutex_, now + kCancelRetryInterval);
      } else {
        changed_.WaitWithDeadline(&mutex_, close_deadline_);
      }
    }
    close_status_ = FlushOutcomeLocked(failures_before);
  }
  background_.join();
  MutexLock lock(&mutex_);
  closed_ = true;
  changed_.SignalAll();
  return close_status_;
}

// --- The background thread ---

bool Recorder::HasUnsentDataLocked() const {
  if (!queue_.empty()) return true;
  for (const auto& [signal, stream] : streams_) {
    if (stream->accumulator.HasDelta()) return true;
    // Observations waiting for a reference that may still come.
    if (stream->accumulator.waiting_observations() > 0 && stream->fetch_status.ok()) return true;
  }
  return false;
}

bool Recorder::WorkReadyLocked(const Connection* connection) const {
  if (flush_rounds_requested_ > flush_rounds_done_) return true;
  if (connection != nullptr && connection_broken_) return true;
  if (closing_) {
    if (!HasUnsentDataLocked()) return true;  // Time to stop.
    for (const auto& [signal, stream] : streams_) {
      if (stream->accumulator.HasDelta()) return true;
    }
  }
  return false;
}

absl::Time Recorder::NextWakeLocked(const Connection* connection, absl::Time next_flush,
                                    absl::Time next_connect) const {
  absl::Time wake = next_flush;
  if (closing_) wake = std::min(wake, close_deadline_);
  for (const auto& [signal, stream] : streams_) {
    if (stream->accumulator.needs_bins()) wake = std::min(wake, stream->next_fetch);
  }
  if (connection == nullptr && !queue_.empty()) wake = std::min(wake, next_connect);
  const PendingBatch* oldest = queue_.oldest();
  if (connection != nullptr && oldest != nullptr &&
      oldest->written_on_connection == connection->id) {
    wake = std::min(wake, oldest->written_at + options_.ack_timeout);
  }
  return wake;
}

void Recorder::Run() {
  std::unique_ptr<Connection> connection;
  absl::Time next_flush = absl::Now() + options_.flush_interval;
  absl::Time next_connect = absl::InfinitePast();
  bool connected_before = false;
  bool fetched_for_close = false;
  while (true) {
    bool broken = false;
    // Flush rounds requested before this iteration's fetches: cutting now serves them, since
    // every stream they cover has had its reference fetched.
    uint64_t rounds_requested = 0;
    bool force_fetch = false;
    {
      MutexLock lock(&mutex_);
      if (!WorkReadyLocked(connection.get())) {
        changed_.WaitWithDeadline(&mutex_,
                                  NextWakeLocked(connection.get(), next_flush, next_connect));
      }
      broken = connection != nullptr && connection_broken_;
      rounds_requested = flush_rounds_requested_;
      // Flush and Close give streams still waiting for a reference one more try each.
      force_fetch = rounds_requested > flush_rounds_done_ || (closing_ && !fetched_for_close);
      fetched_for_close = closing_;
    }

    // 1. A failed stream: collect its status and schedule the reconnection.
    if (broken) {
      const absl::Status status = TearDown(std::move(connection), /*graceful=*/false);
      MutexLock lock(&mutex_);
      next_connect = absl::Now() + backoff_;
      stats_.last_error = absl::StrCat("Ingest stream failed (",
                                       status.ok() ? "closed by the server" : StatusText(status),
                                       "); reconnecting in ", absl::FormatDuration(backoff_));
      backoff_ = std::min(backoff_ * 2, options_.max_backoff);
    }

    // 2. References of new streams, of streams whose batch was rejected, and retries.
    FetchDueReferences(force_fetch);

    // 3. Cut batches on the flush interval, on request, and while closing.
    {
      MutexLock lock(&mutex_);
      const absl::Time now = absl::Now();
      if (now >= next_flush || rounds_requested > flush_rounds_done_ || closing_) {
        CutBatchesLocked(now);
        flush_target_ = next_sequence_ - 1;
        flush_rounds_done_ = std::max(flush_rounds_done_, rounds_requested);
        next_flush = now + options_.flush_interval;
        changed_.SignalAll();
      }
    }

    // 4. Connect when there is something to send.
    bool connect = false;
    {
      MutexLock lock(&mutex_);
      connect = connection == nullptr && !queue_.empty() && absl::Now() >= next_connect &&
                !(closing_ && absl::Now() >= close_deadline_);
    }
    if (connect) {
      connection = Connect();
      if (connected_before) {
        MutexLock lock(&mutex_);
        ++stats_.reconnects;
      }
      connected_before = true;
    }

    // 5. Write what this stream has not carried yet (everything unacknowledged after a reconnect).
    if (connection != nullptr) WriteUnwritten(*connection);

    // 6. A stream that stopped acknowledging is restarted; 7. closing ends when all is sent.
    {
      MutexLock lock(&mutex_);
      const absl::Time now = absl::Now();
      const PendingBatch* oldest = queue_.oldest();
      if (connection != nullptr && !connection_broken_ && oldest != nullptr &&
          oldest->written_on_connection == connection->id &&
          now - oldest->written_at > options_.ack_timeout) {
        stats_.last_error =
            absl::StrCat("batch ", oldest->sequence, " was not acknowledged within ",
                         absl::FormatDuration(options_.ack_timeout), "; reconnecting");
        connection_broken_ = true;
        connection->context.TryCancel();
      }
      if (closing_ && (now >= close_deadline_ || !HasUnsentDataLocked())) break;
    }
  }

  if (connection != nullptr) {
    bool graceful = false;
    {
      MutexLock lock(&mutex_);
      graceful = !connection_broken_ && absl::Now() < close_deadline_;
    }
    TearDown(std::move(connection), graceful).IgnoreError();
  }
  MutexLock lock(&mutex_);
  DropRemainingLocked();
  background_done_ = true;
  changed_.SignalAll();
}

void Recorder::FetchDueReferences(bool force) {
  std::vector<std::string> due;
  {
    MutexLock lock(&mutex_);
    const absl::Time now = absl::Now();
    for (const auto& [signal, stream] : streams_) {
      if (stream->accumulator.needs_bins() && (force || stream->next_fetch <= now)) {
        due.push_back(signal);
      }
    }
  }
  for (const std::string& signal : due) {
    grpc::ClientContext context;
    {
      MutexLock lock(&mutex_);
      if (closing_ && absl::Now() >= close_deadline_) return;
      unary_context_ = &context;
    }
    SetDeadline(&context, options_.rpc_deadline);
    SetShardKey(&context, options_.model);
    v1::GetReferenceRequest request;
    request.mutable_stream()->set_model(options_.model);
    request.mutable_stream()->set_model_version(options_.model_version);
    request.mutable_stream()->set_signal(signal);
    v1::Reference reference;
    const absl::Status status = FromGrpcStatus(stub_->GetReference(&context, request, &reference));

    MutexLock lock(&mutex_);
    unary_context_ = nullptr;
    ++stats_.reference_fetches;
    StreamState& stream = *streams_.find(signal)->second;
    const uint64_t dropped = stream.accumulator.dropped_observations();
    const std::string stream_name =
        absl::StrCat(options_.model, "/", options_.model_version, "/", signal);
    absl::StatusOr<std::shared_ptr<const ReferenceBins>> bins =
        status.ok() ? ReferenceBins::FromProto(reference) : status;
    if (bins.ok()) {
      stream.accumulator.SetBins(*std::move(bins));
      stream.fetch_status = absl::OkStatus();
    } else {
      ++stats_.reference_fetch_errors;
      stream.fetch_status = bins.status();
      stream.next_fetch = absl::Now() + options_.reference_retry_interval;
      stats_.last_error =
          absl::StrCat("GetReference ", stream_name, ": ", StatusText(bins.status()));
      // A deleted reference, or one the client cannot bin: what was binned against it is lost.
      const bool gone = bins.status().code() == absl::StatusCode::kNotFound ||
                        bins.status().code() == absl::StatusCode::kFailedPrecondition;
      if (gone && stream.accumulator.bins() != nullptr) {
        stream.accumulator.ClearBins(
            absl::StrCat("stream ", stream_name, ": ", StatusText(bins.status())));
      }
    }
    NoteStreamDropsLocked(stream, dropped);
  }
}

void Recorder::CutBatchesLocked(absl::Time now) {
  // Usually one batch; more if a stream has both counts and probability vectors, or if the data
  // exceeds max_batch_numbers.
  while (true) {
    std::vector<StreamDelta> deltas;
    for (auto& [signal, stream] : streams_) {
      std::optional<StreamDelta> delta = stream->accumulator.TakeDelta();
      if (delta.has_value()) deltas.push_back(*std::move(delta));
    }
    if (deltas.empty()) return;
    // In key order (one model version: by signal), which the server then need not sort.
    std::sort(deltas.begin(), deltas.end(),
              [](const StreamDelta& a, const StreamDelta& b) { return a.signal < b.signal; });
    PendingBatch batch;
    size_t numbers = 0;
    for (StreamDelta& delta : deltas) {
      if (!batch.deltas.empty() && numbers + delta.numbers.size() > options_.max_batch_numbers) {
        QueueBatchLocked(std::exchange(batch, PendingBatch()), now);
        numbers = 0;
      }
      numbers += delta.numbers.size();
      batch.observations += delta.observations;
      batch.deltas.push_back(std::move(delta));
    }
    QueueBatchLocked(std::move(batch), now);
  }
}

void Recorder::QueueBatchLocked(PendingBatch batch, absl::Time now) {
  batch.sequence = next_sequence_++;
  if (options_.send_event_time) batch.event_time = now;
  std::optional<PendingBatch> dropped = queue_.Push(std::move(batch));
  if (!dropped.has_value()) return;
  ++stats_.batches_dropped;
  if (dropped->rejected) return;  // Already counted when it was rejected.
  DropLocked(dropped->observations,
             absl::StrCat("resend queue full (max_pending_batches = ", options_.max_pending_batches,
                          "): dropped batch ", dropped->sequence, " with ", dropped->observations,
                          " observations"));
  failure_status_ = absl::ResourceExhaustedError(stats_.last_error);
}

std::unique_ptr<Recorder::Connection> Recorder::Connect() {
  auto connection = std::make_unique<Connection>();
  {
    MutexLock lock(&mutex_);
    connection->id = ++connection_id_;
    connection_broken_ = false;
    stream_context_ = &connection->context;
  }
  // One model per Recorder, so one model per Ingest stream: a sharding proxy routes it whole.
  SetShardKey(&connection->context, options_.model);
  connection->stream = stub_->Ingest(&connection->context);
  connection->reader = std::thread([this, c = connection.get()] { ReadAcks(c); });
  return connection;
}

bool Recorder::WriteUnwritten(Connection& connection) {
  while (true) {
    v1::IngestRequest request;
    {
      MutexLock lock(&mutex_);
      if (connection_broken_) return false;
      PendingBatch* batch = queue_.NextUnwritten(connection.id);
      if (batch == nullptr) return true;
      const bool resend = batch->written_on_connection != 0;
      batch->written_on_connection = connection.id;
      batch->written_at = absl::Now();
      // A rejected batch is done with; the server acknowledged it with its error.
      if (batch->rejected) continue;
      ++(resend ? stats_.batches_resent : stats_.batches_sent);
      request = client_internal::ToIngestRequest(*batch, options_.client_id, options_.model,
                                                 options_.model_version);
      // Another batch is written right after this one: the server may acknowledge both at once.
      request.set_more_follows(queue_.HasUnwritten(connection.id));
    }
    if (!connection.stream->Write(request)) {
      MutexLock lock(&mutex_);
      connection_broken_ = true;
      connection.context.TryCancel();  // Ends the reader.
      return false;
    }
  }
}

absl::Status Recorder::TearDown(std::unique_ptr<Connection> connection, bool graceful) {
  if (graceful) {
    connection->stream->WritesDone();
    // The server finishes the stream once it has acknowledged everything it read.
    MutexLock lock(&mutex_);
    while (!connection->reader_done && absl::Now() < close_deadline_) {
      changed_.WaitWithDeadline(&mutex_, close_deadline_);
    }
  }
  {
    MutexLock lock(&mutex_);
    if (!connection->reader_done) connection->context.TryCancel();
  }
  connection->reader.join();
  const absl::Status status = FromGrpcStatus(connection->stream->Finish());
  MutexLock lock(&mutex_);
  stream_context_ = nullptr;
  connection_broken_ = false;
  return status;
}

void Recorder::ReadAcks(Connection* connection) {
  v1::IngestResponse response;
  while (connection->stream->Read(&response)) {
    MutexLock lock(&mutex_);
    HandleResponseLocked(response);
  }
  MutexLock lock(&mutex_);
  connection->reader_done = true;
  connection_broken_ = true;
  changed_.SignalAll();
}

void Recorder::HandleResponseLocked(const v1::IngestResponse& response) {
  backoff_ = options_.initial_backoff;  // The server answers: the next failure starts afresh.
  for (const v1::BatchError& error : response.errors()) {
    ++stats_.batch_errors;
    const absl::Status status(static_cast<absl::StatusCode>(error.code()), error.message());
    stats_.last_error = absl::StrCat("batch ", error.sequence(), " rejected: ", StatusText(status));
    PendingBatch* batch = queue_.Find(error.sequence());
    if (batch == nullptr || batch->rejected) continue;  // Already counted.
    batch->rejected = true;
    if (status.code() != absl::StatusCode::kFailedPrecondition) {
      DropLocked(batch->observations, stats_.last_error);
      failure_status_ = status;
      continue;
    }
    // A stream's reference changed (or is gone): fetch the bins of every stream of the batch
    // again (the error does not say which), and resend the deltas whose bins are unchanged.
    for (StreamDelta& delta : batch->deltas) {
      auto it = streams_.find(delta.signal);
      if (it == streams_.end()) {
        DropLocked(delta.observations, stats_.last_error);
        continue;
      }
      StreamState& stream = *it->second;
      const uint64_t dropped = stream.accumulator.dropped_observations();
      stream.accumulator.Requeue(std::move(delta));
      stream.next_fetch = absl::InfinitePast();
      NoteStreamDropsLocked(stream, dropped);
    }
    batch->deltas.clear();
    ++requeue_count_;
  }
  for (PendingBatch& batch : queue_.AckThrough(response.acked_sequence())) {
    if (batch.rejected) continue;
    ++stats_.batches_acked;
    stats_.observations_acked += batch.observations;
  }
  changed_.SignalAll();
}

void Recorder::DropRemainingLocked() {
  const std::string reason = "the Recorder closed before this data was acknowledged";
  for (auto& [signal, stream] : streams_) {
    const uint64_t dropped = stream->accumulator.dropped_observations();
    stream->accumulator.DropAll(absl::StrCat("stream ", signal, ": ", reason));
    NoteStreamDropsLocked(*stream, dropped);
  }
  for (const PendingBatch& batch : queue_.AckThrough(next_sequence_)) {
    if (!batch.rejected) DropLocked(batch.observations, reason);
  }
}

}  // namespace kldrift
