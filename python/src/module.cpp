// SPDX-License-Identifier: Apache-2.0
//
// orthopt._core: the extension module under the Python package orthopt (python/orthopt). It holds the
// optimizer classes of each backend and element type (Optimizer_<backend>_<element>), the array
// functions dispatched on the array's element type and device, the router, and orthopt's exceptions as
// Python classes: OrthoptError; ShapeError and BadValueError (also ValueError); BadTypeError (also
// TypeError).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <tuple>
#include <vector>

#include "arrays.hpp"
#include "instantiate.hpp"
#ifdef ORTHOPT_PY_CUDA_HOST_EMULATION
#include "cuda_host_control.hpp"
#endif
#include "options.hpp"
#include "orthopt/errors.hpp"
#include "orthopt/name_pattern.hpp"
#include "orthopt/routing.hpp"
#include "orthopt/version.hpp"

namespace nb = nanobind;
using namespace orthopt::python;

namespace {

PyObject* orthopt_error = nullptr;
PyObject* shape_error_type = nullptr;
PyObject* bad_value_type = nullptr;
PyObject* bad_type_type = nullptr;

PyObject* new_exception(nb::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("orthopt.") + name;
  PyObject* t = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (t == nullptr) throw nb::python_error();
  m.attr(name) = nb::handle(t);
  return t;
}

struct entries {
  backend_entry eigen32, eigen64, blas32, blas64, cuda32, cuda64, cudabf16;
} table;

const backend_entry& entry_for(const ro_array& x, const std::string& backend) {
  const element e = element_of(x);
  if (on_cuda(x)) {
#ifdef ORTHOPT_PY_HAVE_CUDA
    if (e == element::float32) return table.cuda32;
    if (e == element::float64) return table.cuda64;
    if (e == element::bfloat16) return table.cudabf16;
    throw type_problem("orthopt: the input is " + dtype_text(x) + "; CUDA arrays may be float32, float64 or bfloat16");
#else
    throw type_problem("orthopt: the input is in CUDA memory, but this build of orthopt has no CUDA backend "
                       "(reinstall where nvcc is on PATH, or with --config-settings=cmake.define.ORTHOPT_PYTHON_CUDA=ON)");
#endif
  }
  if (!on_cpu(x)) throw type_problem("orthopt: the input is on a device orthopt does not support (DLPack device type " +
                                     std::to_string(x.device_type()) + ")");
  if (e != element::float32 && e != element::float64) {
    throw type_problem("orthopt: the input is " + dtype_text(x) + "; CPU arrays may be float32 or float64" +
                       (e == element::bfloat16 ? " (bfloat16 storage is supported on CUDA only)" : ""));
  }
  const bool f32 = e == element::float32;
  if (backend == "eigen") return f32 ? table.eigen32 : table.eigen64;
  if (backend == "blas") {
#ifdef ORTHOPT_PY_HAVE_BLAS
    return f32 ? table.blas32 : table.blas64;
#else
    throw orthopt::value_error("orthopt: this build has no BLAS backend (no CBLAS was found when it was built)");
#endif
  }
  throw orthopt::value_error("orthopt: unknown CPU backend '" + backend + "'; known: eigen, blas");
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "orthopt's extension module (use the orthopt package)";
  orthopt_error = new_exception(m, "OrthoptError", PyExc_Exception, "Base of every error orthopt raises.");
  {
    nb::tuple b = nb::make_tuple(nb::handle(orthopt_error), nb::handle(PyExc_ValueError));
    shape_error_type = new_exception(m, "ShapeError", b.ptr(), "A shape, stride or memory layout orthopt cannot use.");
    bad_value_type = new_exception(m, "BadValueError", b.ptr(), "A value orthopt refuses: an option, a NaN, a limit.");
  }
  {
    nb::tuple b = nb::make_tuple(nb::handle(orthopt_error), nb::handle(PyExc_TypeError));
    bad_type_type = new_exception(m, "BadTypeError", b.ptr(), "A wrong element type, device, or unknown option.");
  }
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const orthopt::shape_error& e) {
      PyErr_SetString(shape_error_type, e.what());
    } catch (const orthopt::value_error& e) {
      PyErr_SetString(bad_value_type, e.what());
    } catch (const orthopt::error& e) {
      PyErr_SetString(orthopt_error, e.what());
    } catch (const type_problem& e) {
      PyErr_SetString(bad_type_type, e.what());
    }
  });

  table.eigen32 = bind_eigen_float32(m);
  table.eigen64 = bind_eigen_float64(m);
  nb::list cpu_backends;
  cpu_backends.append("eigen");
#ifdef ORTHOPT_PY_HAVE_BLAS
  table.blas32 = bind_blas_float32(m);
  table.blas64 = bind_blas_float64(m);
  cpu_backends.append("blas");
#endif
#ifdef ORTHOPT_PY_HAVE_CUDA
  table.cuda32 = bind_cuda_float32(m);
  table.cuda64 = bind_cuda_float64(m);
  table.cudabf16 = bind_cuda_bfloat16(m);
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  m.attr("cpu_backends") = cpu_backends;
#ifdef ORTHOPT_PY_CUDA_HOST_EMULATION
  m.attr("cuda_host_emulation") = true;  // a test build: "CUDA" arrays are host memory
  // What the emulated runtime counted: stream synchronizations, live "device" allocations, cuBLAS calls.
  m.def("cuda_host_counters", [] {
    return std::make_tuple(orthopt_cuda_host::stream_synchronizations(), orthopt_cuda_host::live_allocations(),
                           orthopt_cuda_host::cublas_calls());
  });
