// The tensor concept: views over Eigen types, raw pointers and a foreign host tensor, without copies.
#include <catch2/catch.hpp>

#include <array>
#include <cstdint>
#include <vector>

#include "test_util.hpp"

using orthopt::index_t;
using orthopt::make_view;

namespace host {
/// A host framework's own tensor type (shape and strides in int64, like libtorch's), unknown to orthopt.
struct Tensor {
  std::vector<float> storage;
  std::int64_t offset = 0;
  std::array<std::int64_t, 2> sizes{};
  std::array<std::int64_t, 2> strides{};
  float* data_ptr() { return storage.data() + offset; }
  const float* data_ptr() const { return storage.data() + offset; }
};
}  // namespace host

// What the host writes once to adapt its tensor type.
template <>
struct orthopt::tensor_traits<host::Tensor> {
  using scalar_type = float;
  static float* data(host::Tensor& t) { return t.data_ptr(); }
  static const float* data(const host::Tensor& t) { return t.data_ptr(); }
  static index_t rows(const host::Tensor& t) { return t.sizes[0]; }
  static index_t cols(const host::Tensor& t) { return t.sizes[1]; }
  static index_t row_stride(const host::Tensor& t) { return t.strides[0]; }
  static index_t col_stride(const host::Tensor& t) { return t.strides[1]; }
};

static_assert(orthopt::matrix_like<host::Tensor>);
static_assert(orthopt::matrix_like<Eigen::MatrixXf>);
static_assert(orthopt::matrix_like<Eigen::Map<Eigen::MatrixXd>>);
static_assert(orthopt::matrix_like<Eigen::Ref<const Eigen::MatrixXf>>);
static_assert(!orthopt::matrix_like<std::vector<float>>);
static_assert(!orthopt::matrix_like<int>);

TEST_CASE("views of Eigen matrices, maps, refs and blocks share their memory and strides", "[views]") {
  Eigen::MatrixXf cm(5, 7);
  const auto v = make_view(cm);
  CHECK(v.data == cm.data());
  CHECK((v.rows == 5 && v.cols == 7 && v.row_stride == 1 && v.col_stride == 5));

  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm(4, 6);
  const auto r = make_view(rm);
  CHECK((r.row_stride == 6 && r.col_stride == 1 && r.data == rm.data()));

  auto blk = cm.block(1, 2, 3, 4);
  const auto b = make_view(blk);
  CHECK((b.data == &cm(1, 2) && b.rows == 3 && b.cols == 4 && b.row_stride == 1 && b.col_stride == 5));

  Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>> mp(cm.data(), 5, 3, Eigen::OuterStride<>(10));
  const auto m = make_view(mp);
  CHECK((m.col_stride == 10 && m.data == cm.data()));

  Eigen::Ref<const Eigen::MatrixXf> ref(cm);
  const auto c = make_view(ref);
  static_assert(std::is_same_v<decltype(c), const orthopt::matrix_view<const float>>);
  CHECK(c.data == cm.data());

  const Eigen::MatrixXf& const_cm = cm;
  static_assert(std::is_same_v<decltype(make_view(const_cm)), orthopt::matrix_view<const float>>);

  // Writes through a view land in the Eigen matrix.
  cm.setZero();
  make_view(cm)(3, 4) = 2.5f;
  CHECK(cm(3, 4) == 2.5f);
  make_view(rm).transposed()(5, 3) = 1.5;
  CHECK(rm(3, 5) == 1.5);
}

TEST_CASE("a foreign host tensor becomes a view through tensor_traits, without copying", "[views]") {
  host::Tensor t;
  t.storage.resize(100);
  for (std::size_t i = 0; i < t.storage.size(); ++i) t.storage[i] = static_cast<float>(i);
  t.offset = 3;
  t.sizes = {4, 5};
  t.strides = {10, 2};  // a non-contiguous slice
  auto v = make_view(t);
  CHECK(v.data == t.storage.data() + 3);
  CHECK(v(2, 3) == static_cast<float>(3 + 2 * 10 + 3 * 2));
  v(1, 1) = -1.0f;
  CHECK(t.storage[3 + 10 + 2] == -1.0f);

  // The algorithms run on it directly: NS of the strided foreign tensor into another foreign tensor.
  host::Tensor out;
  out.storage.resize(20);
  out.sizes = {4, 5};
  out.strides = {1, 4};  // column-major
  const auto filler = testing::gaussian(10, 10, 3);  // full rank (unlike a smooth function of the index)
  for (std::size_t i = 0; i < t.storage.size(); ++i) t.storage[i] = static_cast<float>(filler(static_cast<index_t>(i)));
  orthopt::newton_schulz<float, orthopt::eigen_backend> ns(4, 5, orthopt::ns_presets::polar_express(8));
  ns(orthopt::make_const_view(t), make_view(out));
  Eigen::Map<Eigen::MatrixXf> q(out.storage.data(), 4, 5);
  CHECK(testing::orthogonality_error(q.cast<double>()) < 1e-3);
}

TEST_CASE("raw-pointer, transposed, block, diagonal and batch views address the right elements", "[views]") {
  std::vector<double> buf(24);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<double>(i);
  const auto rmv = orthopt::row_major_view(buf.data(), 4, 6);
  CHECK(rmv(2, 3) == 15.0);
  CHECK(rmv.transposed()(3, 2) == 15.0);
  CHECK(rmv.block(1, 2, 2, 3)(1, 2) == rmv(2, 4));
  CHECK(rmv.diagonal().rows == 4);
  CHECK(rmv.diagonal()(3, 0) == rmv(3, 3));
  CHECK(rmv.is_contiguous());
  CHECK_FALSE(rmv.block(0, 0, 2, 2).is_contiguous());
  const auto cmv = orthopt::col_major_view(buf.data(), 4, 6);
  CHECK(cmv(2, 3) == 14.0);
  CHECK(cmv.is_contiguous());

  const auto batch = orthopt::row_major_batch(buf.data(), 2, 3, 4);
  CHECK(batch.count == 2);
  CHECK(batch[1](2, 3) == 23.0);
  const orthopt::batch_view<const double> cb = batch;
  CHECK(cb[1].data == buf.data() + 12);
}
