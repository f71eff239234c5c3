// Multi-scale deformable attention (Deformable DETR) on the CPU, called from JAX
// through XLA's typed FFI (msvision/ops/msda/cpu_ffi.py builds and registers it).
//
// Semantics are exactly those of msvision/ops/msda/xla.py: per level, bilinear
// grid_sample with align_corners=False and zero padding, weighted by the attention
// weights and summed over levels and points. All buffers are float32, row-major:
//   value               [B, S, M, C]   S = sum_l H_l * W_l (level-major, row-major)
//   sampling_locations  [B, Q, M, L, P, 2]   (x, y) in [0, 1] map coordinates
//   attention_weights   [B, Q, M, L, P]
//   output / dL/dout    [B, Q, M, C]  (the Python side views it as [B, Q, M * C])
// spatial_shapes is an attribute (H_0, W_0, H_1, W_1, ...), num_threads another.
//
// The value is a table of rows [B * S * M, C]: every bilinear corner is one
// contiguous row of C floats, so the inner loops run over C and vectorise.
//
// The kernels are bound by the latency of these random row loads (the table is far
// larger than the caches), not by arithmetic: for each (b, q, m) all L * P * 4
// corners are computed and their rows prefetched before any is used.
//
// Threads: num_threads > 0 runs that many std::threads (no OpenMP); num_threads = 0
// (what impl="auto" bakes into the graph) decides at run time: the work goes to
// XLA:CPU's intra-op thread pool (the FFI ThreadPool context), the calling thread
// taking part, else (no pool) to one std::thread per CPU of the process's affinity
// mask. The work is split into (b, m) pairs, further into blocks of queries in the
// forward. In the backward a unit of work is a whole (b, m) pair: the
// value-gradient rows of different (b, m) never coincide, so the scatter-add needs
// no atomics, and every pair is summed in the same order whichever thread runs it,
// so the results are the same bits for any number of threads and either pool.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Level {
  int64_t height, width, start;  // start: first position of the level in S
};

struct Problem {
  int64_t batch, positions, heads, channels, queries, levels, points;
  std::vector<Level> level;
};

// One bilinear corner: its pixel (y * W + x), its bilinear weight and the weight's
// derivatives with respect to the normalised location. Corners outside the map
// sample zeros: they are skipped (their pixel is meaningless), which is xla.py's
// zero weight and zero derivatives.
struct Corner {
  bool inside;
  int64_t pixel;
  float weight, d_weight_dx, d_weight_dy;
};

// The four corners (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1) of
// grid_sample(bilinear, zeros, align_corners=False), as bilinear_corner_list in xla.py.
inline void bilinear_corners(float x_normalized, float y_normalized, int64_t height, int64_t width,
                             Corner corners[4]) {
  // Pixel-centre coordinates; clipping far-away points keeps the int conversion
  // defined (every corner of a clipped point is outside anyway).
  const float x = std::min(std::max(x_normalized * width - 0.5f, -2.0f), width + 1.0f);
  const float y = std::min(std::max(y_normalized * height - 0.5f, -2.0f), height + 1.0f);
  const float x0f = std::floor(x), y0f = std::floor(y);
  const float fx = x - x0f, fy = y - y0f;
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  for (int k = 0; k < 4; ++k) {
    const int dy = k >> 1, dx = k & 1;
    const int64_t xi = x0 + dx, yi = y0 + dy;
    Corner& c = corners[k];
    c.inside = xi >= 0 && xi < width && yi >= 0 && yi < height;
    const float wx = dx ? fx : 1.0f - fx;
    const float wy = dy ? fy : 1.0f - fy;
    c.pixel = yi * width + xi;
    c.weight = wx * wy;
    // d/dx_normalized = W * d/dx_pixel since x_pixel = x_normalized * W - 0.5.
    c.d_weight_dx = (dx ? 1.0f : -1.0f) * wy * static_cast<float>(width);
    c.d_weight_dy = (dy ? 1.0f : -1.0f) * wx * static_cast<float>(height);
  }
}

// out[c] += w * row[c]: the forward's inner loop.
inline void axpy(int64_t n, float w, const float* __restrict row, float* __restrict out) {
  for (int64_t c = 0; c < n; ++c) out[c] += w * row[c];
}

// Returns <grad, row> and does row_grad += w * grad in the same pass over C.
// Eight partial sums let the compiler vectorise the reduction without -ffast-math.
inline float dot_and_axpy(int64_t n, const float* __restrict grad, const float* __restrict row, float w,
                          float* __restrict row_grad) {
  float partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int j = 0; j < 8; ++j) {
      partial[j] += grad[c + j] * row[c + j];
      row_grad[c + j] += w * grad[c + j];
    }
  }
  float total = ((partial[0] + partial[4]) + (partial[1] + partial[5])) +
                ((partial[2] + partial[6]) + (partial[3] + partial[7]));
  for (; c < n; ++c) {
    total += grad[c] * row[c];
    row_grad[c] += w * grad[c];
  }
  return total;
}

