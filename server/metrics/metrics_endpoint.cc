// MetricsEndpoint: /metrics over civetweb, written by DriftMetrics::WriteExposition.
//
// prometheus-cpp's Exposer would collect every series into MetricFamily objects and serialize the
// whole text before sending it (several GB at 100k streams). This handler streams the text a family
// at a time instead (chunked transfer encoding, gzip when the client accepts it, as the Exposer
// does), with the Exposer's own exposer_* metrics and its basic-auth behaviour, so the exposition
// Prometheus reads is unchanged.
#include <zlib.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "CivetServer.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "civetweb.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "prometheus/summary.h"
#include "prometheus/text_serializer.h"
#include "server/core/constant_time.h"
#include "server/core/mutex.h"
#include "server/metrics/drift_metrics.h"

namespace kldrift {
namespace {

constexpr char kRealm[] = "kldriftd metrics";
// Text handed to civetweb per chunk (and the gzip output buffer).
constexpr size_t kChunkBytes = 64 << 10;

// Writes one HTTP response body: chunked for HTTP/1.1 clients, whole with a Content-Length for
// HTTP/1.0 ones (which know no chunks); gzip-compressed when the client accepts it.
class ResponseWriter {
 public:
  ResponseWriter(mg_connection* conn, bool gzip) : conn_(conn) {
    const mg_request_info* info = mg_get_request_info(conn);
    chunked_ = info != nullptr && info->http_version != nullptr &&
               std::strcmp(info->http_version, "1.0") != 0;
    if (gzip) {
      stream_ = std::make_unique<z_stream>();
      // gzip framing (16 + MAX_WBITS) as prometheus-cpp, but the fastest level rather than the
      // default: on an exposition it compresses twice as fast for about a tenth more bytes, and
      // compression is most of what a large scrape costs.
      if (deflateInit2(stream_.get(), Z_BEST_SPEED, Z_DEFLATED, 16 + MAX_WBITS, 9,
                       Z_DEFAULT_STRATEGY) != Z_OK) {
        stream_.reset();
      }
    }
  }
  ~ResponseWriter() {
    if (stream_ != nullptr) deflateEnd(stream_.get());
  }

  void Write(absl::string_view text) {
    if (stream_ == nullptr) {
      Emit(text);
      return;
    }
    Deflate(text, Z_NO_FLUSH);
  }

  // Ends the body; returns the bytes of body sent.
  size_t Finish() {
    if (stream_ != nullptr) Deflate({}, Z_FINISH);
    if (chunked_) {
      Flush();
      mg_send_chunk(conn_, "", 0);
    } else {
      SendHeaders(absl::StrCat("Content-Length: ", pending_.size(), "\r\n"));
      mg_write(conn_, pending_.data(), pending_.size());
    }
    return bytes_;
  }

 private:
  void SendHeaders(absl::string_view framing) {
    const std::string headers =
        absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n",
                     stream_ != nullptr ? "Content-Encoding: gzip\r\n" : "", framing, "\r\n");
    mg_write(conn_, headers.data(), headers.size());
  }

  void Deflate(absl::string_view text, int flush) {
    stream_->next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
    stream_->avail_in = static_cast<uInt>(text.size());
    deflated_.resize(kChunkBytes);
    int result = Z_OK;
    do {
      stream_->next_out = reinterpret_cast<Bytef*>(deflated_.data());
      stream_->avail_out = static_cast<uInt>(deflated_.size());
      result = deflate(stream_.get(), flush);
      Emit(absl::string_view(deflated_.data(), deflated_.size() - stream_->avail_out));
    } while (stream_->avail_out == 0 || (flush == Z_FINISH && result == Z_OK));
  }

  // Body bytes, after compression.
  void Emit(absl::string_view bytes) {
    bytes_ += bytes.size();
    pending_.append(bytes.data(), bytes.size());
    if (chunked_ && pending_.size() >= kChunkBytes) Flush();
  }

  void Flush() {
    if (!headers_sent_) {
      SendHeaders("Transfer-Encoding: chunked\r\n");
      headers_sent_ = true;
    }
    if (!pending_.empty()) mg_send_chunk(conn_, pending_.data(), pending_.size());
    pending_.clear();
  }

