// 2-D convolution on the CPU with oneDNN, called from JAX through XLA's typed FFI
// (msvision/ops/onednn/ffi.py builds, links against libdnnl.so.3 and registers it).
//
// Semantics are those of lax.conv_general_dilated with dimension numbers
// ("NHWC", "HWIO", "NHWC"), explicit non-negative padding, one stride and one
// dilation for both spatial axes, and feature_group_count = groups. Buffers are
// XLA's, row-major:
//   x / dL/dx    [N, H, W, C]            float32 or bfloat16
//   kernel       [KH, KW, C / G, O]      the dtype of x
//   y / dL/dy    [N, OH, OW, O]          the dtype of x
//   dL/dkernel   [KH, KW, C / G, O]      float32 for both input dtypes
// Attributes: stride, dilation, groups (int64) and padding (int64[4]: top, bottom,
// left, right), with OH = (H + top + bottom - ((KH - 1) * dilation + 1)) / stride + 1.
//
// Three custom calls, one oneDNN primitive each: the forward (prop_kind
// forward_training), the input gradient (backward_data) and the kernel gradient
// (backward_weights); the two backward primitives get the forward's primitive
// descriptor as their hint, as oneDNN asks.
//
// Layouts: oneDNN's logical dimensions are NCHW / OIHW (GOIHW grouped); the XLA
// buffers are the memory formats nhwc and hwio (hwigo grouped: HWIO's output
// channels are group-major, as feature_group_count splits them), wrapped without
// copies. Activations stay nhwc. Weights are created with format any, so oneDNN
// picks its blocked layout, and reordered from (or, for the kernel gradient, back
// to) HWIO on every call: the kernel changes every training step.
//
// A plan (primitive descriptors, primitives and the reorders around them) is built
// once per (kind, dtype, shapes, stride, dilation, padding, groups) and kept in a
// mutex-protected map: creating oneDNN primitive descriptors takes milliseconds.
// Plans are immutable once built, and each call allocates its own scratchpad
// (scratchpad_mode user) and reorder buffers, so XLA may run several calls at once.
//
// bfloat16: oneDNN computes bf16 convolutions with float32 accumulation, rounding
// the result to bf16 once. Where oneDNN has no bf16 convolution for the CPU (on an
// AVX2-only CPU, oneDNN v3.2 reports the primitive as unimplemented), the plan runs
// the float32 primitive between bf16 <-> f32 reorders: the same numbers up to
// summation order, without the speed. MsvisionOnednnConvDescribe reports which
// implementation a plan uses.
//
// float32 uses fpmath_mode strict explicitly, so ONEDNN_DEFAULT_FPMATH_MODE in the
// environment cannot turn float32 convolutions into bf16 or tf32 ones.
//
// Threads: oneDNN runs each primitive on an OpenMP team of the calling thread
// (OMP_NUM_THREADS threads, GNU OpenMP), not on XLA's thread pool.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using DataType = memory::data_type;

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// Everything a plan depends on: [kind, dtype, N, H, W, C, OH, OW, O, KH, KW,
// groups, stride, dilation, top, bottom, left, right].
using Key = std::array<int64_t, 18>;

struct Problem {
  int64_t n, h, w, c, oh, ow, o, kh, kw, groups, stride, dilation, top, bottom, left, right;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One buffer of the custom call and the layout the primitive wants it in. When they
// differ (blocked weights, or a bf16 buffer for an f32 primitive), `reorder` converts
// user -> primitive for inputs before the primitive runs, primitive -> user for the
// output after it.
struct Operand {
  int arg;  // DNNL_ARG_SRC, ...
  memory::desc user, primitive;
  bool output;
  std::optional<dnnl::reorder> reorder;
};

struct Plan {
  dnnl::primitive primitive;
  std::vector<Operand> operands;  // in the order of the custom call's buffers: inputs, then the output
  size_t scratchpad_bytes = 0;    // the largest scratchpad of the primitive and its reorders
  std::string implementation;     // oneDNN's name, "+f32" when bf16 runs as float32
};

memory::dims activation_dims(int64_t n, int64_t c, int64_t h, int64_t w) { return {n, c, h, w}; }

// Logical weights dimensions and the memory format of an HWIO buffer.
memory::dims weight_dims(const Problem& p) {
  if (p.groups == 1) return {p.o, p.c, p.kh, p.kw};
  return {p.groups, p.o / p.groups, p.c / p.groups, p.kh, p.kw};
}
Tag hwio_tag(const Problem& p) { return p.groups == 1 ? Tag::hwio : Tag::hwigo; }

dnnl::primitive_attr make_attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_fpmath_mode(dnnl::fpmath_mode::strict);
  return attr;
}

