// A host tensor type adapted to orthopt through tensor_traits. Compiled with one ORTHOPT_OMIT_* macro
// defined, the adapter lacks that piece and orthopt::make_view must refuse it with a static_assert that
// names what is missing (tests/compile_fail/CMakeLists.txt checks the text); compiled with none, it is a
// correct adapter and must compile (the control that keeps the command line honest).
#include <orthopt/view.hpp>

namespace host {
struct tensor {
  float* values;
  long rows;
  long cols;
};
}  // namespace host

#if !defined(ORTHOPT_OMIT_TRAITS)
template <>
struct orthopt::tensor_traits<host::tensor> {
#if !defined(ORTHOPT_OMIT_SCALAR_TYPE)
  using scalar_type = float;
#endif
#if !defined(ORTHOPT_OMIT_DATA)
  static float* data(host::tensor& t) { return t.values; }
#endif
  static orthopt::index_t rows(const host::tensor& t) { return t.rows; }
  static orthopt::index_t cols(const host::tensor& t) { return t.cols; }
#if !defined(ORTHOPT_OMIT_STRIDES)
  static orthopt::index_t row_stride(const host::tensor& t) { return t.cols; }
  static orthopt::index_t col_stride(const host::tensor&) { return 1; }
#endif
};
#endif

int main() {
  float storage[6] = {1, 2, 3, 4, 5, 6};
  host::tensor t{storage, 2, 3};
  const orthopt::matrix_view<float> v = orthopt::make_view(t);
  return v(1, 2) == 6.0f ? 0 : 1;
}
