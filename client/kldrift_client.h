// The kldrift client library: talking to kldriftd from C++.
//
//   ChannelOptions, CreateChannel   where the server is, and how long a call may take.
//   KlDriftClient                   the unary RPCs (and a one-shot ingest), each with a deadline,
//                                   failing with absl::Status.
//   Recorder                        what a model service calls per prediction: bins locally with
//                                   the reference's frozen bins and streams histogram deltas to
//                                   kldriftd in the background, resending what is not acknowledged.
//
// Example (a model service):
//   kldrift::ChannelOptions channel;               // localhost:50051, 10 s deadline
//   channel.target = "kldriftd.monitoring:50051";
//   kldrift::RecorderOptions options;
//   options.model = "fraud-scorer";
//   options.client_id = "fraud-scorer-pod-7";      // unique per Recorder
//   absl::StatusOr<std::unique_ptr<kldrift::Recorder>> recorder =
//       kldrift::Recorder::Create(kldrift::CreateChannel(channel), options);
//   if (!recorder.ok()) return recorder.status();
//   ...
//   (*recorder)->Record("score", score);           // per prediction; never waits for the network
//   (*recorder)->Record("score", absl::MakeConstSpan(scores));   // a batch of predictions
//   (*recorder)->RecordLabel("decision", "block");
//   ...
//   absl::Status status = (*recorder)->Close(absl::Seconds(5));   // on shutdown
//
// Connections are insecure for now (TLS comes later).
#ifndef KLDRIFT_CLIENT_KLDRIFT_CLIENT_H_
#define KLDRIFT_CLIENT_KLDRIFT_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/internal/batch_queue.h"
#include "client/internal/stream_accumulator.h"
#include "grpcpp/grpcpp.h"
#include "kldrift/v1/kldrift.grpc.pb.h"
#include "server/core/mutex.h"

namespace kldrift {

inline constexpr absl::string_view kDefaultServerAddress = "localhost:50051";
inline constexpr absl::Duration kDefaultRpcDeadline = absl::Seconds(10);

struct ChannelOptions {
  // host:port of kldriftd.
  std::string target = std::string(kDefaultServerAddress);
  // How long each unary call may take.
  absl::Duration deadline = kDefaultRpcDeadline;
  // TLS: verify the server against tls_root_certs (PEM contents; empty: the system's roots).
  bool use_tls = false;
  std::string tls_root_certs;
  // Mutual TLS: this client's PEM certificate chain and private key (contents).
  std::string tls_client_cert;
  std::string tls_client_key;
  // Sent with every call as `authorization: Bearer <token>` (kldriftd --auth-tokens). Empty: none.
  std::string token;
  // Largest response accepted. gRPC's default (4 MiB) is below a large reference's FULL view
  // (~40 bytes per bin: a 1M-bin reference is tens of MB), so the default is higher.
  int max_receive_message_bytes = 256 << 20;
};

// A channel to options.target, over TLS if options.use_tls, adding the token to every call.
// Connects lazily, on the first call.
std::shared_ptr<grpc::Channel> CreateChannel(const ChannelOptions& options);

// Sets `context`'s deadline to now + `timeout`.
void SetDeadline(grpc::ClientContext* context, absl::Duration timeout);

// The metadata key naming the model a call is about: the shard key of a sharded deployment. A
// proxy in front of several kldriftd (nginx `hash $http_x_kldrift_model consistent`, Envoy
// ring_hash on the header) sends every call of a model to the same replica; kldriftd refuses a
// call whose header names another model than its request (README "Sharding").
inline constexpr char kModelMetadataKey[] = "x-kldrift-model";

// Adds `model` as x-kldrift-model to `context` (nothing if empty: calls that span models, such as
// ListReferences without a model, are answered by whichever replica gets them).
void SetShardKey(grpc::ClientContext* context, absl::string_view model);

// The one place gRPC statuses become absl::Status (the codes map one to one).
absl::Status FromGrpcStatus(const grpc::Status& status);

// The kldriftd RPCs as blocking calls, each bounded by the deadline.
//
// Thread safety: safe for concurrent use.
class KlDriftClient {
 public:
  KlDriftClient(std::shared_ptr<grpc::Channel> channel, absl::Duration deadline);