// Adds an operand, with a reorder if the primitive's layout or type differs from the buffer's.
void add_operand(Plan& plan, int arg, const memory::desc& user, const memory::desc& primitive, bool output) {
  Operand operand{arg, user, primitive, output, std::nullopt};
  if (user != primitive) {
    auto& engine = cpu_engine();
    auto pd = output ? dnnl::reorder::primitive_desc(engine, primitive, engine, user, make_attr())
                     : dnnl::reorder::primitive_desc(engine, user, engine, primitive, make_attr());
    plan.scratchpad_bytes = std::max(plan.scratchpad_bytes, pd.scratchpad_desc().get_size());
    operand.reorder = dnnl::reorder(pd);
  }
  plan.operands.push_back(std::move(operand));
}

// Builds the plan computing in `compute` (the dtype of the buffers, or f32 for
// bf16 buffers on a CPU without bf16 convolutions). Throws dnnl::error
// (status unimplemented) when oneDNN has no implementation for it.
Plan build_plan(Kind kind, const Problem& p, DataType io, DataType compute) {
  auto& engine = cpu_engine();
  const memory::dims strides{p.stride, p.stride}, dilates{p.dilation - 1, p.dilation - 1};
  const memory::dims padding_l{p.top, p.left}, padding_r{p.bottom, p.right};
  const memory::dims src_dims = activation_dims(p.n, p.c, p.h, p.w), dst_dims = activation_dims(p.n, p.o, p.oh, p.ow);
  const memory::dims wei_dims = weight_dims(p);
  const auto algorithm = dnnl::algorithm::convolution_direct;
  const auto attr = make_attr();

  const memory::desc src(src_dims, compute, Tag::nhwc), dst(dst_dims, compute, Tag::nhwc);
  const memory::desc wei_any(wei_dims, compute, Tag::any);
  const memory::desc src_user(src_dims, io, Tag::nhwc), dst_user(dst_dims, io, Tag::nhwc);
  const memory::desc wei_user(wei_dims, io, hwio_tag(p));

  // The forward primitive (forward_training), also the backward primitives' hint.
  dnnl::convolution_forward::primitive_desc forward(engine, dnnl::prop_kind::forward_training, algorithm, src,
                                                    wei_any, dst, strides, dilates, padding_l, padding_r, attr);
  Plan plan;
  if (kind == kForward) {
    plan.primitive = dnnl::convolution_forward(forward);
    plan.implementation = forward.impl_info_str();
    plan.scratchpad_bytes = forward.scratchpad_desc().get_size();
    add_operand(plan, DNNL_ARG_SRC, src_user, forward.src_desc(), false);
    add_operand(plan, DNNL_ARG_WEIGHTS, wei_user, forward.weights_desc(), false);
    add_operand(plan, DNNL_ARG_DST, dst_user, forward.dst_desc(), true);
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc backward(engine, algorithm, src, wei_any, dst, strides, dilates,
                                                             padding_l, padding_r, forward, attr);
    plan.primitive = dnnl::convolution_backward_data(backward);
    plan.implementation = backward.impl_info_str();
    plan.scratchpad_bytes = backward.scratchpad_desc().get_size();
    add_operand(plan, DNNL_ARG_DIFF_DST, dst_user, backward.diff_dst_desc(), false);
    add_operand(plan, DNNL_ARG_WEIGHTS, wei_user, backward.weights_desc(), false);
    add_operand(plan, DNNL_ARG_DIFF_SRC, src_user, backward.diff_src_desc(), true);
  } else {
    // The kernel gradient is returned in float32; oneDNN accumulates it in f32 for
    // bf16 inputs and can write it as f32 directly.
    const memory::desc diff_wei_user(wei_dims, DataType::f32, hwio_tag(p));
    const memory::desc diff_wei_any(wei_dims, DataType::f32, Tag::any);
    dnnl::convolution_backward_weights::primitive_desc backward(engine, algorithm, src, diff_wei_any, dst, strides,
                                                                dilates, padding_l, padding_r, forward, attr);
    plan.primitive = dnnl::convolution_backward_weights(backward);
    plan.implementation = backward.impl_info_str();
    plan.scratchpad_bytes = backward.scratchpad_desc().get_size();
    add_operand(plan, DNNL_ARG_SRC, src_user, backward.src_desc(), false);
    add_operand(plan, DNNL_ARG_DIFF_DST, dst_user, backward.diff_dst_desc(), false);
    add_operand(plan, DNNL_ARG_DIFF_WEIGHTS, diff_wei_user, backward.diff_weights_desc(), true);
  }
  if (compute != io) plan.implementation += "+f32";
  return plan;
}

