// Overlapping memory: the exact overlap test against brute force, and every entry
// point refusing outputs, parameters and gradients that share memory, before anything is written.
#include <catch2/catch.hpp>

#include <orthopt/optimizer.hpp>

#include <random>
#include <set>

#include "test_util.hpp"

using namespace testing;
namespace presets = orthopt::ns_presets;
using orthopt::matrix_view;

namespace {
std::set<const float*> addresses(const matrix_view<const float>& v) {
  std::set<const float*> a;
  for (index_t i = 0; i < v.rows; ++i)
    for (index_t j = 0; j < v.cols; ++j) a.insert(v.data + i * v.row_stride + j * v.col_stride);
  return a;
}
bool brute_force_overlap(const matrix_view<const float>& a, const matrix_view<const float>& b) {
  const auto sa = addresses(a), sb = addresses(b);
  for (const float* p : sa)
    if (sb.count(p)) return true;
  return false;
}
bool brute_force_self_overlap(const matrix_view<const float>& v) {
  return static_cast<index_t>(addresses(v).size()) < v.rows * v.cols;
}

/// Whether f throws orthopt::shape_error whose message contains `text`.
template <class F>
bool refuses(F&& f, const std::string& text) {
  try {
    f();
  } catch (const orthopt::shape_error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(text) != std::string::npos);
    return true;
  }
  return false;
}
}  // namespace

TEST_CASE("views_overlap and view_overlaps_itself agree with brute force on random strided views", "[overlap]") {
  std::vector<float> buffer(4096);
  std::mt19937_64 rng(20261201);
  std::uniform_int_distribution<index_t> extent(1, 9), stride(1, 23), offset(0, 600);
  int exact = 0, conservative = 0, self = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const index_t r = stride(rng), c = stride(rng);
    const matrix_view<const float> a{buffer.data() + offset(rng), extent(rng), extent(rng), r, c};
    const bool same_strides = trial % 3 != 0;
    const matrix_view<const float> b{buffer.data() + offset(rng), extent(rng), extent(rng), same_strides ? r : stride(rng),
                                     same_strides ? c : stride(rng)};
    const bool truth = brute_force_overlap(a, b);
    const bool got = orthopt::views_overlap(a, b);
    INFO("trial " << trial << ": a " << orthopt::describe_view(a) << " at " << (a.data - buffer.data()) << ", b "
                  << orthopt::describe_view(b) << " at " << (b.data - buffer.data()));
    const bool strides_agree = (a.rows == 1 || b.rows == 1 || a.row_stride == b.row_stride) &&
                               (a.cols == 1 || b.cols == 1 || a.col_stride == b.col_stride);
    if (strides_agree) {
      REQUIRE(got == truth);  // exact
      ++exact;
    } else {
      REQUIRE((got || !truth));  // conservative: never misses an overlap
      ++conservative;
    }
    REQUIRE(orthopt::views_overlap(b, a) == got);
    REQUIRE(orthopt::view_overlaps_itself(a) == brute_force_self_overlap(a));
    self += brute_force_self_overlap(a);
  }
  CHECK(exact > 10000);
  CHECK(conservative > 5000);
  CHECK(self > 100);
}