  absl::StatusOr<v1::PutReferenceResponse> PutReference(
      const v1::PutReferenceRequest& request) const;
  // `version` 0 is the latest.
  absl::StatusOr<v1::Reference> GetReference(const v1::StreamId& stream,
                                             uint64_t version = 0) const;
  // Every page of ListReferences (each page a call with its own deadline). `model` may be empty.
  absl::StatusOr<std::vector<v1::Reference>> ListReferences(absl::string_view model) const;
  // The number of versions deleted.
  absl::StatusOr<uint64_t> DeleteReference(const v1::StreamId& stream) const;
  // Online backup into `directory` on the server's machine; returns the copy's size in bytes.
  absl::StatusOr<uint64_t> Backup(const std::string& directory) const;
  // A model's whole state on this server, and installing one (sharding hand-over; admin role).
  absl::StatusOr<v1::ModelExport> ExportModel(absl::string_view model) const;
  // The number of streams installed. Sent in parts of at most ~8 MiB (each a call with its own
  // deadline), the first replacing if `replace`, the others appending; a failure after the first
  // part leaves the parts before it installed (re-run with replace).
  absl::StatusOr<uint32_t> ImportModel(const v1::ModelExport& model_export, bool replace) const;
  absl::StatusOr<v1::GetDriftResponse> GetDrift(const v1::GetDriftRequest& request) const;
  // Sends one batch on an Ingest stream of its own and waits for its acknowledgement, all within
  // the deadline. The server's error for the batch, if any, is returned as the status.
  absl::Status IngestOnce(const v1::IngestRequest& request) const;

  v1::KlDrift::Stub* stub() const { return stub_.get(); }
  absl::Duration deadline() const { return deadline_; }

