// Builders of engine inputs for tests: reference specs of every kind, stream data of every type,
// ingest batches. Shared by the engine's and the metrics' tests.
//
// Thread safety: pure functions.
#ifndef KLDRIFT_SERVER_CORE_TESTING_ENGINE_INPUTS_H_
#define KLDRIFT_SERVER_CORE_TESTING_ENGINE_INPUTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "server/core/drift_engine.h"

namespace kldrift::test_inputs {

inline ReferenceSpec PreBinned(const StreamKey& key, std::vector<double> counts,
                               AlertPolicy policy = {}) {
  ReferenceSpec spec;
  spec.stream = key;
  spec.kind = ReferenceKind::kPreBinned;
  spec.bins = counts.size();
  spec.counts = std::move(counts);
  spec.policy = std::move(policy);
  return spec;
}

inline ReferenceSpec Numeric(const StreamKey& key, std::vector<double> edges,
                             std::vector<double> counts) {
  ReferenceSpec spec;
  spec.stream = key;
  spec.kind = ReferenceKind::kNumeric;
  spec.edges = std::move(edges);
  spec.counts = std::move(counts);
  return spec;
}

inline ReferenceSpec Categorical(const StreamKey& key, std::vector<std::string> categories,
                                 std::vector<double> counts) {
  ReferenceSpec spec;
  spec.stream = key;
  spec.kind = ReferenceKind::kCategorical;
  spec.categories = std::move(categories);
  spec.counts = std::move(counts);
  return spec;
}

inline ReferenceSpec Gaussian(const StreamKey& key, std::vector<double> mean,
                              std::vector<double> var) {
  ReferenceSpec spec;
  spec.stream = key;
  spec.kind = ReferenceKind::kGaussian;
  spec.gaussian = {std::move(mean), std::move(var)};
  return spec;
}

inline ReferenceSpec PolicyRef(const StreamKey& key) {
  ReferenceSpec spec;
  spec.stream = key;
  spec.kind = ReferenceKind::kPairedLogProbs;
  return spec;
}

inline StreamData Data(const StreamKey& key, StreamData::Type type) {
  StreamData d;
  d.model_version = key.model_version;
  d.signal = key.signal;
  d.type = type;
  return d;
}

inline StreamData Hist(const StreamKey& key, std::vector<double> counts) {
  StreamData d = Data(key, StreamData::Type::kHistogram);
  d.numbers = std::move(counts);
  return d;
}

inline StreamData Values(const StreamKey& key, std::vector<double> values) {
  StreamData d = Data(key, StreamData::Type::kValues);
  d.numbers = std::move(values);
  return d;
}

inline StreamData Labels(const StreamKey& key, std::vector<std::string> labels) {
  StreamData d = Data(key, StreamData::Type::kLabels);
  d.labels = std::move(labels);
  return d;
}

inline StreamData Probabilities(const StreamKey& key, std::vector<double> flat) {
  StreamData d = Data(key, StreamData::Type::kProbabilities);
  d.numbers = std::move(flat);
  return d;
}

inline StreamData GaussianStats(const StreamKey& key, double count, std::vector<double> sum,
                                std::vector<double> sum_squares) {
  StreamData d = Data(key, StreamData::Type::kGaussian);
  d.gaussian_count = count;
  d.gaussian_sum = std::move(sum);
  d.gaussian_sum_squares = std::move(sum_squares);
  return d;
}

inline StreamData LogProbs(const StreamKey& key, std::vector<double> current,
                           std::vector<double> reference) {
  StreamData d = Data(key, StreamData::Type::kLogProbs);
  d.log_p_current = std::move(current);
  d.log_p_reference = std::move(reference);
  return d;
}

inline IngestBatch MakeBatch(std::string client, uint64_t sequence, std::string model,
                             std::vector<StreamData> streams,
                             std::optional<absl::Time> event_time = std::nullopt) {
  IngestBatch b;
  b.client_id = std::move(client);
  b.sequence = sequence;
  b.model = std::move(model);
  b.streams = std::move(streams);
  b.event_time = event_time;
  return b;
}

}  // namespace kldrift::test_inputs

#endif  // KLDRIFT_SERVER_CORE_TESTING_ENGINE_INPUTS_H_