Plan build_plan(Kind kind, const Problem& p, DataType io) {
  if (io == DataType::bf16) {
    try {
      return build_plan(kind, p, io, io);
    } catch (const dnnl::error& error) {
      if (error.status != dnnl_unimplemented) throw;
      // No bf16 convolution on this CPU: float32 between reorders (see the top of the file).
    }
  }
  return build_plan(kind, p, io, DataType::f32);
}

std::mutex plans_mutex;
std::map<Key, std::shared_ptr<const Plan>> plans;

std::shared_ptr<const Plan> get_plan(Kind kind, const Problem& p, DataType io) {
  const Key key{kind,       static_cast<int64_t>(io), p.n,       p.h,      p.w,    p.c,
                p.oh,       p.ow,                     p.o,       p.kh,     p.kw,   p.groups,
                p.stride,   p.dilation,               p.top,     p.bottom, p.left, p.right};
  std::lock_guard<std::mutex> lock(plans_mutex);
  auto found = plans.find(key);
  if (found != plans.end()) return found->second;
  auto plan = std::make_shared<const Plan>(build_plan(kind, p, io));
  plans.emplace(key, plan);
  return plan;
}

// Runs the plan on the custom call's buffers (`data`: inputs, then the output).
void execute(const Plan& plan, const std::vector<void*>& data) {
  auto& engine = cpu_engine();
  dnnl::stream stream(engine);
  // One scratchpad for the primitive and its reorders, which run one after the other.
  memory scratchpad;
  std::unordered_map<int, memory> args;
  if (plan.scratchpad_bytes > 0) {
    scratchpad = memory(memory::desc({static_cast<memory::dim>(plan.scratchpad_bytes)}, DataType::u8, Tag::a),
                        engine);
    args.emplace(DNNL_ARG_SCRATCHPAD, scratchpad);
  }
  auto reorder_args = [&](const memory& from, const memory& to) {
    std::unordered_map<int, memory> reorder{{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    if (plan.scratchpad_bytes > 0) reorder.emplace(DNNL_ARG_SCRATCHPAD, scratchpad);
    return reorder;
  };
  std::vector<std::pair<const Operand*, memory>> outputs_to_reorder;
  for (size_t i = 0; i < plan.operands.size(); ++i) {
    const Operand& operand = plan.operands[i];
    memory user(operand.user, engine, data[i]);
    if (!operand.reorder) {
      args.emplace(operand.arg, user);
      continue;
    }
    memory converted(operand.primitive, engine);  // allocated by oneDNN, freed with the last reference
    if (operand.output) {
      outputs_to_reorder.emplace_back(&operand, user);
    } else {
      operand.reorder->execute(stream, reorder_args(user, converted));
    }
    args.emplace(operand.arg, converted);
  }
  plan.primitive.execute(stream, args);
  for (auto& [operand, user] : outputs_to_reorder) {
    operand->reorder->execute(stream, reorder_args(args.at(operand->arg), user));
  }
  stream.wait();
}

std::optional<DataType> dnnl_type(ffi::DataType type) {
  if (type == ffi::DataType::F32) return DataType::f32;
  if (type == ffi::DataType::BF16) return DataType::bf16;
  return std::nullopt;
}

// The problem of one custom call from its activations [N, H, W, C] and
// [N, OH, OW, O], its kernel [KH, KW, C / G, O] and the attributes; an error
// message if they are inconsistent.
std::optional<std::string> make_problem(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y,
                                        ffi::Span<const int64_t> kernel, int64_t stride, int64_t dilation,
                                        int64_t groups, ffi::Span<const int64_t> padding, Problem& p) {
  if (x.size() != 4 || y.size() != 4 || kernel.size() != 4 || padding.size() != 4)
    return "expected x [N,H,W,C], y [N,OH,OW,O], kernel [KH,KW,C/G,O] and padding (top, bottom, left, right)";
  p = Problem{x[0], x[1], x[2], x[3], y[1], y[2], y[3], kernel[0], kernel[1], groups, stride, dilation,
              padding[0], padding[1], padding[2], padding[3]};
  if (stride < 1 || dilation < 1 || groups < 1) return "stride, dilation and groups must be >= 1";
  if (p.top < 0 || p.bottom < 0 || p.left < 0 || p.right < 0) return "padding must be >= 0";
  if (y[0] != p.n || kernel[3] != p.o || p.c % groups != 0 || p.o % groups != 0 || kernel[2] != p.c / groups)
    return "channels or batch of x, y and kernel disagree (or are not divisible by groups)";
  const int64_t oh = (p.h + p.top + p.bottom - ((p.kh - 1) * dilation + 1)) / stride + 1;
  const int64_t ow = (p.w + p.left + p.right - ((p.kw - 1) * dilation + 1)) / stride + 1;
  if (oh != p.oh || ow != p.ow) return "output size disagrees with input size, kernel, stride, dilation and padding";
  if (p.n * p.h * p.w * p.c * p.oh * p.ow * p.o == 0) return "empty tensors are not supported";
  return std::nullopt;
}

ffi::Error run(Kind kind, const Problem& p, DataType io, const std::vector<void*>& data) {
  try {
    execute(*get_plan(kind, p, io), data);
  } catch (const dnnl::error& error) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + error.what() +
                                " (status " + std::to_string(static_cast<int>(error.status)) + ")");
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + error.what());
  }
  return ffi::Error::Success();
}