 private:
  std::unique_ptr<v1::KlDrift::Stub> stub_;
  absl::Duration deadline_;
};

struct RecorderOptions {
  // The model every recorded stream belongs to, and its version (may be empty).
  std::string model;
  std::string model_version;
  // Identifies this Recorder to the server across reconnects; unique per Recorder. 1-128
  // characters of [A-Za-z0-9._:/-].
  std::string client_id;
  // How often the deltas are sent, as one batch for all streams.
  absl::Duration flush_interval = absl::Seconds(1);
  // Batches kept for resending until acknowledged; beyond this the oldest is dropped (and counted).
  size_t max_pending_batches = 1000;
  // Streams (signals) one Recorder keeps; observations of further signals are dropped.
  size_t max_streams = 1000;
  // Per stream: observations held while its reference is being fetched, and probability entries
  // held between flushes. Beyond this observations are dropped.
  size_t max_buffered_per_stream = 65536;
  // Numbers (counts and probability entries) per IngestRequest: a flush with more is split into
  // several batches, keeping each message well under gRPC's default 4 MB limit.
  size_t max_batch_numbers = size_t{1} << 18;
  // Deadline of each GetReference call.
  absl::Duration rpc_deadline = kDefaultRpcDeadline;
  // An Ingest stream whose oldest written batch is not acknowledged within this is restarted.
  absl::Duration ack_timeout = absl::Seconds(10);
  // Reconnection delay after a stream fails: doubles from the initial value up to the maximum,
  // and is reset by any response from the server.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  // After a failed GetReference (no reference yet, server down), when to try again.
  absl::Duration reference_retry_interval = absl::Seconds(5);
  // Stamp each batch with the time it was cut, so a batch resent after an outage lands in the
  // windows it was observed in. The server rejects event times more than a minute ahead of its
  // clock or older than the stream's longest window.
  bool send_event_time = true;
  // The first batch's sequence number; 0 picks microseconds since the Unix epoch, so a restarted
  // process that reuses its client_id keeps numbering above its previous run (the server treats
  // sequence numbers it has seen as duplicates and does not apply them). The server takes any start
  // above 0.
  uint64_t first_sequence = 0;
};

// What a Recorder has done with the observations it was given. Nothing is lost silently: every
// observation recorded is eventually acknowledged, dropped or still in flight.
struct RecorderStats {
  // Record, RecordLabel and RecordProbabilities calls.
  uint64_t observations_recorded = 0;
  // Observations in batches the server applied.
  uint64_t observations_acked = 0;
  // Observations that will never be applied: rejected batches, queue overflow, buffers full,
  // observations the stream's reference cannot take, or left over at Close (see last_error).
  uint64_t observations_dropped = 0;
  // Observations waiting for their stream's reference.
  uint64_t observations_waiting = 0;
  // Batches written for the first time, and written again after a reconnect.
  uint64_t batches_sent = 0;
  uint64_t batches_resent = 0;
  uint64_t batches_acked = 0;
  // Unacknowledged batches dropped to stay within max_pending_batches (they may have been applied).
  uint64_t batches_dropped = 0;
  // Batches the server rejected (BatchError); their deltas are requeued if the stream's reference
  // merely changed version with the same bins, and dropped otherwise.
  uint64_t batch_errors = 0;
  // Ingest streams opened after the first.
  uint64_t reconnects = 0;
  uint64_t reference_fetches = 0;
  uint64_t reference_fetch_errors = 0;
  // Batches cut but not yet acknowledged.
  size_t pending_batches = 0;
  // The latest error or drop reason, for logs.
  std::string last_error;
};

// Records a model's predictions and streams them to kldriftd as histogram deltas.
//
// On first use of a signal the Recorder fetches that stream's reference (GetReference) to learn its
// frozen bins and version, and from then on bins locally: numeric values with the server's
// BinLayout, labels by category, class-probability vectors as vectors (the server adds them as a
// soft histogram). Every flush interval one IngestRequest carries every stream's delta over one
// long-lived Ingest stream, with increasing sequence numbers. Cumulative acknowledgements release
// batches from a bounded resend queue; when the stream fails, the Recorder reconnects with
// exponential backoff and resends every unacknowledged batch in order (the server de-duplicates by
// client id and sequence number). A FAILED_PRECONDITION from the server means a stream's reference
// changed: its bins are fetched again, and the rejected delta is resent if the bins are the same.
// Numeric, categorical and pre-binned references only.
//
// Memory is bounded by max_streams, max_buffered_per_stream and max_pending_batches; whatever is
// dropped to stay within them is counted in Stats().
//
// Thread safety: Record*, Flush, Stats and Close are safe to call from any number of threads.
// Record* never waits for the network: it takes one mutex briefly. One background thread fetches
// references, cuts batches and writes them; one more reads acknowledgements.
class Recorder {
 public:
  // INVALID_ARGUMENT if an option is invalid (names, non-positive intervals, zero limits).
  static absl::StatusOr<std::unique_ptr<Recorder>> Create(std::shared_ptr<grpc::Channel> channel,
                                                          RecorderOptions options);
  // Closes with a default timeout of options.rpc_deadline if Close was not called.
  ~Recorder();

  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // One numeric prediction of `signal` (NaN and +-inf are counted in the NaN / overflow /
  // underflow buckets).
  void Record(absl::string_view signal, double value);
  // Many numeric predictions of `signal` at once: the same as calling Record(signal, v) for each
  // value in order, with one lock and one stream lookup for the whole span, and the values binned
  // in chunks by the vectorized binning kernel. Meant for callers that already hold predictions in
  // batches (a batched inference call): per value it is several times cheaper than Record. An
  // unknown or invalid signal drops (and counts) every value, as Record does for one; an empty
  // span does nothing, not even create the stream.
  void Record(absl::string_view signal, absl::Span<const double> values);
  // One categorical prediction; labels the reference does not know go to its unseen bucket.
  void RecordLabel(absl::string_view signal, absl::string_view label);
  // One class-probability vector (the reference's categories or bins, in order; entries in [0, 1]
  // summing to 1). Invalid vectors are dropped and counted, never sent.
  void RecordProbabilities(absl::string_view signal, absl::Span<const double> probabilities);

  // Sends everything recorded so far now and waits, at most `timeout`, until the server has
  // acknowledged it. OK if it was all applied; DEADLINE_EXCEEDED if not acknowledged in time (the
  // batches stay queued); otherwise the error of a batch that was rejected or dropped meanwhile, or
  // of a stream whose observations are still waiting for a reference.
  absl::Status Flush(absl::Duration timeout);
  // Flushes (within `timeout`), closes the Ingest stream and stops the background threads; later
  // observations are dropped and counted. Data still unsent at the end is counted as dropped.
  // Returns as Flush. Later calls return the first call's status.
  absl::Status Close(absl::Duration timeout);

  RecorderStats Stats() const;

 private:
  struct StreamState;
  struct Connection;

  Recorder(std::shared_ptr<grpc::Channel> channel, RecorderOptions options);