#else
  m.attr("cuda_host_emulation") = false;
#endif
  m.attr("version") = ORTHOPT_VERSION_STRING;
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif

  m.def(
      "orthogonalize",
      [](ro_array x, array out, const std::string& backend, int threads, nb::dict config, std::uintptr_t stream) {
        entry_for(x, backend).orthogonalize(x, out, config, threads, stream);
      },
      nb::arg("x").noconvert(), nb::arg("out").noconvert(), nb::arg("backend"), nb::arg("threads"), nb::arg("config"),
      nb::arg("stream") = 0);
  m.def(
      "orthogonality_residual",
      [](ro_array x) {
        if (x.ndim() < 2) throw orthopt::shape_error("orthopt: the input has shape " + shape_text(x) + "; it needs [..., m, n]");
        if (!on_cpu(x)) throw type_problem("orthopt.orthogonality_residual: the input must be in CPU memory");
        return entry_for(x, "eigen").residuals(x);
      },
      nb::arg("x").noconvert());
  m.def(
      "route",
      [](const std::string& name, orthopt::index_t rows, orthopt::index_t cols, std::vector<std::pair<std::string, bool>> embedding,
         std::vector<std::pair<std::string, bool>> head) {
        orthopt::param_router r(orthopt::group_id{0}, orthopt::group_id{1});
        r.embedding_patterns.clear();
        for (auto& [t, whole] : embedding) r.embedding_patterns.push_back({t, whole});
        r.head_patterns.clear();
        for (auto& [t, whole] : head) r.head_patterns.push_back({t, whole});
        const auto d = r.decide(name, rows, cols);
        return std::make_tuple(d.group.index == 0 ? std::string("matrix") : std::string("adamw"),
                               std::string(orthopt::route_reason_name(d.reason)), d.why);
      },
      nb::arg("name"), nb::arg("rows"), nb::arg("cols"), nb::arg("embedding_patterns"), nb::arg("head_patterns"));
  m.def(
      "preset_options",
      [](const std::string& rule, const std::string& preset) {
        nb::dict d;
        const auto ortho = [&d](const orthopt::orthogonalizer& o) {
          d["ns"] = o.ns.name;
          d["ns_steps"] = o.ns.steps;
          d["ns_normalization"] = enum_name(o.ns.normalization);
          d["ns_eps"] = o.ns.eps;
          d["ns_absolute_eps"] = o.ns.absolute_eps;
          d["ns_algorithm"] = enum_name(o.ns.algorithm);
          d["exact_polar"] = o.exact;
        };
        if (rule == "muon") {
          const auto o = muon_preset(preset);
          d["lr"] = o.lr, d["weight_decay"] = o.weight_decay, d["momentum"] = o.momentum;
          d["momentum_type"] = enum_name(o.momentum_type), d["nesterov"] = o.nesterov, d["scale"] = enum_name(o.scale);
          ortho(o.ortho);
        } else if (rule == "adamuon") {
          const auto o = adamuon_preset(preset);
          d["lr"] = o.lr, d["weight_decay"] = o.weight_decay, d["form"] = enum_name(o.form), d["beta"] = o.beta;
          d["eps"] = o.eps, d["sign"] = o.sign, d["beta2"] = o.beta2;
          ortho(o.ortho);
        } else if (rule == "namo" || rule == "namo_d") {
          const auto o = rule == "namo" ? namo_preset(preset) : namo_d_preset(preset);
          d["lr"] = o.lr, d["weight_decay"] = o.weight_decay, d["form"] = enum_name(o.form), d["mu1"] = o.mu1;
          d["mu2"] = o.mu2, d["eps"] = o.eps, d["nesterov"] = o.nesterov, d["rms_scale"] = o.rms_scale;
          d["column_clamp"] = o.column_clamp;
          ortho(o.ortho);
        } else if (rule == "adamw") {
          const auto o = adamw_preset(preset);
          d["lr"] = o.lr, d["weight_decay"] = o.weight_decay, d["form"] = enum_name(o.form), d["beta1"] = o.beta1;
          d["beta2"] = o.beta2, d["eps"] = o.eps;
        } else {
          throw orthopt::value_error("orthopt: unknown rule '" + rule + "'; known: muon, adamuon, namo, namo_d, adamw");
        }
        d["check_finite"] = true;
        return d;
      },
      nb::arg("rule"), nb::arg("preset"));
  m.def("default_router_patterns", [] {
    const orthopt::param_router r(orthopt::group_id{0}, orthopt::group_id{1});
    std::vector<std::pair<std::string, bool>> e, h;
    for (const auto& p : r.embedding_patterns) e.emplace_back(p.text, p.whole_component);
    for (const auto& p : r.head_patterns) h.emplace_back(p.text, p.whole_component);
    return std::make_pair(e, h);
  });
}