// The CPUs this process may run on (its affinity mask, e.g. under taskset or a
// container's cpuset), at least 1.
int64_t available_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs body(begin, end) on [0, units) split into contiguous ranges over at most
// num_threads std::threads (the calling thread takes the first range).
template <typename Body>
void parallel_for_threads(int64_t units, int64_t num_threads, const Body& body) {
  const int64_t threads = std::max<int64_t>(1, std::min(num_threads, units));
  if (threads == 1) {
    body(int64_t{0}, units);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(threads - 1);
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = t * units / threads, end = (t + 1) * units / threads;
    try {
      workers.emplace_back([&body, begin, end] { body(begin, end); });
    } catch (const std::system_error&) {
      body(begin, end);  // no thread available (resource limits): run the range here
    }
  }
  body(int64_t{0}, units / threads);
  for (auto& worker : workers) worker.join();
}

// Runs body(unit, unit + 1) for every unit of [0, units) on XLA's thread pool.
//
// The pool promises neither parallelism nor that a task starts before this call
// returns (a task may even run inline in Schedule), so waiting for the scheduled
// tasks could deadlock when the caller is itself one of the pool's threads. Instead
// units are claimed from a shared counter by the tasks and by the calling thread;
// once the caller finds none left it closes the work and waits only for the tasks
// that are inside a unit. A task starting after that finds the work closed and
// returns without touching body (the state it shares is reference counted).
template <typename Body>
void parallel_for_pool(int64_t units, ffi::ThreadPool& pool, int64_t pool_threads, const Body& body) {
  struct Work {
    std::atomic<int64_t> next{0};
    int64_t units = 0;
    const Body* body = nullptr;
    std::mutex mutex;
    std::condition_variable idle;
    int64_t running = 0;
    bool closed = false;

    void run_units() {
      for (int64_t unit = next.fetch_add(1); unit < units; unit = next.fetch_add(1)) (*body)(unit, unit + 1);
    }
  };
  auto work = std::make_shared<Work>();
  work->units = units;
  work->body = &body;
  const int64_t helpers = std::min(pool_threads, units) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([work] {
      {
        std::lock_guard<std::mutex> lock(work->mutex);
        if (work->closed) return;
        ++work->running;
      }
      work->run_units();
      std::lock_guard<std::mutex> lock(work->mutex);
      if (--work->running == 0) work->idle.notify_all();
    });
  }
  work->run_units();
  std::unique_lock<std::mutex> lock(work->mutex);
  work->closed = true;
  work->idle.wait(lock, [&] { return work->running == 0; });
}

// Where the kernels run: num_threads std::threads, or (num_threads = 0) the pool.
struct Parallelism {
  int64_t num_threads;
  ffi::ThreadPool* pool;

  template <typename Body>
  void run(int64_t units, const Body& body) const {
    if (num_threads > 0) return parallel_for_threads(units, num_threads, body);
    const int64_t pool_threads = pool->num_threads();  // 0: XLA provides no pool here
    if (pool_threads > 0) return parallel_for_pool(units, *pool, pool_threads, body);
    parallel_for_threads(units, available_cpus(), body);
  }
};

ffi::Error make_problem(const ffi::Buffer<ffi::F32>& value, const ffi::Buffer<ffi::F32>& locations,
                        const ffi::Buffer<ffi::F32>& weights, ffi::Span<const int64_t> spatial_shapes,
                        Problem* problem) {
  const auto v = value.dimensions();
  const auto loc = locations.dimensions();
  const auto w = weights.dimensions();
  if (v.size() != 4 || loc.size() != 6 || w.size() != 5 || loc[5] != 2) {
    return ffi::Error::InvalidArgument("msda_cpu: expected value [B,S,M,C], locations [B,Q,M,L,P,2], "
                                       "weights [B,Q,M,L,P]");
  }
  Problem& p = *problem;
  p.batch = v[0];
  p.positions = v[1];
  p.heads = v[2];
  p.channels = v[3];
  p.queries = loc[1];
  p.levels = loc[3];
  p.points = loc[4];
  if (loc[0] != p.batch || loc[2] != p.heads || static_cast<int64_t>(spatial_shapes.size()) != 2 * p.levels ||
      w[0] != p.batch || w[1] != p.queries || w[2] != p.heads || w[3] != p.levels || w[4] != p.points) {
    return ffi::Error::InvalidArgument("msda_cpu: inconsistent shapes");
  }
  int64_t start = 0;
  p.level.clear();
  for (int64_t l = 0; l < p.levels; ++l) {
    p.level.push_back({spatial_shapes[2 * l], spatial_shapes[2 * l + 1], start});
    start += spatial_shapes[2 * l] * spatial_shapes[2 * l + 1];
  }
  if (start != p.positions) return ffi::Error::InvalidArgument("msda_cpu: spatial_shapes do not sum to S");
  return ffi::Error::Success();
}