  // The stream of `signal`, created on first use; null (and its `observations` counted as dropped)
  // if the name is invalid, there are too many streams, or the Recorder is closed.
  StreamState* StreamLocked(absl::string_view signal, uint64_t observations = 1)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Counts observations lost outside any stream, and remembers why.
  void DropLocked(uint64_t observations, std::string reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Notes drops a stream made since its drop count was `dropped_before`.
  void NoteStreamDropsLocked(const StreamState& stream, uint64_t dropped_before)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Whether the background thread has something to do before its next timed wake-up.
  bool WorkReadyLocked(const Connection* connection) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // When the background thread must wake up at the latest.
  absl::Time NextWakeLocked(const Connection* connection, absl::Time next_flush,
                            absl::Time next_connect) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  // The background thread and its steps.
  void Run();
  void FetchDueReferences(bool force);
  // Cuts every stream's pending delta into batches (usually one).
  void CutBatchesLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Numbers `batch` and appends it to the resend queue, counting the batch that overflows.
  void QueueBatchLocked(client_internal::PendingBatch batch, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  std::unique_ptr<Connection> Connect();
  // Writes every batch not yet written on `connection`; false if the stream failed.
  bool WriteUnwritten(Connection& connection);
  // Ends the stream: if `graceful`, half-closes it and waits (until the close deadline) for the
  // server to finish it; otherwise cancels it. Returns the call's final status.
  absl::Status TearDown(std::unique_ptr<Connection> connection, bool graceful);
  void ReadAcks(Connection* connection);
  void HandleResponseLocked(const v1::IngestResponse& response)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Drops whatever is left at the end of Close.
  void DropRemainingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Whether anything is left to send (pending deltas or queued batches).
  bool HasUnsentDataLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // The status Flush reports when its batches are acknowledged; see Flush.
  absl::Status FlushOutcomeLocked(uint64_t failures_before) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  uint64_t DroppedObservationsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const RecorderOptions options_;
  const std::unique_ptr<v1::KlDrift::Stub> stub_;

  mutable Mutex mutex_;
  // Signalled on every change the background thread or a Flush may be waiting for.
  CondVar changed_;
  absl::flat_hash_map<std::string, std::unique_ptr<StreamState>> streams_ ABSL_GUARDED_BY(mutex_);
  client_internal::BatchQueue queue_ ABSL_GUARDED_BY(mutex_);
  uint64_t next_sequence_ ABSL_GUARDED_BY(mutex_);

  // Flush rounds: requested by Flush, done once the background thread has cut the batches.
  uint64_t flush_rounds_requested_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t flush_rounds_done_ ABSL_GUARDED_BY(mutex_) = 0;
  // The last sequence cut by the latest flush round.
  uint64_t flush_target_ ABSL_GUARDED_BY(mutex_) = 0;
  // Incremented whenever a rejected delta is requeued, so Flush knows to run another round.
  uint64_t requeue_count_ ABSL_GUARDED_BY(mutex_) = 0;
  // Incremented on every rejected or dropped batch or observation; with failure_status_.
  uint64_t failure_count_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::Status failure_status_ ABSL_GUARDED_BY(mutex_);

  // The current Ingest stream (owned by the background thread) as the reader thread sees it.
  uint64_t connection_id_ ABSL_GUARDED_BY(mutex_) = 0;
  bool connection_broken_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Duration backoff_ ABSL_GUARDED_BY(mutex_);
  // Calls in progress, cancelled by Close when its timeout expires.
  grpc::ClientContext* stream_context_ ABSL_GUARDED_BY(mutex_) = nullptr;
  grpc::ClientContext* unary_context_ ABSL_GUARDED_BY(mutex_) = nullptr;

  bool closing_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Time close_deadline_ ABSL_GUARDED_BY(mutex_) = absl::InfiniteFuture();
  bool background_done_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Status close_status_ ABSL_GUARDED_BY(mutex_);
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;

  RecorderStats stats_ ABSL_GUARDED_BY(mutex_);
  // Observations dropped outside any stream (bad names, too many streams, after Close, batches).
  uint64_t dropped_outside_streams_ ABSL_GUARDED_BY(mutex_) = 0;

  std::thread background_;
};

}  // namespace kldrift

#endif  // KLDRIFT_CLIENT_KLDRIFT_CLIENT_H_
