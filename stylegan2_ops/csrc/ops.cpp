// The one pybind module of stylegan2_ops: argument checks, output allocation and launch on
// the current stream. The math lives in the .cu files (see ops.h for each kernel's contract).
#include <torch/extension.h>

#include <optional>

#include "ops.h"

#ifdef HDOPS_HOST_EMULATION
// The test build (host_emulation.cpp): CPU tensors stand for device tensors and the kernels run
// on the host, so everything below except the stream and the device guard is exercised.
namespace {
bool on_device(const torch::Tensor& t) { return t.is_cpu(); }
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
cudaStream_t current_stream() { return nullptr; }
// The largest grid a launch gets (0: as asked), so tests can run the grid-stride loops' later turns.
void set_max_blocks(int64_t n) {
  TORCH_CHECK(n >= 0, "stylegan2_ops: max_blocks must be >= 0, got ", n);
  ::hdemu::max_blocks() = static_cast<unsigned>(n);
}
}  // namespace
#define HD_CHECK_LAUNCH(call)                                                                      \
  do {                                                                                             \
    const cudaError_t e_ = (call);                                                                 \
    TORCH_CHECK(e_ == cudaSuccess, "stylegan2_ops: kernel failed (host emulation): ", ::hdemu::last_message()); \
  } while (0)
#define HD_DEVICE "CPU (host emulation)"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
namespace {
bool on_device(const torch::Tensor& t) { return t.is_cuda(); }
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
}  // namespace
#define HD_CHECK_LAUNCH(call) C10_CUDA_CHECK(call)
#define HD_DEVICE "CUDA"
#endif

namespace {

using torch::Tensor;

hdops::DType dtype_code(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return hdops::DType::F32;
    case at::kDouble: return hdops::DType::F64;
    case at::kHalf: return hdops::DType::F16;
    case at::kBFloat16: return hdops::DType::BF16;
    default: break;
  }
  TORCH_CHECK(false, "stylegan2_ops: unsupported dtype ", t.scalar_type());
}

at::ScalarType acc_dtype(const Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_input(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(on_device(t), "stylegan2_ops: ", name, " must be a " HD_DEVICE " tensor");
  TORCH_CHECK(t.device() == like.device(), "stylegan2_ops: ", name, " is on ", t.device(), ", expected ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "stylegan2_ops: ", name, " has dtype ", t.scalar_type(),
              ", expected ", like.scalar_type());
}

void check_acc(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.device() == like.device(), "stylegan2_ops: ", name, " is on ", t.device(), ", expected ", like.device());
  TORCH_CHECK(t.scalar_type() == acc_dtype(like), "stylegan2_ops: ", name, " has dtype ", t.scalar_type(),
              ", expected ", acc_dtype(like));
}

hdops::BiasActParams bias_act_params(const Tensor& x, const std::optional<Tensor>& b, int64_t inner, int64_t act,
                                     double alpha, double gain, double clamp) {
  TORCH_CHECK(act == 0 || act == 1, "stylegan2_ops: act code must be 0 (linear) or 1 (lrelu), got ", act);
  TORCH_CHECK(inner >= 1, "stylegan2_ops: inner must be >= 1");
  hdops::BiasActParams p;
  p.x = x.data_ptr();
  p.numel = x.numel();
  p.inner = inner;
  if (b.has_value()) {
    check_input(*b, x, "b");
    TORCH_CHECK(b->is_contiguous() && b->dim() == 1, "stylegan2_ops: b must be 1-D and contiguous");
    TORCH_CHECK(x.numel() % (inner * std::max<int64_t>(b->numel(), 1)) == 0,
                "stylegan2_ops: bias length ", b->numel(), " does not divide x into rows of ", inner);
    p.b = b->data_ptr();
    p.channels = std::max<int64_t>(b->numel(), 1);
  }
  p.act = static_cast<int>(act);
  p.alpha = alpha;
  p.gain = gain;
  p.clamp = clamp;
  return p;
}