// Prefetches the cache lines of a row of C floats (write: for the value gradient).
inline void prefetch_row(const float* row, int64_t channels, bool write) {
  for (int64_t i = 0; i < channels; i += 64 / sizeof(float)) {
    if (write) {
      __builtin_prefetch(row + i, 1);
    } else {
      __builtin_prefetch(row + i, 0);
    }
  }
  __builtin_prefetch(row + channels - 1, write ? 1 : 0);
}

// The corners of every (level, point) of one (b, q, m), 4 per point in the order of
// bilinear_corners, with the offset of each inside corner's row from row (b, 0, m).
// The rows of the inside corners are prefetched: they are random rows of a table far
// larger than the caches, and issuing all L * P * 4 loads before using any overlaps
// their latencies (the kernels are bound by these loads, not by arithmetic).
void query_corners(const Problem& p, const float* locations, const float* rows, float* grad_rows,
                   Corner* corners, int64_t* offsets) {
  const int64_t row_stride = p.heads * p.channels;
  for (int64_t l = 0; l < p.levels; ++l) {
    const Level& level = p.level[l];
    for (int64_t point = 0; point < p.points; ++point) {
      const int64_t j = l * p.points + point;
      bilinear_corners(locations[2 * j], locations[2 * j + 1], level.height, level.width, corners + 4 * j);
      for (int64_t k = 4 * j; k < 4 * j + 4; ++k) {
        if (!corners[k].inside) continue;
        offsets[k] = (level.start + corners[k].pixel) * row_stride;
        prefetch_row(rows + offsets[k], p.channels, false);
        if (grad_rows != nullptr) prefetch_row(grad_rows + offsets[k], p.channels, true);
      }
    }
  }
}

