// The optimizer over named parameters: routing decisions, N-D / batch / row-split registrations equal
// doing the same by hand with the rules, a step equals stepping each rule by hand with lr = base ×
// schedule, and a step that fails a check changes nothing.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "optimizer_test_util.hpp"
#include "test_util.hpp"

using namespace testing;
using orthopt::group_id;
using orthopt::param_router;
using orthopt::route_reason;
using orthopt::rule_kind;

namespace {

using B = backend_under_test;

template <class T>
Mat<T> random_mat(index_t rows, index_t cols, std::uint64_t seed) {
  return gaussian(rows, cols, seed).cast<T>();
}

/// Bit-for-bit equality of two matrices' elements (any storage orders).
template <class T>
bool same_bits(orthopt::matrix_view<const T> a, orthopt::matrix_view<const T> b) {
  if (a.rows != b.rows || a.cols != b.cols) return false;
  for (index_t i = 0; i < a.rows; ++i)
    for (index_t j = 0; j < a.cols; ++j)
      if (std::memcmp(&a(i, j), &b(i, j), sizeof(T)) != 0) return false;
  return true;
}

/// On a backend that batches products (the CUDA backend), a batch's A·Aᵀ are batched GEMMs instead of
/// syrk calls: what sees NS's output (W, AdaMuon's second moment) agrees with matrix-by-matrix steps to
/// NS's rounding, relative to its size; elsewhere the results are bit for bit.
template <class T>
bool same_or_close(orthopt::matrix_view<const T> a, orthopt::matrix_view<const T> b) {
  if constexpr (!batches_products) {
    return same_bits<T>(a, b);
  } else {
    if (a.rows != b.rows || a.cols != b.cols) return false;
    double worst = 0.0, largest = 1.0;
    for (index_t i = 0; i < a.rows; ++i)
      for (index_t j = 0; j < a.cols; ++j) {
        worst = std::max(worst, std::abs(double(a(i, j)) - double(b(i, j))));
        largest = std::max(largest, std::abs(double(b(i, j))));
      }
    return worst <= tol<T>(1000 * schedule_gain(orthopt::ns_presets::keller()), {a.rows, a.cols}) * largest;
  }
}

/// Bit-for-bit equality of two states' step counts and slots.
template <class T>
bool same_state(orthopt::param_state<T, B>& a, orthopt::param_state<T, B>& b) {
  if (a.step() != b.step()) return false;
  const auto sa = a.slots(), sb = b.slots();
  if (sa.size() != sb.size()) return false;
  for (std::size_t k = 0; k < sa.size(); ++k) {
    if (std::strcmp(sa[k].name, sb[k].name) != 0 || sa[k].elements != sb[k].elements) return false;
    if (std::memcmp(sa[k].data, sb[k].data, sa[k].element_bytes * sa[k].elements) != 0) return false;
  }
  return true;
}

/// The four Muon-family rules, each with its default preset.
template <class T>
std::vector<orthopt::any_rule<T, B>> muon_family() {
  return {orthopt::muon<T, B>(), orthopt::adamuon<T, B>(), orthopt::namo<T, B>(), orthopt::namo_d<T, B>()};
}

template <class T>
rule_kind kind_of(const orthopt::any_rule<T, B>& r) {
  return std::visit([](const auto& x) { return std::decay_t<decltype(x)>::kind; }, r);
}

/// A rule and its states, stepped by hand with the rule's own API (the reference for the optimizer).
template <class T>
struct by_hand {
  orthopt::any_rule<T, B> rule;
  double base_lr;
  explicit by_hand(orthopt::any_rule<T, B> r)
      : rule(std::move(r)), base_lr(std::visit([](auto& x) { return x.options().lr; }, rule)) {}
  orthopt::param_state<T, B> make_state(index_t rows, index_t cols, index_t count = 1) {
    return std::visit([&](auto& x) { return x.make_state(rows, cols, count); }, rule);
  }
  void step(orthopt::matrix_view<T> W, orthopt::matrix_view<const T> G, orthopt::param_state<T, B>& s, double multiplier) {
    std::visit(
        [&](auto& x) {
          x.options().lr = base_lr * multiplier;
          x.step(W, G, s);
        },
        rule);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("routing: vectors, embeddings and the head go to AdamW, hidden matrices to the chosen rule",
                   "[optimizer][routing]", float, double) {
  using T = TestType;
  for (auto& matrix_rule : muon_family<T>()) {
    const rule_kind chosen = kind_of<T>(matrix_rule);
    INFO("matrix rule " << orthopt::rule_name(chosen));
    orthopt::optimizer<T, B> opt;
    const group_id hidden = opt.add_group("hidden", std::move(matrix_rule));
    const group_id adam = opt.add_group("adamw", orthopt::adamw<T, B>());
    param_router router(hidden, adam);
    router.override_param("blocks.0.mlp.proj.weight", adam).override_param("transformer.wpe.weight", hidden);

    std::vector<Mat<T>> store;
    store.reserve(16);
    const auto add = [&](const std::string& name, index_t r, index_t c) {
      store.push_back(random_mat<T>(r, c, store.size() + 1));
      return opt.add_param(name, orthopt::make_view(store.back()), router);
    };
    struct expect {
      const char* name;
      index_t rows, cols;
      bool to_adamw;
      route_reason reason;
    };
    const std::vector<expect> cases = {
        {"transformer.wte.weight", 50, 16, true, route_reason::embedding_name},
        {"model.embed_tokens.weight", 50, 16, true, route_reason::embedding_name},
        {"tok_embeddings.weight", 50, 16, true, route_reason::embedding_name},
        {"lm_head.weight", 50, 16, true, route_reason::head_name},
        {"head.weight", 10, 16, true, route_reason::head_name},
        {"blocks.0.attn.multihead.weight", 16, 16, false, route_reason::hidden_matrix},  // "head" inside a word
        {"blocks.0.heads.weight", 16, 16, false, route_reason::hidden_matrix},
        {"blocks.0.ln.weight", 1, 16, true, route_reason::vector_shape},
        {"blocks.0.mlp.fc.bias", 64, 1, true, route_reason::vector_shape},
        {"blocks.0.mlp.fc.weight", 64, 16, false, route_reason::hidden_matrix},
        {"blocks.0.mlp.proj.weight", 16, 64, true, route_reason::name_override},
        {"transformer.wpe.weight", 32, 16, false, route_reason::name_override},  // an embedding sent to Muon
    };
    for (const auto& c : cases) add(c.name, c.rows, c.cols);
    CHECK_NOTHROW(opt.check_overrides_used(router));

    const auto records = opt.routing();
    REQUIRE(records.size() == cases.size());
    for (std::size_t i = 0; i < cases.size(); ++i) {
      INFO("parameter " << cases[i].name << ": " << records[i].why);
      CHECK(records[i].name == cases[i].name);
      CHECK(records[i].reason == cases[i].reason);
      CHECK(records[i].group == (cases[i].to_adamw ? "adamw" : "hidden"));
      CHECK(records[i].rule == (cases[i].to_adamw ? rule_kind::adamw : chosen));
      CHECK(opt.state(orthopt::param_id{i}).kind() == records[i].rule);  // the state was made by that rule
      CHECK(records[i].rows == cases[i].rows);
      CHECK(records[i].cols == cases[i].cols);
    }
    const std::string table = opt.routing_table();
    CHECK_THAT(table, Catch::Contains("lm_head.weight  50x16  -> adamw (adamw): output head: name containing 'lm_head'"));
    CHECK_THAT(table, Catch::Contains("blocks.0.ln.weight  1x16  -> adamw (adamw): shape 1x16 is a vector"));
    CHECK_THAT(table, Catch::Contains(std::string("blocks.0.mlp.fc.weight  64x16  -> hidden (") +
                                      orthopt::rule_name(chosen) + "): hidden matrix 64x16"));
    CHECK_THAT(table, Catch::Contains("transformer.wte.weight  50x16  -> adamw (adamw): embedding: name component 'wte'"));

    // A misspelt override is reported, not ignored.
    router.override_param("blocks.0.mlp.porj.weight", adam);
    CHECK_THROWS_WITH(opt.check_overrides_used(router), Catch::Contains("'blocks.0.mlp.porj.weight'"));
  }
}

TEMPLATE_TEST_CASE("routing: user patterns, batches, and a router whose AdamW group is not AdamW", "[optimizer][routing]",
                   float, double) {
  using T = TestType;
  orthopt::optimizer<T, B> opt;
  const group_id hidden = opt.add_group("hidden", orthopt::muon<T, B>());
  const group_id adam = opt.add_group("adamw", orthopt::adamw<T, B>());
  param_router router(hidden, adam);
  router.head_patterns = {{"classifier", true}};
  router.embedding_patterns.push_back({"patch_embed", false});
  std::vector<T> experts(4 * 6 * 5), classifier(10 * 6), lm(10 * 6);
  CHECK(opt.add_param("classifier.weight", orthopt::row_major_view(classifier.data(), 10, 6), router).index == 0);
  opt.add_param("lm_head.weight", orthopt::row_major_view(lm.data(), 10, 6), router);  // default pattern replaced
  opt.add_param("moe.experts", orthopt::tensor_as_batch(experts.data(), {4, 6, 5}), router);
  const auto r = opt.routing();
  CHECK(r[0].reason == route_reason::head_name);
  CHECK(r[1].reason == route_reason::hidden_matrix);
  CHECK(r[2].reason == route_reason::hidden_matrix);
  CHECK(r[2].count == 4);
  CHECK(opt.state(orthopt::param_id{2}).count() == 4);
  CHECK(opt.routing_table().find("moe.experts  4x6x5  -> hidden (muon)") != std::string::npos);

  const param_router wrong(adam, hidden);  // AdamW group slot given the Muon group
  std::vector<T> v(8);
  CHECK_THROWS_WITH(opt.add_param("x", orthopt::row_major_view(v.data(), 2, 4), wrong),
                    Catch::Contains("'hidden' runs muon, not adamw"));
  CHECK(opt.param_count() == 3);
}

TEST_CASE("name patterns: substring or whole name component", "[optimizer][routing]") {
  const orthopt::name_pattern head{"head", true}, embed{"embed", false};
  CHECK(head.matches("head.weight"));
  CHECK(head.matches("model.head.bias"));
  CHECK(head.matches("model/head/kernel"));
  CHECK(head.matches("head"));
  CHECK_FALSE(head.matches("multihead.weight"));
  CHECK_FALSE(head.matches("heads.0.weight"));
  CHECK_FALSE(head.matches(""));
  CHECK(embed.matches("model.embed_tokens.weight"));
  CHECK(embed.matches("tok_embeddings.weight"));
  CHECK_FALSE(embed.matches("emb.weight"));
  CHECK_FALSE(orthopt::name_pattern{}.matches("anything"));
}

// ---------------------------------------------------------------------------------------------------
// Registration helpers
// ---------------------------------------------------------------------------------------------------

TEST_CASE("tensor_as_matrix, tensor_as_batch and split_rows build the views Muon codebases use", "[optimizer]") {
  std::vector<float> buf(2 * 3 * 4 * 5);
  const auto conv = orthopt::tensor_as_matrix(buf.data(), {2, 3, 4, 5});
  CHECK(conv.rows == 2);
  CHECK(conv.cols == 60);
  CHECK(conv.row_stride == 60);
  CHECK(conv.col_stride == 1);
  const auto vec = orthopt::tensor_as_matrix(buf.data(), {7});
  CHECK((vec.rows == 1 && vec.cols == 7));
  const auto batch = orthopt::tensor_as_batch(buf.data(), {2, 3, 4, 5});  // [2, 3] batch of 4x5
  CHECK(batch.count == 6);
  CHECK((batch.rows() == 4 && batch.cols() == 5 && batch.batch_stride == 20));
  CHECK_THROWS_AS(orthopt::tensor_as_matrix(buf.data(), {}), orthopt::shape_error);
  CHECK_THROWS_WITH(orthopt::tensor_as_matrix(buf.data(), {4, 0, 3}), Catch::Contains("dimension 1 is 0"));
  CHECK_THROWS_WITH(orthopt::tensor_as_batch(buf.data(), {4, 5}), Catch::Contains("at least 3 dimensions"));

  const auto m = orthopt::col_major_view(buf.data(), 12, 10);
  const auto split = orthopt::split_rows(m, 3);
  CHECK(split.count == 3);
  CHECK((split.rows() == 4 && split.cols() == 10));
  CHECK(&split[2](0, 0) == &m(8, 0));
  CHECK(&split[1](3, 9) == &m(7, 9));
  CHECK_THROWS_WITH(orthopt::split_rows(m, 5), Catch::Contains("cannot split 12x10 into 5 row blocks"));
  CHECK_THROWS_AS(orthopt::split_rows(m, 0), orthopt::shape_error);
  CHECK_THROWS_AS(orthopt::split_rows(m, -3), orthopt::shape_error);
}

TEMPLATE_TEST_CASE("N-D, batch and row-split registrations step like the rules by hand", "[optimizer]", float, double) {
  using T = TestType;
  for (auto& rule_proto : muon_family<T>()) {
    INFO("rule " << orthopt::rule_name(kind_of<T>(rule_proto)));
    orthopt::optimizer<T, B> opt;
    const group_id g = opt.add_group("g", rule_proto);
    by_hand<T> ref(rule_proto);

    // A conv filter [out=6, in=2, kh=3, kw=3], row-major as PyTorch stores it. By hand: the 6 x 18
    // matrix, built element by element (filter (o, i, h, w) is column i·9 + h·3 + w), column-major.
    std::vector<T> conv = random_values<T>(6 * 2 * 3 * 3, 11);
    Mat<T> conv_ref(6, 18);
    for (index_t o = 0; o < 6; ++o)
      for (index_t i = 0; i < 2; ++i)
        for (index_t h = 0; h < 3; ++h)
          for (index_t w = 0; w < 3; ++w) conv_ref(o, i * 9 + h * 3 + w) = conv[static_cast<std::size_t>(((o * 2 + i) * 3 + h) * 3 + w)];
    const auto conv_id = opt.add_param("conv", g, orthopt::tensor_as_matrix(conv.data(), {6, 2, 3, 3}));
    auto conv_state = ref.make_state(6, 18);

    // Stacked experts [E=3, 8, 5]: a batch. By hand: three matrices, three states.
    std::vector<T> experts = random_values<T>(3 * 8 * 5, 12);
    std::vector<MatRM<T>> experts_ref;
    std::vector<orthopt::param_state<T, B>> expert_states;
    for (index_t e = 0; e < 3; ++e) {
      experts_ref.push_back(MatRM<T>(Eigen::Map<MatRM<T>>(experts.data() + e * 40, 8, 5)));
      expert_states.push_back(ref.make_state(8, 5));
    }
    const auto experts_id = opt.add_param("experts", g, orthopt::tensor_as_batch(experts.data(), {3, 8, 5}));

    // A fused QKV [3·8, 8], column-major, split in 3 row blocks. By hand: Q, K, V as separate matrices.
    Mat<T> qkv = random_mat<T>(24, 8, 13);
    std::vector<Mat<T>> qkv_ref;
    std::vector<orthopt::param_state<T, B>> qkv_states;
    for (index_t k = 0; k < 3; ++k) {
      qkv_ref.push_back(Mat<T>(qkv.middleRows(k * 8, 8)));
      qkv_states.push_back(ref.make_state(8, 8));
    }
    const auto qkv_id = opt.add_param("qkv", g, orthopt::split_rows(orthopt::make_view(qkv), 3));
    CHECK(opt.state(qkv_id).count() == 3);
    CHECK(opt.state(experts_id).count() == 3);
    CHECK((opt.state(conv_id).rows() == 6 && opt.state(conv_id).cols() == 18));

    for (int t = 0; t < 4; ++t) {
      std::vector<T> g_conv = random_values<T>(conv.size(), 100 + t), g_exp = random_values<T>(experts.size(), 200 + t);
      Mat<T> g_qkv = random_mat<T>(24, 8, 300 + t);
      const std::vector<orthopt::batch_view<const T>> grads = {
          opt.gradient_like(conv_id, g_conv.data()), opt.gradient_like(experts_id, g_exp.data()),
          orthopt::split_rows(orthopt::make_const_view(g_qkv), 3)};
      opt.step(grads);

      Mat<T> g_conv_ref(6, 18);
      for (index_t o = 0; o < 6; ++o)
        for (index_t c = 0; c < 18; ++c) g_conv_ref(o, c) = g_conv[static_cast<std::size_t>(o * 18 + c)];
      ref.step(orthopt::make_view(conv_ref), orthopt::make_const_view(g_conv_ref), conv_state, 1.0);
      for (index_t e = 0; e < 3; ++e) {
        const MatRM<T> ge = Eigen::Map<const MatRM<T>>(g_exp.data() + e * 40, 8, 5);
        ref.step(orthopt::make_view(experts_ref[e]), orthopt::make_const_view(ge), expert_states[e], 1.0);
      }
      for (index_t k = 0; k < 3; ++k) {
        const Mat<T> gk = g_qkv.middleRows(k * 8, 8);
        ref.step(orthopt::make_view(qkv_ref[k]), orthopt::make_const_view(gk), qkv_states[k], 1.0);
      }
    }
    CHECK(same_bits<T>(orthopt::tensor_as_matrix(conv.data(), {6, 2, 3, 3}), orthopt::make_const_view(conv_ref)));
    CHECK(same_state<T>(opt.state(conv_id), conv_state));
    const auto exp_view = orthopt::tensor_as_batch(experts.data(), {3, 8, 5});
    const auto qkv_view = orthopt::split_rows(orthopt::make_view(qkv), 3);
    for (index_t k = 0; k < 3; ++k) {
      INFO("batch item " << k);
      CHECK(same_or_close<T>(exp_view[k], orthopt::make_const_view(experts_ref[k])));
      CHECK(same_or_close<T>(qkv_view[k], orthopt::make_const_view(qkv_ref[k])));
      // The batch state holds item k's tensors at offset k: compare slot by slot.
      auto slots = opt.state(experts_id).slots();
      auto slots_qkv = opt.state(qkv_id).slots();
      const auto ref_slots = expert_states[k].slots();
      const auto ref_slots_qkv = qkv_states[k].slots();
      REQUIRE(slots.size() == ref_slots.size());
      for (std::size_t s = 0; s < slots.size(); ++s) {
        // The budget's accumulators are one set per state, not per matrix (and zero here: no budget).
        if (std::string(slots[s].name) == "ns_observation") continue;
        const std::size_t n = ref_slots[s].elements * ref_slots[s].element_bytes;
        const std::size_t nq = ref_slots_qkv[s].elements * ref_slots_qkv[s].element_bytes;
        if (batches_products && std::string(slots[s].name) == "second_moment") {
          const index_t rows = opt.state(experts_id).rows(), cols = opt.state(experts_id).cols();
          CHECK(same_or_close<T>(orthopt::row_major_view<const T>(static_cast<const T*>(slots[s].data) + k * rows * cols, rows, cols),
                                 orthopt::row_major_view<const T>(static_cast<const T*>(ref_slots[s].data), rows, cols)));
          continue;  // (the QKV blocks' second moments: the same argument)
        }
        CHECK(std::memcmp(static_cast<unsigned char*>(slots[s].data) + k * n, ref_slots[s].data, n) == 0);
        CHECK(std::memcmp(static_cast<unsigned char*>(slots_qkv[s].data) + k * nq, ref_slots_qkv[s].data, nq) == 0);
      }
    }
    CHECK(opt.state(experts_id).step() == 4);
  }
}

// ---------------------------------------------------------------------------------------------------
// Stepping
// ---------------------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("an optimizer step equals stepping each rule by hand with lr = base lr x schedule(step)",
                   "[optimizer]", float, double) {
  using T = TestType;
  const orthopt::warmup_stable_decay wsd(2, 8, 0.5, 0.2);
  const orthopt::cosine_schedule cosine(6, 1, 0.1);
  std::vector<orthopt::any_rule<T, B>> rules = {
      orthopt::muon<T, B>(orthopt::muon_presets::moonlight()), orthopt::adamuon<T, B>(orthopt::adamuon_presets::paper()),
      orthopt::namo<T, B>(orthopt::namo_presets::paper()), orthopt::namo_d<T, B>(orthopt::namo_d_presets::gpt2_small()),
      orthopt::adamw<T, B>(orthopt::adamw_presets::torch())};
  const std::vector<shape> shapes = {{12, 20}, {20, 12}, {9, 9}, {7, 15}, {5, 6}};

  orthopt::optimizer<T, B> opt;
  std::vector<by_hand<T>> refs;
  std::vector<Mat<T>> params, params_ref;
  std::vector<MatRM<T>> second, second_ref;  // a second, row-major parameter in each group
  std::vector<orthopt::param_state<T, B>> states, states2;
  params.reserve(5);
  second.reserve(5);
  for (std::size_t i = 0; i < rules.size(); ++i) {
    const bool use_wsd = i % 2 == 0;
    orthopt::lr_schedule sched = use_wsd ? orthopt::lr_schedule(wsd) : orthopt::lr_schedule(cosine);
    opt.add_group("g" + std::to_string(i), rules[i], sched);
    refs.emplace_back(rules[i]);
    params.push_back(random_mat<T>(shapes[i].rows, shapes[i].cols, 40 + i));
    second.push_back(random_mat<T>(shapes[i].cols, shapes[i].rows, 50 + i));
    params_ref.push_back(params.back());
    second_ref.push_back(second.back());
    states.push_back(refs[i].make_state(shapes[i].rows, shapes[i].cols));
    states2.push_back(refs[i].make_state(shapes[i].cols, shapes[i].rows));
  }
  // Registration order interleaves the groups.
  for (std::size_t i = 0; i < rules.size(); ++i) opt.add_param("p" + std::to_string(i), group_id{i}, orthopt::make_view(params[i]));
  for (std::size_t i = 0; i < rules.size(); ++i) opt.add_param("q" + std::to_string(i), group_id{i}, orthopt::make_view(second[i]));

  for (std::int64_t t = 0; t < 7; ++t) {
    if (t == 3) {  // hyper-parameters change between steps, the states stay
      opt.group(group_id{0}).lr = 3e-3;
      refs[0].base_lr = 3e-3;
      opt.group(group_id{0}).template options<orthopt::muon_options>().momentum = 0.8;
      std::get<0>(refs[0].rule).options().momentum = 0.8;
      opt.group(group_id{4}).template options<orthopt::adamw_options>().weight_decay = 0.3;
      std::get<4>(refs[4].rule).options().weight_decay = 0.3;
      opt.group(group_id{2}).schedule = orthopt::constant_schedule{};
    }
    std::vector<Mat<T>> g1, g2;
    std::vector<orthopt::batch_view<const T>> grads;
    for (std::size_t i = 0; i < rules.size(); ++i) g1.push_back(random_mat<T>(shapes[i].rows, shapes[i].cols, 1000 * (t + 1) + i));
    for (std::size_t i = 0; i < rules.size(); ++i) g2.push_back(random_mat<T>(shapes[i].cols, shapes[i].rows, 2000 * (t + 1) + i));
    for (auto& g : g1) grads.push_back(orthopt::as_batch(orthopt::make_const_view(g)));
    for (auto& g : g2) grads.push_back(orthopt::as_batch(orthopt::make_const_view(g)));
    for (std::size_t i = 0; i < rules.size(); ++i) {
      const double expected_lr = refs[i].base_lr * (i == 2 && t >= 3 ? 1.0 : (i % 2 == 0 ? wsd(t) : cosine(t)));
      CHECK(opt.next_lr(group_id{i}) == expected_lr);
    }
    CHECK(opt.steps_taken() == t);
    opt.step(grads);

    for (std::size_t i = 0; i < rules.size(); ++i) {
      const double mult = i == 2 && t >= 3 ? 1.0 : (i % 2 == 0 ? wsd(t) : cosine(t));
      refs[i].step(orthopt::make_view(params_ref[i]), orthopt::make_const_view(g1[i]), states[i], mult);
      refs[i].step(orthopt::make_view(second_ref[i]), orthopt::make_const_view(g2[i]), states2[i], mult);
    }
    for (std::size_t i = 0; i < rules.size(); ++i) {
      INFO("step " << t << ", group " << i << " (" << orthopt::rule_name(kind_of<T>(rules[i])) << ")");
      REQUIRE(same_bits<T>(orthopt::make_const_view(params[i]), orthopt::make_const_view(params_ref[i])));
      REQUIRE(same_bits<T>(orthopt::make_const_view(second[i]), orthopt::make_const_view(second_ref[i])));
      REQUIRE(same_state<T>(opt.state(orthopt::param_id{i}), states[i]));
      REQUIRE(same_state<T>(opt.state(orthopt::param_id{i + rules.size()}), states2[i]));
    }
  }
  CHECK(opt.steps_taken() == 7);
  // The rule's own lr shows the last scheduled value; the base lr is the group's.
  CHECK(std::get<0>(opt.group(group_id{0}).rule).options().lr == 3e-3 * wsd(6));
  CHECK(opt.group(group_id{0}).lr == 3e-3);
  // The parameters moved (the test compares something).
  const Mat<T> initial = random_mat<T>(12, 20, 40);
  CHECK_FALSE(same_bits<T>(orthopt::make_const_view(params[0]), orthopt::make_const_view(initial)));
}

TEMPLATE_TEST_CASE("bound gradients and gradient_like give the same steps as passing gradients", "[optimizer]", float,
                   double) {
  using T = TestType;
  toy_model<T> a, b;
  auto opt_a = a.make_optimizer();
  auto opt_b = b.make_optimizer();
  CHECK_THROWS_WITH(opt_b.step(), Catch::Contains("has no bound gradient"));
  for (std::size_t i = 0; i < b.tensors.size(); ++i) {
    const orthopt::param_id p{i};
    opt_b.bind_gradient(p, opt_b.gradient_like(p, b.tensors[i].grad.data()));
  }
  for (std::int64_t t = 0; t < 3; ++t) {
    a.fill_gradients(t);
    b.fill_gradients(t);
    opt_a.step(a.gradient_views());
    opt_b.step();
  }
  CHECK(snapshot(opt_a) == snapshot(opt_b));
  CHECK(opt_b.steps_taken() == 3);
}

TEMPLATE_TEST_CASE("an empty gradient view skips its parameter: value, state and step count stay", "[optimizer]", float,
                   double) {
  using T = TestType;
  toy_model<T> b;
  auto opt_b = b.make_optimizer();
  const std::size_t n = b.tensors.size();
  for (std::size_t skipped = 0; skipped < n; ++skipped) {
    b.fill_gradients(static_cast<std::int64_t>(skipped));
    std::vector<std::vector<T>> values_before;
    std::vector<std::vector<unsigned char>> states_before;
    std::vector<std::int64_t> counts_before;
    for (std::size_t i = 0; i < n; ++i) {
      values_before.push_back(b.tensors[i].value);
      states_before.push_back(state_bytes(opt_b, i));
      counts_before.push_back(opt_b.state(orthopt::param_id{i}).step());
    }
    auto grads = b.gradient_views();
    grads[skipped] = {};  // no gradient for this parameter this step
    opt_b.step(grads);
    for (std::size_t i = 0; i < n; ++i) {
      INFO("parameter " << b.tensors[i].name << ", skipped " << b.tensors[skipped].name);
      const bool stepped = i != skipped;
      CHECK((b.tensors[i].value != values_before[i]) == stepped);
      CHECK((state_bytes(opt_b, i) != states_before[i]) == stepped);
      CHECK(opt_b.state(orthopt::param_id{i}).step() == counts_before[i] + (stepped ? 1 : 0));
    }
  }
  CHECK(opt_b.steps_taken() == static_cast<std::int64_t>(n));
  // Bound gradients cannot say "none": step() without arguments still refuses a missing binding.
  CHECK_THROWS_WITH(opt_b.step(), Catch::Contains("has no bound gradient"));
}

TEMPLATE_TEST_CASE("a step that fails a check changes no parameter, no state and no step count", "[optimizer]", float,
                   double) {
  using T = TestType;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  toy_model<T> model, twin;
  auto opt = model.make_optimizer();
  auto twin_opt = twin.make_optimizer();
  model.run(opt, 0, 2);
  twin.run(twin_opt, 0, 2);
  REQUIRE(snapshot(opt) == snapshot(twin_opt));

  const auto fails_cleanly = [&](auto&& mutate_and_step, const auto&... message_parts) {
    const auto before = snapshot(opt);
    model.fill_gradients(2);
    bool threw = false;
    try {
      mutate_and_step();
    } catch (const orthopt::error& e) {
      threw = true;
      INFO("message: " << e.what());
      const auto contains = [&](const std::string& part) { CHECK_THAT(std::string(e.what()), Catch::Contains(part)); };
      (contains(message_parts), ...);
    }
    CHECK(threw);
    CHECK(snapshot(opt) == before);
  };
  const std::size_t head = model.tensors.size() - 1;  // the last registered parameter
  REQUIRE(model.tensors[head].name == "lm_head.weight");
  const std::size_t experts = 4;
  REQUIRE(model.tensors[experts].name == "blocks.0.moe.experts");

  SECTION("NaN in the last parameter's gradient") {
    fails_cleanly([&] {
      auto g = model.gradient_views();
      model.tensors[head].grad[17] = nan;
      opt.step(g);
    }, "the gradient of 'lm_head.weight' has ");
  }
  SECTION("a finite gradient entry in the last parameter that would overflow its step") {
    fails_cleanly([&] {
      model.tensors[head].grad[17] = std::numeric_limits<T>::max() / T(2);
      opt.step(model.gradient_views());
    }, "parameter 'lm_head.weight': gradient(");
  }
  SECTION("a non-finite momentum in the last parameter's state") {
    T& entry = opt.state(orthopt::param_id{head}).momentum(0)(0, 1);
    const T kept = entry;
    entry = nan;
    fails_cleanly([&] { opt.step(model.gradient_views()); },
                  "parameter 'lm_head.weight': the state's momentum(0, 1) is nan");
    entry = kept;
  }
  SECTION("Inf in one matrix of a batch") {
    fails_cleanly([&] {
      model.tensors[experts].grad[2 * 40 + 3] = -inf;
      opt.step(model.gradient_views());
    }, "of batch item 2");
  }
  SECTION("a gradient of the wrong shape") {
    fails_cleanly([&] {
      auto g = model.gradient_views();
      g[2] = orthopt::as_batch(orthopt::row_major_view<const T>(model.tensors[2].grad.data(), 8, 16));
      opt.step(g);
    }, "the gradient of 'blocks.0.mlp.fc.weight' is 8x16 but the parameter is 16x8");
  }
  SECTION("a gradient batch of the wrong count") {
    fails_cleanly([&] {
      auto g = model.gradient_views();
      g[1].count = 2;
      opt.step(g);
    }, "is 2 x 8x8 but the parameter is 3 x 8x8");
  }
  SECTION("a gradient with a null pointer") {
    fails_cleanly([&] {
      auto g = model.gradient_views();
      g[head].first.data = nullptr;
      opt.step(g);
    }, "null data pointer");
  }
  SECTION("the last parameter's gradient in its own state's momentum") {
    // Refused by the rule's own check, which ran only when the parameter was stepped, after every
    // earlier parameter had been written.
    fails_cleanly([&] {
      auto g = model.gradient_views();
      const orthopt::param_id last{head};
      g[head] = opt.gradient_like(last, opt.state(last).momentum(0).data);
      opt.step(g);
    }, "the gradient of 'lm_head.weight' [", "lies in the momentum of the state of 'lm_head.weight'");
  }
  SECTION("a gradient in another parameter's state") {
    // The rules check only their own state; a step would read the first parameter's momentum while
    // writing it (on another thread in a parallel step).
    fails_cleanly([&] {
      auto g = model.gradient_views();
      g[head] = opt.gradient_like(orthopt::param_id{head}, opt.state(orthopt::param_id{0}).momentum(0).data);
      opt.step(g);
    }, "lies in the momentum of the state of 'transformer.wte.weight'");
  }
  SECTION("too few gradients") {
    fails_cleanly([&] {
      auto g = model.gradient_views();
      g.pop_back();
      opt.step(g);
    }, "7 gradients for 8 parameters");
  }
  SECTION("a schedule that gives NaN") {
    fails_cleanly([&] {
      opt.group(*opt.find_group("adamw")).schedule = [](std::int64_t) { return std::nan(""); };
      opt.step(model.gradient_views());
    }, "group 'adamw' gets lr");
    opt.group(*opt.find_group("adamw")).schedule = orthopt::warmup_stable_decay(2, 12, 0.5, 0.1);
  }
  SECTION("a schedule emptied after add_group (std::bad_function_call before)") {
    fails_cleanly([&] {
      opt.group(*opt.find_group("adamw")).schedule = nullptr;
      opt.step(model.gradient_views());
    }, "group 'adamw' has an empty schedule");
    opt.group(*opt.find_group("adamw")).schedule = orthopt::warmup_stable_decay(2, 12, 0.5, 0.1);
  }
  SECTION("a value the element type cannot hold, in a later group") {
    if constexpr (sizeof(T) == 4) {
      fails_cleanly([&] {
        opt.group(*opt.find_group("adamw")).template options<orthopt::adamw_options>().eps = 1e-50;
        opt.step(model.gradient_views());
      }, "eps = 1e-50 rounds to 0");
      opt.group(*opt.find_group("adamw")).template options<orthopt::adamw_options>().eps = 1e-8;
    }
  }
  SECTION("an invalid hyper-parameter in the last group") {
    fails_cleanly([&] {
      opt.group(*opt.find_group("adamw")).template options<orthopt::adamw_options>().beta2 = 1.5;
      opt.step(model.gradient_views());
    }, "beta2");
    opt.group(*opt.find_group("adamw")).template options<orthopt::adamw_options>().beta2 = 0.95;
  }
  SECTION("a group whose rule was replaced by another kind") {
    auto saved = opt.group(*opt.find_group("namo_d")).rule;
    fails_cleanly([&] {
      auto other = orthopt::adamuon_presets::code();
      other.lr = std::get<3>(saved).options().lr;  // the snapshot includes each rule's lr
      opt.group(*opt.find_group("namo_d")).rule = orthopt::adamuon<T, B>(other);
      opt.step(model.gradient_views());
    }, "has a namo_d state but its group 'namo_d' now runs adamuon");
    opt.group(*opt.find_group("namo_d")).rule = std::move(saved);
  }
  SECTION("the last parameter's state at the largest step count") {
    const orthopt::param_id last{head};
    const std::int64_t saved = opt.state(last).step();
    opt.state(last).set_step(std::numeric_limits<std::int64_t>::max());
    fails_cleanly([&] { opt.step(model.gradient_views()); }, "'lm_head.weight' is at step count 9223372036854775807");
    opt.state(last).set_step(saved);
  }
  SECTION("the optimizer's own step count at its largest") {
    const std::int64_t saved = opt.steps_taken();
    opt.set_steps_taken(std::numeric_limits<std::int64_t>::max());
    fails_cleanly([&] { opt.step(model.gradient_views()); }, "steps_taken = 9223372036854775807");
    opt.set_steps_taken(saved);
  }
  // After the failure the next good step is exactly the step the twin takes: nothing leaked (the
  // rules' lr was restored too).
  model.run(opt, 2, 4);
  twin.run(twin_opt, 2, 4);
  CHECK(snapshot(opt) == snapshot(twin_opt));
}

TEMPLATE_TEST_CASE("registration errors name the problem", "[optimizer]", float, double) {
  using T = TestType;
  orthopt::optimizer<T, B> opt;
  const group_id g = opt.add_group("muon", orthopt::muon<T, B>());
  CHECK_THROWS_WITH(opt.add_group("muon", orthopt::adamw<T, B>()), Catch::Contains("a group named 'muon' exists"));
  CHECK_THROWS_AS(opt.add_group("", orthopt::adamw<T, B>()), orthopt::value_error);
  CHECK_THROWS_WITH(opt.add_group("x", orthopt::adamw<T, B>(), orthopt::lr_schedule{}), Catch::Contains("empty schedule"));
  std::vector<T> buf(64);
  opt.add_param("w", g, orthopt::row_major_view(buf.data(), 8, 8));
  CHECK_THROWS_WITH(opt.add_param("w", g, orthopt::row_major_view(buf.data(), 8, 8)), Catch::Contains("'w' exists already"));
  CHECK_THROWS_AS(opt.add_param("", g, orthopt::row_major_view(buf.data(), 8, 8)), orthopt::value_error);
  CHECK_THROWS_WITH(opt.add_param("v", group_id{7}, orthopt::row_major_view(buf.data(), 8, 8)),
                    Catch::Contains("group index 7"));
  CHECK_THROWS_AS(opt.add_param("v", g, orthopt::matrix_view<T>(nullptr, 8, 8, 8, 1)), orthopt::shape_error);
  CHECK_THROWS_WITH(opt.add_param("v", g, orthopt::batch_view<T>(orthopt::row_major_view(buf.data(), 2, 2), 3, 0)),
                    Catch::Contains("batch stride 0"));
  CHECK_THROWS_WITH(opt.group(g).template options<orthopt::adamw_options>(), Catch::Contains("the rule is muon"));
  CHECK(opt.param_count() == 1);
  CHECK(opt.find_param("w").has_value());
  CHECK_FALSE(opt.find_param("v").has_value());
  CHECK_THROWS_AS(opt.state(orthopt::param_id{1}), orthopt::value_error);
}

// record_ns_residuals switched a group's plans one by one, so a plan that cannot record (more than 64
// iterations) left the members before it switched on. It now checks them all first.
TEMPLATE_TEST_CASE("record_ns_residuals on a group is all or nothing", "[optimizer][errors]", float, double) {
  using T = TestType;
  orthopt::optimizer<T, B> opt;
  const group_id g = opt.add_group("muon", orthopt::muon<T, B>());
  std::vector<T> a(64), b(64), c(64);
  const auto pa = opt.add_param("a", g, orthopt::row_major_view(a.data(), 8, 8));
  const auto pb = opt.add_param("b", g, orthopt::row_major_view(b.data(), 8, 8));
  const auto pc = opt.add_param("c", g, orthopt::row_major_view(c.data(), 8, 8));
  opt.set_ns_steps(pb, 70);
  CHECK_THROWS_WITH(opt.record_ns_residuals(g, true), Catch::Contains("residuals are recorded for at most 64"));
  for (const auto p : {pa, pb, pc}) CHECK_FALSE(opt.state(p).ns_plan()->records_residuals());
  opt.set_ns_steps(pb, 5);
  opt.record_ns_residuals(g, true);
  for (const auto p : {pa, pb, pc}) CHECK(opt.state(p).ns_plan()->records_residuals());
}