Tensor bias_act_fwd(Tensor x, std::optional<Tensor> b, int64_t inner, int64_t act, double alpha, double gain,
                    double clamp) {
  TORCH_CHECK(on_device(x), "stylegan2_ops: x must be a " HD_DEVICE " tensor");
  DeviceGuard guard(x.device());
  x = x.contiguous();
  if (b.has_value()) b = b->contiguous();
  Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  hdops::BiasActParams p = bias_act_params(x, b, inner, act, alpha, gain, clamp);
  p.out = y.data_ptr();
  HD_CHECK_LAUNCH(hdops::launch_bias_act_fwd(p, dtype_code(x), current_stream()));
  return y;
}

Tensor bias_act_grad(Tensor dy, Tensor x, std::optional<Tensor> b, int64_t inner, int64_t act, double alpha,
                     double gain, double clamp) {
  TORCH_CHECK(on_device(x), "stylegan2_ops: x must be a " HD_DEVICE " tensor");
  check_input(dy, x, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes(), "stylegan2_ops: dy has shape ", dy.sizes(), ", expected ", x.sizes());
  DeviceGuard guard(x.device());
  x = x.contiguous();
  dy = dy.contiguous();
  if (b.has_value()) b = b->contiguous();
  Tensor dx = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return dx;
  hdops::BiasActParams p = bias_act_params(x, b, inner, act, alpha, gain, clamp);
  p.dy = dy.data_ptr();
  p.out = dx.data_ptr();
  HD_CHECK_LAUNCH(hdops::launch_bias_act_grad(p, dtype_code(x), current_stream()));
  return dx;
}

Tensor upfirdn2d(Tensor x, Tensor w, int64_t up_x, int64_t up_y, int64_t down_x, int64_t down_y, int64_t pad_x0,
                 int64_t pad_x1, int64_t pad_y0, int64_t pad_y1, double gain) {
  TORCH_CHECK(on_device(x) && x.dim() == 4, "stylegan2_ops: x must be a 4-D " HD_DEVICE " tensor, got ", x.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(0) >= 1 && w.size(1) >= 1, "stylegan2_ops: w must be 2-D, got ", w.sizes());
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "stylegan2_ops: up/down must be >= 1");
  DeviceGuard guard(x.device());
  x = x.contiguous();
  w = w.to(x.device(), acc_dtype(x)).contiguous();
  const int64_t in_h = x.size(2), in_w = x.size(3), fh = w.size(0), fw = w.size(1);
  const int64_t span_y = in_h * up_y + pad_y0 + pad_y1 - fh;  // last valid correlation start
  const int64_t span_x = in_w * up_x + pad_x0 + pad_x1 - fw;
  TORCH_CHECK(span_y >= 0 && span_x >= 0, "stylegan2_ops: upfirdn2d output would be empty for input ", x.sizes(),
              " and filter ", w.sizes());
  hdops::Upfirdn2dParams p;
  p.nc = x.size(0) * x.size(1);
  p.in_h = in_h;
  p.in_w = in_w;
  p.out_h = span_y / down_y + 1;
  p.out_w = span_x / down_x + 1;
  p.fh = static_cast<int>(fh);
  p.fw = static_cast<int>(fw);
  p.up_x = static_cast<int>(up_x);
  p.up_y = static_cast<int>(up_y);
  p.down_x = static_cast<int>(down_x);
  p.down_y = static_cast<int>(down_y);
  p.pad_x0 = static_cast<int>(pad_x0);
  p.pad_y0 = static_cast<int>(pad_y0);
  p.gain = gain;
  Tensor y = at::empty({x.size(0), x.size(1), p.out_h, p.out_w}, x.options());
  p.x = x.data_ptr();
  p.w = w.data_ptr();
  p.y = y.data_ptr();
  HD_CHECK_LAUNCH(hdops::launch_upfirdn2d(p, dtype_code(x), current_stream()));
  return y;
}