ffi::Error MsdaForwardImpl(ffi::Buffer<ffi::F32> value, ffi::Buffer<ffi::F32> locations,
                           ffi::Buffer<ffi::F32> weights, ffi::Span<const int64_t> spatial_shapes,
                           int64_t num_threads, ffi::ThreadPool pool, ffi::ResultBuffer<ffi::F32> output) {
  if (num_threads < 0) return ffi::Error::InvalidArgument("msda_cpu: num_threads must be >= 0");
  const Parallelism parallel{num_threads, &pool};
  Problem p;
  if (auto error = make_problem(value, locations, weights, spatial_shapes, &p); error.failure()) return error;
  const float* value_data = value.typed_data();
  const float* location_data = locations.typed_data();
  const float* weight_data = weights.typed_data();
  float* out = output->typed_data();
  const int64_t C = p.channels, M = p.heads, L = p.levels, P = p.points, Q = p.queries;
  constexpr int64_t kQueryBlock = 64;  // work units small enough to balance threads when B * M is small
  const int64_t query_blocks = (Q + kQueryBlock - 1) / kQueryBlock;

  // Unit = (b, m, block of queries), m-major within b so a thread sweeps one head's
  // value rows (S rows, stride M * C) for many queries.
  parallel.run(p.batch * M * query_blocks, [&](int64_t begin, int64_t end) {
    std::vector<Corner> corners(4 * L * P);
    std::vector<int64_t> offsets(4 * L * P);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / (M * query_blocks);
      const int64_t m = unit / query_blocks % M;
      const int64_t q_end = std::min(Q, (unit % query_blocks + 1) * kQueryBlock);
      const float* value_bm = value_data + (b * p.positions * M + m) * C;  // row (b, 0, m)
      for (int64_t q = unit % query_blocks * kQueryBlock; q < q_end; ++q) {
        const int64_t bqm = (b * Q + q) * M + m;
        query_corners(p, location_data + 2 * bqm * L * P, value_bm, nullptr, corners.data(), offsets.data());
        float* out_row = out + bqm * C;
        std::memset(out_row, 0, C * sizeof(float));
        for (int64_t j = 0; j < L * P; ++j) {
          const float attention = weight_data[bqm * L * P + j];
          for (int64_t k = 4 * j; k < 4 * j + 4; ++k) {
            if (corners[k].inside) axpy(C, attention * corners[k].weight, value_bm + offsets[k], out_row);
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error MsdaBackwardImpl(ffi::Buffer<ffi::F32> value, ffi::Buffer<ffi::F32> locations,
                            ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> output_grad,
                            ffi::Span<const int64_t> spatial_shapes, int64_t num_threads, ffi::ThreadPool pool,
                            ffi::ResultBuffer<ffi::F32> value_grad, ffi::ResultBuffer<ffi::F32> location_grad,
                            ffi::ResultBuffer<ffi::F32> weight_grad) {
  if (num_threads < 0) return ffi::Error::InvalidArgument("msda_cpu: num_threads must be >= 0");
  const Parallelism parallel{num_threads, &pool};
  Problem p;
  if (auto error = make_problem(value, locations, weights, spatial_shapes, &p); error.failure()) return error;
  if (output_grad.element_count() != static_cast<size_t>(p.batch * p.queries * p.heads * p.channels)) {
    return ffi::Error::InvalidArgument("msda_cpu: output_grad must have B * Q * M * C elements");
  }
  const float* value_data = value.typed_data();
  const float* location_data = locations.typed_data();
  const float* weight_data = weights.typed_data();
  const float* grad_data = output_grad.typed_data();
  float* value_grad_data = value_grad->typed_data();
  float* location_grad_data = location_grad->typed_data();
  float* weight_grad_data = weight_grad->typed_data();
  const int64_t C = p.channels, M = p.heads, L = p.levels, P = p.points, Q = p.queries, S = p.positions;

  // Zero the value gradient in contiguous chunks (a strided per-head memset is
  // several times slower: it is most of the backward when Q * L * P is small).
  const int64_t value_size = p.batch * S * M * C;
  constexpr int64_t kZeroChunk = 1 << 16;  // floats
  parallel.run((value_size + kZeroChunk - 1) / kZeroChunk, [&](int64_t begin, int64_t end) {
    const int64_t first = begin * kZeroChunk, last = std::min(value_size, end * kZeroChunk);
    std::memset(value_grad_data + first, 0, (last - first) * sizeof(float));
  });

  // A thread owns whole (b, m) pairs: it is the only writer of the value-gradient
  // rows (b, :, m) and of the location / weight gradients of (b, :, m).
  parallel.run(p.batch * M, [&](int64_t begin, int64_t end) {
    std::vector<Corner> corners(4 * L * P);
    std::vector<int64_t> offsets(4 * L * P);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / M, m = pair % M;
      const int64_t first_row = b * S * M + m;  // row (b, 0, m) of the [B * S * M, C] table
      const float* value_bm = value_data + first_row * C;
      float* value_grad_bm = value_grad_data + first_row * C;
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t bqm = (b * Q + q) * M + m;
        query_corners(p, location_data + 2 * bqm * L * P, value_bm, value_grad_bm, corners.data(), offsets.data());
        const float* grad_row = grad_data + bqm * C;
        for (int64_t j = 0; j < L * P; ++j) {
          const int64_t lp = bqm * L * P + j;
          const float attention = weight_data[lp];
          float d_attention = 0.0f, d_x = 0.0f, d_y = 0.0f;
          for (int64_t k = 4 * j; k < 4 * j + 4; ++k) {
            const Corner& corner = corners[k];
            if (!corner.inside) continue;
            // <dL/dout, corner value>, and the corner's share of the value gradient.
            const float dot = dot_and_axpy(C, grad_row, value_bm + offsets[k], attention * corner.weight,
                                           value_grad_bm + offsets[k]);
            d_attention += dot * corner.weight;
            d_x += dot * corner.d_weight_dx;
            d_y += dot * corner.d_weight_dy;
          }
          weight_grad_data[lp] = d_attention;
          location_grad_data[2 * lp] = attention * d_x;
          location_grad_data[2 * lp + 1] = attention * d_y;
        }
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsdaCpuForward, MsdaForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // value
                                  .Arg<ffi::Buffer<ffi::F32>>()  // sampling_locations
                                  .Arg<ffi::Buffer<ffi::F32>>()  // attention_weights
                                  .Attr<ffi::Span<const int64_t>>("spatial_shapes")
                                  .Attr<int64_t>("num_threads")  // 0: decided at run time
                                  .Ctx<ffi::ThreadPool>()
                                  .Ret<ffi::Buffer<ffi::F32>>());  // output

XLA_FFI_DEFINE_HANDLER_SYMBOL(MsdaCpuBackward, MsdaBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // value
                                  .Arg<ffi::Buffer<ffi::F32>>()  // sampling_locations
                                  .Arg<ffi::Buffer<ffi::F32>>()  // attention_weights
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dL/doutput
                                  .Attr<ffi::Span<const int64_t>>("spatial_shapes")
                                  .Attr<int64_t>("num_threads")  // 0: decided at run time
                                  .Ctx<ffi::ThreadPool>()
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dL/dvalue
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dL/dsampling_locations
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dL/dattention_weights
