// cadre_checkpoint_compare A B [--rtol R] [--atol A] [--only PREFIX] [--counters]: compares two
// checkpoints tensor by tensor (same names, shapes and types; |a - b| <= atol + rtol * |b|
// elementwise; --only: just the tensors whose names start with PREFIX) and prints the largest
// difference of each tensor that fails. With --counters the counters must be equal too. Exit 0 equal, 1 different, 2 unreadable. The multi-node and fault tests use it.
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>

#include "common/error.h"
#include "runtime/checkpoint.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: cadre_checkpoint_compare A B [--rtol R] [--atol A] [--only PREFIX] [--counters]\n";
    return 2;
  }
  double rtol = 0, atol = 0;
  bool counters = false;
  std::string only;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rtol" && i + 1 < argc) {
      rtol = std::atof(argv[++i]);
    } else if (a == "--atol" && i + 1 < argc) {
      atol = std::atof(argv[++i]);
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--counters") {
      counters = true;
    } else {
      std::cerr << "cadre_checkpoint_compare: unknown option '" << a
                << "'; accepted: --rtol R, --atol A, --only PREFIX, --counters\n";
      return 2;
    }
  }
  cadre::runtime::CheckpointState a, b;
  try {
    a = cadre::runtime::read_checkpoint(argv[1]);
    b = cadre::runtime::read_checkpoint(argv[2]);
  } catch (const cadre::Error& e) {
    std::cerr << "cadre_checkpoint_compare: " << e.message() << "\n";
    return 2;
  }
  int bad = 0;
  if (counters && a.counters != b.counters) {
    std::cerr << "counters differ:";
    for (const auto& [name, value] : a.counters) std::cerr << " " << name << "=" << value;
    std::cerr << " vs";
    for (const auto& [name, value] : b.counters) std::cerr << " " << name << "=" << value;
    std::cerr << "\n";
    ++bad;
  }
  std::map<std::string, torch::Tensor> other(b.tensors.begin(), b.tensors.end());
  if (a.tensors.size() != b.tensors.size()) {
    std::cerr << "tensor counts differ: " << a.tensors.size() << " vs " << b.tensors.size() << "\n";
    ++bad;
  }
  double worst = 0;
  int compared = 0;
  for (const auto& [name, x] : a.tensors) {
    if (name.compare(0, only.size(), only) != 0) continue;
    ++compared;
    auto it = other.find(name);
    if (it == other.end()) {
      std::cerr << "tensor '" << name << "' is missing from " << argv[2] << "\n";
      ++bad;
      continue;
    }
    const torch::Tensor& y = it->second;
    if (x.sizes() != y.sizes() || x.scalar_type() != y.scalar_type()) {
      std::cerr << "tensor '" << name << "' is " << x.sizes() << " " << x.scalar_type() << " vs "
                << y.sizes() << " " << y.scalar_type() << "\n";
      ++bad;
      continue;
    }
    if (x.numel() == 0) continue;
    const auto xd = x.to(torch::kDouble), yd = y.to(torch::kDouble);
    const auto diff = (xd - yd).abs();
    const auto excess = diff - (atol + rtol * yd.abs());
    const double max_diff = diff.max().item<double>();
    worst = std::max(worst, max_diff);
    if (excess.max().item<double>() > 0) {
      std::cerr << "tensor '" << name << "' differs: max |a-b| " << max_diff << " (atol " << atol
                << ", rtol " << rtol << ")\n";
      ++bad;
    }
  }
  if (compared == 0) {
    std::cerr << "no tensor named '" << only << "...' to compare\n";
    ++bad;
  }
  std::cout << "cadre_checkpoint_compare: " << compared << " tensors, max |a-b| " << worst
            << (bad ? ", DIFFERENT" : ", equal within tolerance") << "\n";
  return bad ? 1 : 0;
}