const char* kDtypeError = "onednn_conv: expected float32 or bfloat16 buffers of one dtype";

ffi::Error ForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer kernel, int64_t stride, int64_t dilation, int64_t groups,
                       ffi::Span<const int64_t> padding, ffi::Result<ffi::AnyBuffer> y) {
  const auto io = dnnl_type(x.element_type());
  if (!io || kernel.element_type() != x.element_type() || y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument(kDtypeError);
  Problem p;
  if (auto error = make_problem(x.dimensions(), y->dimensions(), kernel.dimensions(), stride, dilation, groups,
                                padding, p))
    return ffi::Error::InvalidArgument("onednn_conv forward: " + *error);
  return run(kForward, p, *io, {x.untyped_data(), kernel.untyped_data(), y->untyped_data()});
}

ffi::Error BackwardDataImpl(ffi::AnyBuffer y_grad, ffi::AnyBuffer kernel, int64_t stride, int64_t dilation,
                            int64_t groups, ffi::Span<const int64_t> padding, ffi::Result<ffi::AnyBuffer> x_grad) {
  const auto io = dnnl_type(y_grad.element_type());
  if (!io || kernel.element_type() != y_grad.element_type() || x_grad->element_type() != y_grad.element_type())
    return ffi::Error::InvalidArgument(kDtypeError);
  Problem p;
  if (auto error = make_problem(x_grad->dimensions(), y_grad.dimensions(), kernel.dimensions(), stride, dilation,
                                groups, padding, p))
    return ffi::Error::InvalidArgument("onednn_conv backward_data: " + *error);
  return run(kBackwardData, p, *io, {y_grad.untyped_data(), kernel.untyped_data(), x_grad->untyped_data()});
}

ffi::Error BackwardWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer y_grad, int64_t stride, int64_t dilation,
                               int64_t groups, ffi::Span<const int64_t> padding,
                               ffi::Result<ffi::AnyBuffer> kernel_grad) {
  const auto io = dnnl_type(x.element_type());
  if (!io || y_grad.element_type() != x.element_type())
    return ffi::Error::InvalidArgument(kDtypeError);
  if (kernel_grad->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("onednn_conv backward_weights: the kernel gradient must be float32");
  Problem p;
  if (auto error = make_problem(x.dimensions(), y_grad.dimensions(), kernel_grad->dimensions(), stride, dilation,
                                groups, padding, p))
    return ffi::Error::InvalidArgument("onednn_conv backward_weights: " + *error);
  return run(kBackwardWeights, p, *io, {x.untyped_data(), y_grad.untyped_data(), kernel_grad->untyped_data()});
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsvisionOnednnConvForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x [N, H, W, C]
                                  .Arg<ffi::AnyBuffer>()  // kernel [KH, KW, C / G, O]
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("dilation")
                                  .Attr<int64_t>("groups")
                                  .Attr<ffi::Span<const int64_t>>("padding")  // top, bottom, left, right
                                  .Ret<ffi::AnyBuffer>());  // y [N, OH, OW, O]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsvisionOnednnConvBackwardData, BackwardDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // dL/dy [N, OH, OW, O]
                                  .Arg<ffi::AnyBuffer>()  // kernel [KH, KW, C / G, O]
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("dilation")
                                  .Attr<int64_t>("groups")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Ret<ffi::AnyBuffer>());  // dL/dx [N, H, W, C]

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsvisionOnednnConvBackwardWeights, BackwardWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x [N, H, W, C]
                                  .Arg<ffi::AnyBuffer>()  // dL/dy [N, OH, OW, O]
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("dilation")
                                  .Attr<int64_t>("groups")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Ret<ffi::AnyBuffer>());  // dL/dkernel [KH, KW, C / G, O], float32