TEMPLATE_TEST_CASE("Newton–Schulz and the exact polar refuse outputs that partially overlap, allow in place",
                   "[overlap][ns]", float, double) {
  using T = TestType;
  const index_t m = 8, n = 12;
  std::vector<T> buf(static_cast<std::size_t>(4 * m * n));
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<T>(std::sin(0.3 * double(i)));
  const std::vector<T> before = buf;
  orthopt::newton_schulz<T, backend_under_test> ns(m, n, presets::keller());
  orthopt::exact_polar<T, backend_under_test> polar(m, n);
  const auto x = orthopt::row_major_view<const T>(buf.data(), m, n);
  const auto shifted = orthopt::row_major_view(buf.data() + n, m, n);  // one row further: shares 7 rows
  CHECK(refuses([&] { ns(x, shifted); }, "overlaps the input"));
  CHECK(refuses([&] { polar(x, shifted); }, "overlaps the input"));
  const matrix_view<T> self_overlapping{buf.data() + 2 * m * n, m, n, 1, 1};
  CHECK(refuses([&] { ns(x, self_overlapping); }, "addresses some elements twice"));
  CHECK(refuses([&] { polar(x, self_overlapping); }, "addresses some elements twice"));
  // The transposed view of the input's own memory as the output: same elements, other strides.
  orthopt::newton_schulz<T, backend_under_test> square(m, m, presets::keller());
  CHECK(refuses([&] { square(orthopt::row_major_view<const T>(buf.data(), m, m), orthopt::row_major_view(buf.data(), m, m).transposed()); },
                "overlaps the input"));
  CHECK(buf == before);  // nothing was written
  // Batches: outputs overlapping each other (batch stride 1, or −16 for 4×4 items) or another item's input.
  orthopt::newton_schulz<T, backend_under_test> small(4, 4, presets::keller());
  const orthopt::batch_view<const T> in(orthopt::row_major_view<const T>(buf.data(), 4, 4), 3, 16);
  CHECK(refuses([&] { small(in, orthopt::batch_view<T>(orthopt::row_major_view(buf.data() + 100, 4, 4), 3, 1)); }, "share memory"));
  CHECK(refuses([&] { small(in, orthopt::batch_view<T>(orthopt::row_major_view(buf.data() + 100, 4, 4), 3, -8)); }, "share memory"));
  CHECK(refuses([&] { small(in, orthopt::batch_view<T>(orthopt::row_major_view(buf.data() + 16, 4, 4), 3, 16)); }, "overlaps the input"));
  CHECK(buf == before);
  // Allowed: in place (the same view), and disjoint outputs interleaved with the input (rows of a stack).
  std::vector<T> stack(buf.begin(), buf.begin() + 3 * 16), expected(stack.size());
  small(orthopt::batch_view<const T>(orthopt::row_major_view<const T>(stack.data(), 4, 4), 3, 16),
        orthopt::batch_view<T>(orthopt::row_major_view(expected.data(), 4, 4), 3, 16));
  small(orthopt::batch_view<const T>(orthopt::row_major_view<const T>(stack.data(), 4, 4), 3, 16),
        orthopt::batch_view<T>(orthopt::row_major_view(stack.data(), 4, 4), 3, 16));
  CHECK(stack == expected);
  Mat<T> fused = gaussian(12, 5, 3).cast<T>();  // column-major: row blocks interleave in memory
  Mat<T> out(12, 5);
  orthopt::newton_schulz<T, backend_under_test> blocks(4, 5, presets::keller());
  CHECK_NOTHROW(blocks(orthopt::split_rows(orthopt::make_view(fused).as_const(), 3), orthopt::split_rows(orthopt::make_view(out), 3)));
  CHECK_NOTHROW(blocks(orthopt::split_rows(orthopt::make_view(fused).as_const(), 3), orthopt::split_rows(orthopt::make_view(fused), 3)));
}

TEMPLATE_TEST_CASE("a rule step refuses a gradient, parameter or state that share memory, and changes nothing",
                   "[overlap][rules]", float, double) {
  using T = TestType;
  orthopt::muon<T, backend_under_test> muon(orthopt::muon_presets::moonlight());
  orthopt::adamw<T, backend_under_test> adamw(orthopt::adamw_presets::torch());
  const index_t m = 6, n = 10;
  std::vector<T> buf(static_cast<std::size_t>(8 * m * n));
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<T>(std::cos(0.7 * double(i)));
  const std::vector<T> before = buf;
  auto st = muon.make_state(m, n);
  auto ast = adamw.make_state(m, n);
  const auto W = orthopt::row_major_view(buf.data(), m, n);
  CHECK(refuses([&] { muon.step(W, W.as_const(), st); }, "share memory"));                       // G is W
  CHECK(refuses([&] { adamw.step(W, W.as_const(), ast); }, "share memory"));
  CHECK(refuses([&] { muon.step(W, orthopt::row_major_view<const T>(buf.data() + 3, m, n), st); }, "share memory"));  // partial
  const matrix_view<T> self_overlapping{buf.data(), m, n, 1, 1};
  CHECK(refuses([&] { muon.step(self_overlapping, orthopt::row_major_view<const T>(buf.data() + 4 * m * n, m, n), st); },
                "addresses some elements twice"));
  // The state's own momentum passed as the gradient.
  CHECK(refuses([&] { muon.step(W, st.momentum(0).as_const(), st); }, "overlaps the state's momentum"));
  CHECK(refuses([&] { adamw.step(ast.momentum(0), orthopt::row_major_view<const T>(buf.data() + 4 * m * n, m, n), ast); },
                "overlaps the state's momentum"));
  // Batches: parameter items sharing memory (batch stride 1 and −m·n/2), and gradient item 1 = parameter item 0.
  auto bst = muon.make_state(m, n, 2);
  const auto G2 = orthopt::batch_view<const T>(orthopt::row_major_view<const T>(buf.data() + 4 * m * n, m, n), 2, m * n);
  CHECK(refuses([&] { muon.step(orthopt::batch_view<T>(W, 2, 1), G2, bst); }, "share memory"));
  CHECK(refuses([&] { muon.step(orthopt::batch_view<T>(orthopt::row_major_view(buf.data() + m * n, m, n), 2, -m * n / 2), G2, bst); },
                "share memory"));
  const auto W2 = orthopt::batch_view<T>(orthopt::row_major_view(buf.data() + m * n, m, n), 2, m * n);  // items 1, 2
  const auto G_item1_is_W_item0 = orthopt::batch_view<const T>(orthopt::row_major_view<const T>(buf.data(), m, n), 2, m * n);
  CHECK(refuses([&] { muon.step(W2, G_item1_is_W_item0, bst); }, "share memory"));
  CHECK(buf == before);
  CHECK(st.step() == 0);
  CHECK(bst.step() == 0);
  // Interleaved but disjoint: the row blocks of a column-major fused matrix step fine.
  Mat<T> fused = gaussian(3 * m, n, 5).cast<T>(), fused_grad = gaussian(3 * m, n, 6).cast<T>();
  auto fst = muon.make_state(m, n, 3);
  CHECK_NOTHROW(muon.step(orthopt::split_rows(orthopt::make_view(fused), 3), orthopt::split_rows(orthopt::make_view(fused_grad).as_const(), 3), fst));
  CHECK(fst.step() == 1);
}

