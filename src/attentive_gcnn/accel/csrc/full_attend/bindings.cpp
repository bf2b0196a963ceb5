// The Python module of the full attention's kernels (full_attend.h). Tensors are positional; every option is a
// keyword argument, and a stride-1 chunk's options travel as one AttendOptions from forward to backward.
#include <torch/extension.h>

#include "full_attend.h"

namespace py = pybind11;
using namespace attentive_gcnn;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using py::arg;
  py::class_<AttendOptions>(m, "AttendOptions", "The options of a stride-1 chunk of the full attention's layer.")
      .def(py::init([](int64_t padding, int64_t dilation, int64_t map_dilation, bool with_plain, bool single,
                       double scale) { return AttendOptions{padding, dilation, map_dilation, with_plain, single, scale}; }),
           py::kw_only(), arg("padding"), arg("dilation"), arg("map_dilation"), arg("with_plain"), arg("single"),
           arg("scale"))
      .def_readonly("padding", &AttendOptions::padding)
      .def_readonly("dilation", &AttendOptions::dilation)
      .def_readonly("map_dilation", &AttendOptions::map_dilation)
      .def_readonly("with_plain", &AttendOptions::with_plain)
      .def_readonly("single", &AttendOptions::single)
      .def_readonly("scale", &AttendOptions::scale);

  m.def("lane_conv_forward", &lane_conv_forward, arg("x"), arg("w"), py::kw_only(), arg("padding"), arg("dilation"));
  m.def("lane_conv_backward", &lane_conv_backward, arg("grad"), arg("x"), arg("w"), py::kw_only(), arg("padding"),
        arg("dilation"), arg("need_x"), arg("need_w"));

  m.def("attention_map_forward", &attention_map_forward, arg("summed"), arg("maximum").none(true), arg("w"),
        arg("plain").none(true), py::kw_only(), arg("orientations"), arg("dilation"), arg("scale"));
  m.def("attention_map_backward", &attention_map_backward, arg("grad_out"), arg("summed"), arg("maximum").none(true),
        arg("a"), arg("w"), py::kw_only(), arg("orientations"), arg("dilation"), arg("with_plain"), arg("scale"),
        arg("need_x"), arg("need_w"));

  m.def("spatial_argmax", &spatial_argmax, arg("xin"), arg("bank"), py::kw_only(), arg("stride"), arg("padding"),
        arg("dilation"));
  m.def("spatial_max_backward", &spatial_max_backward, arg("grad"), arg("xin"), arg("bank"), arg("pos"), py::kw_only(),
        arg("stride"), arg("padding"), arg("dilation"), arg("need_x"), arg("need_w"));
  m.def("channel_argmax", &channel_argmax, arg("xin"), arg("bank"), arg("a").none(true), py::kw_only(), arg("stride"),
        arg("padding"), arg("dilation"), arg("with_plain"));
  m.def("selected_forward", &selected_forward, arg("xin"), arg("bank"), arg("a").none(true), arg("channel"),
        py::kw_only(), arg("stride"), arg("padding"), arg("dilation"));
  m.def("selected_backward", &selected_backward, arg("grad"), arg("xin"), arg("bank"), arg("a").none(true),
        arg("channel"), py::kw_only(), arg("stride"), arg("padding"), arg("dilation"), arg("need_x"), arg("need_w"),
        arg("need_a"));

  m.def("attend_forward", &attend_forward, arg("xin"), arg("bank"), arg("a").none(true), arg("w_x"), py::kw_only(),
        arg("options"));
  m.def("attend_backward", &attend_backward, arg("grad_out"), arg("xin"), arg("bank"), arg("a").none(true),
        arg("channel").none(true), arg("summed"), arg("maximum").none(true), arg("a_x"), arg("w_x"), py::kw_only(),
        arg("options"), arg("need_x"), arg("need_w"), arg("need_a"), arg("need_w_x"));
}
