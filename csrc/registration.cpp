// The one TORCH_LIBRARY block of zfcore: every op schema is written here, once.
// Backends register implementations with TORCH_LIBRARY_IMPL in csrc/cpu and
// csrc/cuda; autograd and fake (meta) kernels are registered from Python in
// zfcore/ops/library.py. Keep zfcore/ops/schemas.py equal to these strings (a test
// checks it): it defines the same schemas when the native library is missing.
#include <torch/library.h>

#ifdef ZFCORE_PYTHON_MODULE
#include <Python.h>
extern "C" {
// Lets `import zfcore._C` load this library; the ops register themselves through
// the static initializers of TORCH_LIBRARY and TORCH_LIBRARY_IMPL.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

TORCH_LIBRARY(zfcore, m) {
  m.def("max_pool2d_switches(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode) -> (Tensor, Tensor)");
  m.def("unpool2d(Tensor y, Tensor switches, int[2] kernel_size, int[2] stride, int[2] padding, "
        "SymInt[2] output_size) -> Tensor");
  m.def("gather_switches(Tensor x, Tensor switches, int[2] kernel_size, int[2] stride, "
        "int[2] padding) -> Tensor");
  m.def("relu_conv_transpose2d(Tensor y, Tensor weight, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] output_padding, int groups, int[2] dilation) -> Tensor");
  m.def("deconv_step(Tensor y, Tensor switches, Tensor weight, Tensor? bias, "
        "int[2] pool_kernel_size, int[2] pool_stride, int[2] pool_padding, SymInt[2] unpooled_size, "
        "int[2] stride, int[2] padding, int[2] output_padding, int groups, int[2] dilation) -> Tensor");
}
