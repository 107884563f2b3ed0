// Exposes the kernels over stdin/stdout for scipy_crosscheck.py, which compares them with SciPy.
//
//   kernel_driver divergences ALPHA   pairs of lines: reference counts, current counts
//                                     -> kl_cr kl_rc js_bits hellinger tv l_inf chi2 g_p_value
//   kernel_driver chi2sf              lines "statistic dof" -> survival function
//   kernel_driver gaussian            4 lines: mean1, var1, mean2, var2 -> forward reverse
//   kernel_driver policy              2 lines: log p current, log p reference
//                                     -> k1 se1 k2 se2 k3 se3
//   kernel_driver binning             2 lines: edges, values -> one bucket index per value
// Numbers are whitespace-separated; output uses %.17g so nothing is lost in transit.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "server/core/bin_layout.h"
#include "server/core/drift_measures.h"
#include "server/kernels/binning.h"
#include "server/kernels/chi_squared.h"
#include "server/kernels/gaussian.h"
#include "server/kernels/paired_logprob.h"

namespace {

bool ReadLine(std::vector<double>& out) {
  std::string line;
  if (!std::getline(std::cin, line)) return false;
  out.clear();
  std::istringstream in(line);
  std::string word;
  while (in >> word) out.push_back(std::strtod(word.c_str(), nullptr));
  return true;
}

void Print(const std::vector<double>& values) {
  for (size_t i = 0; i < values.size(); ++i) std::printf(i ? " %.17g" : "%.17g", values[i]);
  std::printf("\n");
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "kernel_driver: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Fail("usage: kernel_driver divergences|chi2sf|gaussian|policy|binning");
  const std::string mode = argv[1];
  std::vector<double> a, b, c, d;
  if (mode == "divergences") {
    if (argc < 3) return Fail("divergences needs ALPHA");
    const double alpha = std::strtod(argv[2], nullptr);
    while (ReadLine(a) && ReadLine(b)) {
      auto profile = kldrift::ReferenceProfile::Create(a, alpha);
      if (!profile.ok()) return Fail(std::string(profile.status().message()));
      auto m = kldrift::ComputeDriftMeasures(*profile, b, 0);
      if (!m.ok()) return Fail(std::string(m.status().message()));
      Print({m->kl_current_reference, m->kl_reference_current, m->js_bits, m->hellinger,
             m->total_variation, m->l_inf, m->chi2, m->g_test_p_value});
    }
  } else if (mode == "chi2sf") {
    while (ReadLine(a)) {
      if (a.size() != 2) return Fail("chi2sf lines are 'statistic dof'");
      Print({kldrift::kernels::ChiSquaredSurvival(a[0], a[1])});
    }
  } else if (mode == "gaussian") {
    while (ReadLine(a) && ReadLine(b) && ReadLine(c) && ReadLine(d)) {
      const auto kl =
          kldrift::kernels::DiagonalGaussianKl(a.data(), b.data(), c.data(), d.data(), a.size());
      Print({kl.forward, kl.reverse});
    }
  } else if (mode == "policy") {
    while (ReadLine(a) && ReadLine(b)) {
      const auto e = kldrift::kernels::EstimatePolicyKl(a.data(), b.data(), a.size());
      Print({e.k1.mean, e.k1.standard_error, e.k2.mean, e.k2.standard_error, e.k3.mean,
             e.k3.standard_error});
    }
  } else if (mode == "binning") {
    while (ReadLine(a) && ReadLine(b)) {
      auto layout = kldrift::BinLayout::Numeric(a);
      if (!layout.ok()) return Fail(std::string(layout.status().message()));
      std::vector<double> padded(kldrift::kernels::SearchEdgesSize(a.size()));
      kldrift::kernels::PadEdgesForSearch(a.data(), a.size(), padded.data());
      std::vector<uint32_t> bins(b.size());
      kldrift::kernels::BinIndices(b.data(), b.size(), padded.data(), a.size(), bins.data());
      Print(std::vector<double>(bins.begin(), bins.end()));
    }
  } else {
    return Fail("unknown mode " + mode);
  }
  return 0;
}