Tensor modulate(Tensor x, Tensor s, std::optional<Tensor> d) {
  TORCH_CHECK(on_device(x) && x.dim() >= 2, "stylegan2_ops: x must be a " HD_DEVICE " tensor [B, I, ...], got ", x.sizes());
  check_input(s, x, "styles");
  TORCH_CHECK(s.dim() == 2 && s.size(0) == x.size(0) && s.size(1) == x.size(1), "stylegan2_ops: styles has shape ",
              s.sizes(), ", expected [", x.size(0), ", ", x.size(1), "]");
  DeviceGuard guard(x.device());
  x = x.contiguous();
  s = s.contiguous();
  hdops::ModulateParams p;
  if (d.has_value()) {
    check_input(*d, x, "domain");
    TORCH_CHECK(d->sizes() == s.sizes(), "stylegan2_ops: domain has shape ", d->sizes(), ", expected ", s.sizes());
    d = d->contiguous();
    p.d = d->data_ptr();
  }
  Tensor y = at::empty(x.sizes(), x.options());
  p.x = x.data_ptr();
  p.s = s.data_ptr();
  p.y = y.data_ptr();
  p.rows = s.numel();
  p.hw = p.rows == 0 ? 0 : x.numel() / p.rows;
  HD_CHECK_LAUNCH(hdops::launch_modulate(p, dtype_code(x), current_stream()));
  return y;
}

Tensor rowdot(Tensor a, Tensor c) {
  TORCH_CHECK(on_device(a) && a.dim() >= 2, "stylegan2_ops: a must be a " HD_DEVICE " tensor [B, I, ...], got ", a.sizes());
  check_input(c, a, "c");
  TORCH_CHECK(c.sizes() == a.sizes(), "stylegan2_ops: c has shape ", c.sizes(), ", expected ", a.sizes());
  DeviceGuard guard(a.device());
  a = a.contiguous();
  c = c.contiguous();
  Tensor out = at::empty({a.size(0), a.size(1)}, a.options());
  hdops::RowDotParams p;
  p.a = a.data_ptr();
  p.c = c.data_ptr();
  p.out = out.data_ptr();
  p.rows = out.numel();
  p.hw = p.rows == 0 ? 0 : a.numel() / p.rows;
  HD_CHECK_LAUNCH(hdops::launch_rowdot(p, dtype_code(a), current_stream()));
  return out;
}

Tensor demod_wsq(Tensor w) {
  TORCH_CHECK(on_device(w) && w.dim() == 4, "stylegan2_ops: weight must be a 4-D " HD_DEVICE " tensor, got ", w.sizes());
  DeviceGuard guard(w.device());
  w = w.contiguous();
  Tensor wsq = at::empty({w.size(0), w.size(1)}, w.options().dtype(acc_dtype(w)));
  hdops::DemodParams p;
  p.w = w.data_ptr();
  p.wsq = wsq.data_ptr();
  p.O = w.size(0);
  p.I = w.size(1);
  p.K = w.size(2) * w.size(3);
  HD_CHECK_LAUNCH(hdops::launch_demod_wsq(p, dtype_code(w), current_stream()));
  return wsq;
}

Tensor demod_fwd(Tensor wsq, Tensor s, double eps) {
  TORCH_CHECK(on_device(s) && s.dim() == 2, "stylegan2_ops: styles must be a 2-D " HD_DEVICE " tensor, got ", s.sizes());
  check_acc(wsq, s, "wsq");
  TORCH_CHECK(wsq.dim() == 2 && wsq.size(1) == s.size(1), "stylegan2_ops: wsq has shape ", wsq.sizes(),
              ", expected [O, ", s.size(1), "]");
  DeviceGuard guard(s.device());
  s = s.contiguous();
  wsq = wsq.contiguous();
  Tensor out = at::empty({s.size(0), wsq.size(0)}, s.options());
  hdops::DemodParams p;
  p.s = s.data_ptr();
  p.wsq = wsq.data_ptr();
  p.out = out.data_ptr();
  p.B = s.size(0);
  p.O = wsq.size(0);
  p.I = s.size(1);
  p.eps = eps;
  HD_CHECK_LAUNCH(hdops::launch_demod_fwd(p, dtype_code(s), current_stream()));
  return out;
}