// For Python (ctypes): which oneDNN implementation a plan uses, e.g.
// "brgconv:avx512_core_amx", or "brgconv:avx2+f32" for bf16 computed as float32.
// problem: N, H, W, C, OH, OW, O, KH, KW, groups, stride, dilation, top, bottom,
// left, right; bf16: 0 float32, 1 bfloat16. Writes a NUL-terminated string to
// `out` and returns 0, or the error message and returns 1.
extern "C" int MsvisionOnednnConvDescribe(int64_t kind, int64_t bf16, const int64_t* problem, char* out,
                                          int64_t size) {
  std::string text;
  int status = 0;
  try {
    if (kind < kForward || kind > kBackwardWeights) throw std::invalid_argument("kind must be 0, 1 or 2");
    const int64_t* q = problem;
    const Problem p{q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8], q[9], q[10], q[11], q[12], q[13], q[14],
                    q[15]};
    text = get_plan(static_cast<Kind>(kind), p, bf16 ? DataType::bf16 : DataType::f32)->implementation;
  } catch (const std::exception& error) {
    text = error.what();
    status = 1;
  }
  if (size > 0) {
    const size_t n = std::min<size_t>(text.size(), static_cast<size_t>(size - 1));
    std::memcpy(out, text.data(), n);
    out[n] = '\0';
  }
  return status;
}
