// libFuzzer target: the checkpoint loader, orthopt's attack surface (it reads files a user did not
// necessarily write). Input: one mode byte, then the stream's bytes. Mode bit 0: load into the double
// optimizer instead of the float one; bit 1: the stream never ends (zeros after the bytes); bit 2: the
// stream has exceptions(failbit | badbit) set; bit 3: the target rewrites the trailing checksum first,
// so that mutations get past it to the parser and the consistency checks behind it.
//
// Checked for every input: the load either succeeds or throws orthopt::error (anything else, such as
// std::bad_alloc or std::ios_base::failure, is a crash); a failed load leaves the optimizer
// byte-identical (its own checkpoint is compared before and after); a successful load is exact (the
// optimizer's checkpoint, loaded into a second optimizer, saves to the same bytes); an endless stream
// is not read without end (libFuzzer's -timeout) and no allocation exceeds what the loading optimizer's
// own checkpoint size justifies (run with -malloc_limit_mb, see tests/run.sh --fuzz).
//
// Seeds: with ORTHOPT_FUZZ_SEED_DIR set, LLVMFuzzerInitialize writes real checkpoints of the test
// model (tests/support/optimizer_test_util.hpp, as test_checkpoint uses it) after 0 to 5 steps there.
#include <orthopt/checkpoint.hpp>
#include <orthopt/eigen.hpp>

#include <fstream>
#include <istream>
#include <sstream>
#include <streambuf>
#include <string>

#include "fuzz_support.hpp"
#include "optimizer_test_util.hpp"

namespace {

using namespace orthopt_fuzz;
using B = orthopt::eigen_backend;

/// The bytes, then zeros for ever.
class endless_buffer : public std::streambuf {
 public:
  endless_buffer(const char* data, std::size_t size) : data_(data, size) {
    char* p = data_.data();
    setg(p, p, p + data_.size());
  }

 protected:
  int_type underflow() override {
    std::fill(std::begin(zeros_), std::end(zeros_), '\0');
    setg(zeros_, zeros_, zeros_ + sizeof zeros_);
    return traits_type::to_int_type(zeros_[0]);
  }

 private:
  std::string data_;
  char zeros_[4096] = {};
};


template <class T>
void load(orthopt::optimizer<T, B>& opt, std::istream& in) {
  orthopt::load_checkpoint(opt, in);
}

/// The test model's optimizer after `steps` steps, kept for the whole run.
template <class T>
struct fixture {
  testing::toy_model<T> model;
  orthopt::optimizer<T, B> opt = model.make_optimizer();
  testing::toy_model<T> other_model;
  orthopt::optimizer<T, B> other = other_model.make_optimizer();
  std::string baseline;
  explicit fixture(int steps) {
    model.run(opt, 0, steps);
    baseline = testing::checkpoint_bytes(opt);
  }
};

template <class T>
fixture<T>& the_fixture() {
  static fixture<T> f(2);
  return f;
}

/// The bytes with their last 8 replaced by the FNV-1a 64 checksum of the rest (little-endian).
std::string resealed(const char* data, std::size_t size) {
  std::string s(data, size);
  if (s.size() < 8) return s;
  orthopt::fnv1a64 h;
  h.update(s.data(), s.size() - 8);
  const std::uint64_t v = h.value();
  for (int i = 0; i < 8; ++i) s[s.size() - 8 + static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

template <class T>
void run(unsigned mode, const char* data, std::size_t size) {
  fixture<T>& f = the_fixture<T>();
  const std::string bytes = (mode & 8) ? resealed(data, size) : std::string(data, size);
  std::istringstream finite(bytes, std::ios::binary);
  endless_buffer endless_buf(bytes.data(), bytes.size());
  std::istream endless(&endless_buf);
  std::istream& in = (mode & 2) ? endless : static_cast<std::istream&>(finite);
  if (mode & 4) in.exceptions(std::ios::failbit | std::ios::badbit);
  try {
    load(f.opt, in);
  } catch (const orthopt::error& e) {
    if (verbose()) std::fprintf(stderr, "refused: %s\n", e.what());
    ORTHOPT_FUZZ_CHECK(testing::checkpoint_bytes(f.opt) == f.baseline);  // nothing changed
    return;
  }
  if (verbose()) std::fprintf(stderr, "loaded\n");
  // Loaded: exactly (what the optimizer now holds round-trips through a second optimizer unchanged).
  const std::string loaded = testing::checkpoint_bytes(f.opt);
  std::istringstream again(loaded, std::ios::binary);
  load(f.other, again);
  ORTHOPT_FUZZ_CHECK(testing::checkpoint_bytes(f.other) == loaded);
  // Back to the baseline for the next input.
  std::istringstream back(f.baseline, std::ios::binary);
  load(f.opt, back);
  ORTHOPT_FUZZ_CHECK(testing::checkpoint_bytes(f.opt) == f.baseline);
}

template <class T>
void write_seeds(const std::string& dir, unsigned mode) {
  for (int steps : {0, 1, 3, 5}) {
    fixture<T> f(steps);
    std::ofstream out(dir + "/seed-" + (sizeof(T) == 4 ? "float" : "double") + "-" + std::to_string(steps) + "-steps-mode-" +
                          std::to_string(mode),
                      std::ios::binary);
    out.put(static_cast<char>(mode));
    out << f.baseline;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("ORTHOPT_FUZZ_SEED_DIR")) {
    write_seeds<float>(dir, 0);
    write_seeds<double>(dir, 1);
    write_seeds<float>(dir, 8);  // resealed: mutations reach the parser
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned mode = data[0];
  const char* bytes = reinterpret_cast<const char*>(data + 1);
  if (mode & 1) run<double>(mode, bytes, size - 1);
  else run<float>(mode, bytes, size - 1);
  return 0;
}