Tensor demod_grad_styles(Tensor dq, Tensor wsq, Tensor s) {
  TORCH_CHECK(on_device(s) && s.dim() == 2, "stylegan2_ops: styles must be a 2-D " HD_DEVICE " tensor, got ", s.sizes());
  check_acc(wsq, s, "wsq");
  check_acc(dq, s, "dq");
  TORCH_CHECK(wsq.dim() == 2 && wsq.size(1) == s.size(1), "stylegan2_ops: wsq has shape ", wsq.sizes());
  TORCH_CHECK(dq.dim() == 2 && dq.size(0) == s.size(0) && dq.size(1) == wsq.size(0),
              "stylegan2_ops: dq has shape ", dq.sizes(), ", expected [", s.size(0), ", ", wsq.size(0), "]");
  DeviceGuard guard(s.device());
  s = s.contiguous();
  wsq = wsq.contiguous();
  dq = dq.contiguous();
  Tensor ds = at::empty(s.sizes(), s.options());
  hdops::DemodParams p;
  p.s = s.data_ptr();
  p.wsq = wsq.data_ptr();
  p.dq = dq.data_ptr();
  p.out = ds.data_ptr();
  p.B = s.size(0);
  p.O = wsq.size(0);
  p.I = s.size(1);
  HD_CHECK_LAUNCH(hdops::launch_demod_grad_styles(p, dtype_code(s), current_stream()));
  return ds;
}

Tensor demod_grad_weight(Tensor dq, Tensor s, Tensor w) {
  TORCH_CHECK(on_device(w) && w.dim() == 4, "stylegan2_ops: weight must be a 4-D " HD_DEVICE " tensor, got ", w.sizes());
  check_input(s, w, "styles");
  check_acc(dq, w, "dq");
  TORCH_CHECK(s.dim() == 2 && s.size(1) == w.size(1), "stylegan2_ops: styles has shape ", s.sizes(),
              ", expected [B, ", w.size(1), "]");
  TORCH_CHECK(dq.dim() == 2 && dq.size(0) == s.size(0) && dq.size(1) == w.size(0),
              "stylegan2_ops: dq has shape ", dq.sizes(), ", expected [", s.size(0), ", ", w.size(0), "]");
  DeviceGuard guard(w.device());
  w = w.contiguous();
  s = s.contiguous();
  dq = dq.contiguous();
  Tensor dw = at::empty(w.sizes(), w.options());
  hdops::DemodParams p;
  p.w = w.data_ptr();
  p.s = s.data_ptr();
  p.dq = dq.data_ptr();
  p.out = dw.data_ptr();
  p.B = s.size(0);
  p.O = w.size(0);
  p.I = w.size(1);
  p.K = w.size(2) * w.size(3);
  HD_CHECK_LAUNCH(hdops::launch_demod_grad_weight(p, dtype_code(w), current_stream()));
  return dw;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "stylegan2_ops CUDA kernels (see stylegan2_ops/csrc/ops.h)";
  m.def("bias_act_fwd", &bias_act_fwd, "y = clamp(act(x + b) * gain)");
  m.def("bias_act_grad", &bias_act_grad, "dx = dy * d bias_act / dx");
  m.def("upfirdn2d", &upfirdn2d, "upsample, pad, correlate with w, downsample");
  m.def("modulate", &modulate, "x * styles * (1 + domain)");
  m.def("rowdot", &rowdot, "sum over trailing dims of a * c -> [B, I]");
  m.def("demod_wsq", &demod_wsq, "sum_k w^2 -> [O, I] (accumulation dtype)");
  m.def("demod_fwd", &demod_fwd, "rsqrt(s^2 @ wsq^T + eps) -> [B, O]");
  m.def("demod_grad_styles", &demod_grad_styles, "2 s (dq @ wsq)");
  m.def("demod_grad_weight", &demod_grad_weight, "2 w (dq^T @ s^2)");
#ifdef HDOPS_HOST_EMULATION
  m.def("set_max_blocks", &set_max_blocks, "host emulation only: cap every launch's grid (0: no cap)");
#endif
}