  mg_connection* conn_;
  bool chunked_ = false;
  bool headers_sent_ = false;
  std::unique_ptr<z_stream> stream_;
  std::string deflated_;  // deflate's output, before Emit.
  std::string pending_;
  size_t bytes_ = 0;
};

// GET /metrics.
class MetricsHandler final : public CivetHandler {
 public:
  explicit MetricsHandler(std::shared_ptr<DriftMetrics> metrics)
      : metrics_(std::move(metrics)),
        registry_(std::make_shared<prometheus::Registry>()),
        // prometheus-cpp's Exposer exports these three; kept so that nothing Prometheus saw before
        // goes missing.
        bytes_transferred_(prometheus::BuildCounter()
                               .Name("exposer_transferred_bytes_total")
                               .Help("Transferred bytes to metrics services")
                               .Register(*registry_)
                               .Add({})),
        scrapes_(prometheus::BuildCounter()
                     .Name("exposer_scrapes_total")
                     .Help("Number of times metrics were scraped")
                     .Register(*registry_)
                     .Add({})),
        latencies_(
            prometheus::BuildSummary()
                .Name("exposer_request_latencies")
                .Help("Latencies of serving scrape requests, in microseconds")
                .Register(*registry_)
                .Add({}, prometheus::Summary::Quantiles{{0.5, 0.05}, {0.9, 0.01}, {0.99, 0.001}})) {
  }

  bool handleGet(CivetServer* /*server*/, mg_connection* conn) override {
    const auto start = std::chrono::steady_clock::now();
    const char* accept_encoding = mg_get_header(conn, "Accept-Encoding");
    ResponseWriter writer(conn,
                          accept_encoding != nullptr && absl::StrContains(accept_encoding, "gzip"));
    writer.Write(prometheus::TextSerializer().Serialize(registry_->Collect()));
    {
      // Scrapes take turns: one buffer, reused, rather than one per concurrent scrape.
      MutexLock lock(&mutex_);
      metrics_->WriteExposition(buffer_, [&writer](absl::string_view text) { writer.Write(text); });
    }
    const size_t bytes = writer.Finish();
    latencies_.Observe(static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                                               std::chrono::steady_clock::now() - start)
                                               .count()));
    bytes_transferred_.Increment(static_cast<double>(bytes));
    scrapes_.Increment();
    return true;
  }

 private:
  const std::shared_ptr<DriftMetrics> metrics_;
  const std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter& bytes_transferred_;
  prometheus::Counter& scrapes_;
  prometheus::Summary& latencies_;
  Mutex mutex_;
  std::string buffer_ ABSL_GUARDED_BY(mutex_);
};

// HTTP basic auth on /metrics, as prometheus-cpp's BasicAuthHandler: 401 with a challenge unless
// the Authorization header is "Basic base64(user:password)" with the right pair.
class BasicAuthHandler final : public CivetAuthHandler {
 public:
  BasicAuthHandler(std::string user, std::string password)
      : user_(std::move(user)), password_(std::move(password)) {}

  bool authorize(CivetServer* /*server*/, mg_connection* conn) override {
    if (Authorized(mg_get_header(conn, "Authorization"))) return true;
    mg_printf(conn,
              "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"%s\"\r\n"
              "Connection: close\r\nContent-Length: 0\r\n\r\n",
              kRealm);
    return false;
  }

 private:
  bool Authorized(const char* header) const {
    if (header == nullptr) return false;
    absl::string_view value = header;
    std::string decoded;
    if (!absl::ConsumePrefix(&value, "Basic ") || !absl::Base64Unescape(value, &decoded)) {
      return false;
    }
    const size_t colon = decoded.find(':');
    if (colon == std::string::npos) return false;
    // Both compared in full, whatever the first says.
    const bool user_ok = ConstantTimeEquals(user_, decoded.substr(0, colon));
    const bool password_ok = ConstantTimeEquals(password_, decoded.substr(colon + 1));
    return user_ok && password_ok;
  }

  const std::string user_;
  const std::string password_;
};

}  // namespace

struct MetricsEndpoint::Impl {
  // Declared before the server, so destroyed after it has stopped calling them.
  std::unique_ptr<MetricsHandler> handler;
  std::unique_ptr<BasicAuthHandler> auth;
  std::unique_ptr<CivetServer> server;
};

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const MetricsEndpointOptions& options, std::shared_ptr<DriftMetrics> metrics) {
  const std::string& address = options.address;
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics-listen \"", address, "\" is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:0)"));
  }
  const std::vector<std::string> civetweb_options = {"listening_ports", address, "num_threads",
                                                     "2"};
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint);
  endpoint->impl_ = std::make_unique<Impl>();
  Impl& impl = *endpoint->impl_;
  impl.handler = std::make_unique<MetricsHandler>(std::move(metrics));
  if (!options.basic_auth_user.empty()) {
    impl.auth =
        std::make_unique<BasicAuthHandler>(options.basic_auth_user, options.basic_auth_password);
  }
  try {
    impl.server = std::make_unique<CivetServer>(civetweb_options);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, " (", e.what(),
                     "); is the port in use? choose another with --metrics-listen"));
  }
  // The auth handler first, so no scrape is ever served without it.
  if (impl.auth != nullptr) impl.server->addAuthHandler("/metrics", impl.auth.get());
  impl.server->addHandler("/metrics", impl.handler.get());
  const std::vector<int> ports = impl.server->getListeningPorts();
  if (ports.empty()) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address));
  }
  endpoint->port_ = ports.front();
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() = default;

}  // namespace kldrift