TEMPLATE_TEST_CASE("the optimizer refuses tied or overlapping parameters and gradients that alias parameters",
                   "[overlap][optimizer]", float, double) {
  using T = TestType;
  using B = backend_under_test;
  orthopt::optimizer<T, B> opt;
  const auto g = opt.add_group("muon", orthopt::muon<T, B>(orthopt::muon_presets::moonlight()));
  Mat<T> embed = gaussian(16, 8, 7).cast<T>();
  Mat<T> fused = gaussian(24, 8, 8).cast<T>();  // Q, K, V row blocks of one column-major matrix
  opt.add_param("embed", g, orthopt::make_view(embed));
  // The usual tie: the output head is the embedding matrix (here: the same memory, as its transpose).
  CHECK(refuses([&] { opt.add_param("head", g, orthopt::make_view(embed).transposed()); }, "shares memory with parameter 'embed'"));
  CHECK(refuses([&] { opt.add_param("part", g, orthopt::make_view(embed).block(4, 0, 8, 8)); }, "shares memory"));
  CHECK(opt.param_count() == 1);
  // Disjoint blocks of one buffer register fine, even when their address ranges interleave.
  const auto blocks = orthopt::split_rows(orthopt::make_view(fused), 3);
  for (index_t k = 0; k < 3; ++k) opt.add_param("qkv." + std::to_string(k), g, blocks[k]);
  CHECK(opt.param_count() == 4);
  // A gradient that is another parameter's memory: refused at the step, nothing changed.
  Mat<T> g_embed = gaussian(16, 8, 9).cast<T>();
  Mat<T> g_fused = gaussian(24, 8, 10).cast<T>();
  const auto g_blocks = orthopt::split_rows(orthopt::make_view(g_fused).as_const(), 3);
  std::vector<orthopt::batch_view<const T>> grads = {orthopt::batch_view<const T>(orthopt::make_view(g_embed).as_const(), 1, 0),
                                                    orthopt::batch_view<const T>(g_blocks[0], 1, 0),
                                                    orthopt::batch_view<const T>(blocks[0].as_const(), 1, 0),  // qkv.1's gradient = qkv.0
                                                    orthopt::batch_view<const T>(g_blocks[2], 1, 0)};
  const Mat<T> embed_before = embed, fused_before = fused;
  CHECK(refuses([&] { opt.step(grads); }, "the gradient of 'qkv.1'"));
  CHECK(embed == embed_before);
  CHECK(fused == fused_before);
  CHECK(opt.steps_taken() == 0);
  grads[2] = orthopt::batch_view<const T>(g_blocks[1], 1, 0);
  CHECK_NOTHROW(opt.step(grads));
  CHECK(opt.steps_taken() == 1);
}
