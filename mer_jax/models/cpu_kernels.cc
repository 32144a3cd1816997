// XLA:CPU kernels as XLA FFI handlers: float32 flash attention (forward and backward), matrix products (forward
// and backward) and matrix transpose.
//
// Flash attention multiplies key/query tiles that stay in cache and never forms the whole probability
// matrix. Layouts (row-major): q [B, T, N, H], k and v [B, S, K, H] with K dividing N (grouped heads), o like
// q, log-sum-exp [B, N, T]. Causal attention aligns the last query with the last key (query t sees keys up to
// t + S - T); S >= T is required there so that every query sees a key. Work is spread over XLA's intra-op
// thread pool. Built by mer_jax.models.cpu_ffi at first use.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kQueryTile = 64;
constexpr int64_t kKeyTile = 64;
constexpr int64_t kForwardKeyTile = 128;
constexpr int kLanes = 8;

typedef float Vec __attribute__((vector_size(32), aligned(4)));
typedef int32_t IntVec __attribute__((vector_size(32), aligned(4)));

inline Vec Load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void Store(float* p, Vec x) { *reinterpret_cast<Vec*>(p) = x; }
inline Vec Splat(float x) { return Vec{x, x, x, x, x, x, x, x}; }
inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
// A row length of at least n floats whose rows do not share L1 cache sets (strides of 2^k bytes do).
inline int64_t SkewedStride(int64_t n) { return RoundUp(n, kLanes) + 2 * kLanes; }

// exp(x) for each lane: range reduction by ln 2 and a degree-6 polynomial (within 3 ulp); 0 below -87.
inline Vec Exp(Vec x) {
  const Vec low = Splat(-87.0f);
  Vec clamped = x < low ? low : x;
  clamped = clamped > Splat(88.0f) ? Splat(88.0f) : clamped;
  const Vec magic = Splat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  Vec n = (clamped * Splat(1.44269504f) + magic) - magic;
  Vec r = clamped - n * Splat(0.693145751953125f) - n * Splat(1.428606765330187e-06f);
  Vec p = Splat(1.0f / 720);
  p = p * r + Splat(1.0f / 120);
  p = p * r + Splat(1.0f / 24);
  p = p * r + Splat(1.0f / 6);
  p = p * r + Splat(0.5f);
  p = p * r + Splat(1.0f);
  p = p * r + Splat(1.0f);
  IntVec bits = (__builtin_convertvector(n, IntVec) + 127) << 23;
  Vec result = p * (Vec)bits;
  return x < low ? Splat(0.0f) : result;
}

inline float ExpScalar(float x) {
  alignas(32) float lanes[kLanes] = {x};
  Store(lanes, Exp(Load(lanes)));
  return lanes[0];
}

// C[rows, 8 * kVecs] (+)= A[rows, depth] B[depth, 8 * kVecs] for `kRows` rows; A's element (r, p) is at
// a[r * a_row + p * a_col], B and C are row-major with leading dimensions ldb and ldc.
template <int kRows, int kVecs>
inline void MicroTile(int64_t depth, const float* a, int64_t a_row, int64_t a_col, const float* b, int64_t ldb,
                      float* c, int64_t ldc, bool accumulate) {
  Vec acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) acc[r][v] = accumulate ? Load(c + r * ldc + v * kLanes) : Splat(0.0f);
  for (int64_t p = 0; p < depth; ++p) {
    Vec bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = Load(b + p * ldb + v * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const Vec av = Splat(a[r * a_row + p * a_col]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) Store(c + r * ldc + v * kLanes, acc[r][v]);
}

template <int kVecs>
inline void RowBlock(int64_t rows, int64_t depth, const float* a, int64_t a_row, int64_t a_col, const float* b,
                     int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  switch (rows) {
    case 1: return MicroTile<1, kVecs>(depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
    case 2: return MicroTile<2, kVecs>(depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
    case 3: return MicroTile<3, kVecs>(depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
    case 4: return MicroTile<4, kVecs>(depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
    case 5: return MicroTile<5, kVecs>(depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
    default: return MicroTile<6, kVecs>(depth, a, a_row, a_col, b, ldb, c, ldc, accumulate);
  }
}

// C[rows, width] (+)= A[rows, depth] B[depth, width]; width is a multiple of 8; A strided as in MicroTile.
void Gemm(int64_t rows, int64_t width, int64_t depth, const float* a, int64_t a_row, int64_t a_col, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int64_t r = 0; r < rows; r += 6) {
    const int64_t block = std::min<int64_t>(6, rows - r);
    int64_t col = 0;
    for (; col + 2 * kLanes <= width; col += 2 * kLanes)
      RowBlock<2>(block, depth, a + r * a_row, a_row, a_col, b + col, ldb, c + r * ldc + col, ldc, accumulate);
    if (col < width)
      RowBlock<1>(block, depth, a + r * a_row, a_row, a_col, b + col, ldb, c + r * ldc + col, ldc, accumulate);
  }
}

// The first `count` rows of a [*, head_dim] strided matrix, transposed into [head_dim, width] (zero-padded columns).
void PackTransposed(const float* rows, int64_t stride, int64_t count, int64_t head_dim, int64_t width, float* out) {
  std::fill(out, out + head_dim * width, 0.0f);
  for (int64_t j = 0; j < count; ++j)
    for (int64_t h = 0; h < head_dim; ++h) out[h * width + j] = rows[j * stride + h];
}

// Runs body(0..count-1) on the caller and the pool's other threads; returns once every index has run.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t count, const Body& body) {
  struct Progress {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto progress = std::make_shared<Progress>();
  const Body* shared_body = &body;
  auto work = [progress, shared_body, count]() {
    for (int64_t i; (i = progress->next.fetch_add(1)) < count;) {
      (*shared_body)(i);
      if (progress->done.fetch_add(1) + 1 == count) {
        std::lock_guard<std::mutex> lock(progress->mutex);
        progress->finished.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(progress->mutex);
  progress->finished.wait(lock, [&] { return progress->done.load() == count; });
}

struct Dims {
  int64_t batch, queries, heads, keys, kv_heads, head_dim;
  int64_t offset() const { return keys - queries; }  // causal: query t sees keys up to t + offset
  int64_t group() const { return heads / kv_heads; }
};

ffi::Error CheckDims(ffi::Span<const int64_t> q, ffi::Span<const int64_t> k, ffi::Span<const int64_t> v,
                     bool causal, Dims* dims) {
  if (q.size() != 4 || k.size() != 4 || v.size() != 4)
    return ffi::Error::InvalidArgument("flash attention takes q, k, v of rank 4 ([B, T, N, H], [B, S, K, H])");
  *dims = Dims{q[0], q[1], q[2], k[1], k[2], q[3]};
  if (k[0] != q[0] || k[3] != q[3] || !std::equal(k.begin(), k.end(), v.begin()) || k[2] == 0 || q[2] % k[2] != 0)
    return ffi::Error::InvalidArgument("flash attention: k and v must be [B, S, K, H] with K dividing q's N");
  if (dims->head_dim % kLanes != 0)
    return ffi::Error::InvalidArgument("flash attention: the head dimension must be a multiple of 8");
  if (causal && dims->keys < dims->queries)
    return ffi::Error::InvalidArgument("flash attention: causal attention needs at least as many keys as queries");
  return ffi::Error::Success();
}

// Keys [0, limit) of a tile starting at key `first` that query `query` sees.
inline int64_t VisibleKeys(const Dims& d, bool causal, int64_t query, int64_t first, int64_t tile) {
  if (!causal) return tile;
  return std::clamp<int64_t>(query + d.offset() + 1 - first, 0, tile);
}

// The largest of x[0, count).
inline float RowMax(const float* x, int64_t count) {
  Vec lanes = Splat(-INFINITY);
  int64_t c = 0;
  for (; c + kLanes <= count; c += kLanes) lanes = Load(x + c) > lanes ? Load(x + c) : lanes;
  float best = -INFINITY;
  for (int i = 0; i < kLanes; ++i) best = std::max(best, lanes[i]);
  for (; c < count; ++c) best = std::max(best, x[c]);
  return best;
}

// The sum of x[0, count) for a multiple of 8 `count`.
inline float RowSum(const float* x, int64_t count) {
  Vec lanes = Splat(0.0f);
  for (int64_t c = 0; c < count; c += kLanes) lanes += Load(x + c);
  float sum = 0.0f;
  for (int i = 0; i < kLanes; ++i) sum += lanes[i];
  return sum;
}

// Softmax numerators of one tile row: p[c] = exp(scale * s[c] - shift) for c < visible, 0 up to width.
void Numerators(float* s, int64_t visible, int64_t width, float scale, float shift) {
  int64_t c = 0;
  for (; c + kLanes <= visible; c += kLanes) Store(s + c, Exp(Load(s + c) * Splat(scale) - Splat(shift)));
  for (; c < visible; ++c) s[c] = ExpScalar(scale * s[c] - shift);
  std::fill(s + visible, s + width, 0.0f);
}

// Copies `count` rows of `head_dim` floats, `stride` apart, into rows `out_stride` apart (SkewedStride: the
// model's head-interleaved rows alias in cache).
void CopyRows(const float* rows, int64_t stride, int64_t count, int64_t head_dim, float* out, int64_t out_stride) {
  for (int64_t j = 0; j < count; ++j) std::memcpy(out + j * out_stride, rows + j * stride, head_dim * sizeof(float));
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse, bool causal, float scale) {
  Dims d;
  if (ffi::Error error = CheckDims(q.dimensions(), k.dimensions(), v.dimensions(), causal, &d); error.failure())
    return error;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  const int64_t H = d.head_dim, q_stride = d.heads * H, kv_stride = d.kv_heads * H;
  const int64_t tiles = (d.queries + kQueryTile - 1) / kQueryTile, padded_keys = SkewedStride(d.keys);
  // Every key head transposed ([B, K, H, padded S]) and every value head contiguous ([B, K, S, H]), once.
  std::unique_ptr<float[]> keys_t(new float[d.batch * d.kv_heads * H * padded_keys]);
  const int64_t ld = SkewedStride(H);
  std::unique_ptr<float[]> values(new float[d.batch * d.kv_heads * d.keys * ld]);
  ParallelFor(pool, d.batch * d.kv_heads, [&](int64_t item) {
    const int64_t at = (item / d.kv_heads * d.keys * d.kv_heads + item % d.kv_heads) * H;
    PackTransposed(kp + at, kv_stride, d.keys, H, padded_keys, keys_t.get() + item * H * padded_keys);
    CopyRows(vp + at, kv_stride, d.keys, H, values.get() + item * d.keys * ld, ld);
  });
  ParallelFor(pool, d.batch * d.heads * tiles, [&](int64_t item) {
    const int64_t b = item / (d.heads * tiles), n = item / tiles % d.heads, first = item % tiles * kQueryTile;
    const int64_t rows = std::min(kQueryTile, d.queries - first), kv_item = b * d.kv_heads + n / d.group();
    const int64_t keys = causal ? std::min(d.keys, first + rows + d.offset()) : d.keys;
    const float* k_t = keys_t.get() + kv_item * H * padded_keys;
    const float* v_rows = values.get() + kv_item * d.keys * ld;
    thread_local std::vector<float> q_rows, scores, acc, row_max, row_sum;
    q_rows.resize(kQueryTile * H);
    CopyRows(qp + ((b * d.queries + first) * d.heads + n) * H, q_stride, rows, H, q_rows.data(), H);
    scores.resize(kQueryTile * kForwardKeyTile);
    acc.assign(rows * H, 0.0f);
    row_max.assign(rows, -INFINITY);
    row_sum.assign(rows, 0.0f);
    for (int64_t key = 0; key < keys; key += kForwardKeyTile) {
      const int64_t tile = std::min(kForwardKeyTile, keys - key), width = RoundUp(tile, kLanes);
      Gemm(rows, width, H, q_rows.data(), H, 1, k_t + key, padded_keys, scores.data(), width, false);
      for (int64_t r = 0; r < rows; ++r) {
        float* s = scores.data() + r * width;
        const int64_t visible = VisibleKeys(d, causal, first + r, key, tile);
        const float new_max = std::max(row_max[r], scale * RowMax(s, visible));  // scale > 0
        Numerators(s, visible, width, scale, new_max);
        if (visible == 0) continue;
        const float rescale = row_max[r] == -INFINITY ? 0.0f : ExpScalar(row_max[r] - new_max);
        row_sum[r] = row_sum[r] * rescale + RowSum(s, width);
        row_max[r] = new_max;
        for (int64_t h = 0; h < H; ++h) acc[r * H + h] *= rescale;
      }
      Gemm(rows, H, tile, scores.data(), width, 1, v_rows + key * ld, ld, acc.data(), H, true);
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* out = op + ((b * d.queries + first + r) * d.heads + n) * H;
      for (int64_t h = 0; h < H; ++h) out[h] = acc[r * H + h] / row_sum[r];
      lp[(b * d.heads + n) * d.queries + first + r] = row_max[r] + std::log(row_sum[r]);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> d_o,
                    ffi::ResultBuffer<ffi::F32> d_q, ffi::ResultBuffer<ffi::F32> d_k, ffi::ResultBuffer<ffi::F32> d_v,
                    bool causal, float scale) {
  Dims d;
  if (ffi::Error error = CheckDims(q.dimensions(), k.dimensions(), v.dimensions(), causal, &d); error.failure())
    return error;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(), *op = o.typed_data();
  const float *lp = lse.typed_data(), *dop = d_o.typed_data();
  float *dqp = d_q->typed_data(), *dkp = d_k->typed_data(), *dvp = d_v->typed_data();
  const int64_t H = d.head_dim, G = d.group(), T = d.queries, S = d.keys, q_stride = d.heads * H;
  const int64_t kv_stride = d.kv_heads * H, padded_keys = SkewedStride(S), ld = SkewedStride(H);
  ParallelFor(pool, d.batch * d.kv_heads, [&](int64_t item) {
    const int64_t b = item / d.kv_heads, kvh = item % d.kv_heads;
    const int64_t kv_at = (b * S * d.kv_heads + kvh) * H;
    thread_local std::vector<float> k_rows, k_t, v_t, q_rows, d_o_rows, probs, d_probs, d_k_acc, d_v_acc, d_q_acc,
        deltas;
    k_rows.resize(S * ld);
    k_t.resize(H * padded_keys);
    v_t.resize(H * padded_keys);
    q_rows.resize(G * T * ld);
    d_o_rows.resize(G * T * ld);
    probs.resize(kQueryTile * kKeyTile);
    d_probs.resize(kQueryTile * kKeyTile);
    d_k_acc.resize(kKeyTile * H);
    d_v_acc.resize(kKeyTile * H);
    d_q_acc.assign(G * T * H, 0.0f);
    deltas.resize(G * T);
    CopyRows(kp + kv_at, kv_stride, S, H, k_rows.data(), ld);
    PackTransposed(kp + kv_at, kv_stride, S, H, padded_keys, k_t.data());
    PackTransposed(vp + kv_at, kv_stride, S, H, padded_keys, v_t.data());
    for (int64_t g = 0; g < G; ++g) {
      const int64_t at = (b * T * d.heads + kvh * G + g) * H;
      CopyRows(qp + at, q_stride, T, H, q_rows.data() + g * T * ld, ld);
      CopyRows(dop + at, q_stride, T, H, d_o_rows.data() + g * T * ld, ld);
      for (int64_t t = 0; t < T; ++t) {  // rowsum(dO * O) of each query
        float sum = 0.0f;
        for (int64_t h = 0; h < H; ++h) sum += dop[at + t * q_stride + h] * op[at + t * q_stride + h];
        deltas[g * T + t] = sum;
      }
    }
    for (int64_t key = 0; key < S; key += kKeyTile) {
      const int64_t tile = std::min(kKeyTile, S - key), width = RoundUp(tile, kLanes);
      std::fill(d_k_acc.begin(), d_k_acc.end(), 0.0f);
      std::fill(d_v_acc.begin(), d_v_acc.end(), 0.0f);
      const int64_t first_query = causal ? std::max<int64_t>(0, key - d.offset()) / kQueryTile * kQueryTile : 0;
      for (int64_t g = 0; g < G; ++g) {
        const float* lse_row = lp + (b * d.heads + kvh * G + g) * T;
        for (int64_t first = first_query; first < T; first += kQueryTile) {
          const int64_t rows = std::min(kQueryTile, T - first);
          const float* q_tile = q_rows.data() + (g * T + first) * ld;
          const float* d_o_tile = d_o_rows.data() + (g * T + first) * ld;
          Gemm(rows, width, H, q_tile, ld, 1, k_t.data() + key, padded_keys, probs.data(), width, false);
          for (int64_t r = 0; r < rows; ++r)
            Numerators(probs.data() + r * width, VisibleKeys(d, causal, first + r, key, tile), width, scale,
                       lse_row[first + r]);
          Gemm(rows, width, H, d_o_tile, ld, 1, v_t.data() + key, padded_keys, d_probs.data(), width, false);
          for (int64_t r = 0; r < rows; ++r) {
            const Vec delta = Splat(deltas[g * T + first + r]);
            for (int64_t c = 0; c < width; c += kLanes) {
              float* ds = d_probs.data() + r * width + c;
              Store(ds, Load(probs.data() + r * width + c) * (Load(ds) - delta));
            }
          }
          // dV += P^T dO, dK += dS^T Q (A read transposed), dQ += dS K.
          Gemm(tile, H, rows, probs.data(), 1, width, d_o_tile, ld, d_v_acc.data(), H, true);
          Gemm(tile, H, rows, d_probs.data(), 1, width, q_tile, ld, d_k_acc.data(), H, true);
          Gemm(rows, H, tile, d_probs.data(), width, 1, k_rows.data() + key * ld, ld,
               d_q_acc.data() + (g * T + first) * H, H, true);
        }
      }
      for (int64_t j = 0; j < tile; ++j) {
        const int64_t at = kv_at + (key + j) * kv_stride;
        for (int64_t h = 0; h < H; ++h) {
          dkp[at + h] = scale * d_k_acc[j * H + h];
          dvp[at + h] = d_v_acc[j * H + h];
        }
      }
    }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t at = ((b * T + t) * d.heads + kvh * G + g) * H;
        for (int64_t h = 0; h < H; ++h) dqp[at + h] = scale * d_q_acc[(g * T + t) * H + h];
      }
  });
  return ffi::Error::Success();
}

// out[C, R] = in[R, C]^T, by 8 x 8 blocks transposed in registers.
void Transpose8(const float* in, int64_t ld_in, float* out, int64_t ld_out) {
  Vec r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = Load(in + i * ld_in);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4)
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = __builtin_shufflevector(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * j + 1] = __builtin_shufflevector(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int i = 0; i < 4; ++i) {
    Store(out + i * ld_out, __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11));
    Store(out + (i + 4) * ld_out, __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15));
  }
}

ffi::Error Transpose(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> in, ffi::ResultBuffer<ffi::F32> out) {
  if (in.dimensions().size() != 2) return ffi::Error::InvalidArgument("transpose takes a rank-2 array");
  const int64_t rows = in.dimensions()[0], cols = in.dimensions()[1];
  const float* src = in.typed_data();
  float* dst = out->typed_data();
  constexpr int64_t kStrip = 64;
  ParallelFor(pool, (rows + kStrip - 1) / kStrip, [&](int64_t strip) {
    const int64_t first = strip * kStrip, last = std::min(rows, first + kStrip), full = first + (last - first) / 8 * 8;
    const int64_t full_cols = cols / 8 * 8;
    for (int64_t r = first; r < full; r += 8)
      for (int64_t c = 0; c < full_cols; c += 8) Transpose8(src + r * cols + c, cols, dst + c * rows + r, rows);
    for (int64_t r = first; r < last; ++r)
      for (int64_t c = r < full ? full_cols : 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  });
  return ffi::Error::Success();
}

// Matrix products C[M, N] = A B by the BLIS scheme: B packed in blocks of kGemmDepth x kGemmWidth shared by
// all threads, A in blocks of kGemmRows rows per task, both into panels the 6 x 16 register tile reads in order.
constexpr int64_t kTileRows = 6, kTileCols = 16;
constexpr int64_t kGemmDepth = 384, kGemmRows = 96, kGemmWidth = 2048;

// A strided matrix: element (i, j) at data[i * row + j * col].
struct Strided {
  const float* data;
  int64_t row, col;
  float at(int64_t i, int64_t j) const { return data[i * row + j * col]; }
};

// C tile [rows <= 6, cols <= 16] (+)= packed A panel [depth][6] times packed B panel [depth][16].
void PackedTile(int64_t depth, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
                bool accumulate, int64_t rows, int64_t cols) {
  Vec acc[kTileRows][2];
  for (int r = 0; r < kTileRows; ++r) {  // C's rows are fetched while the products run (a quarter faster)
    acc[r][0] = acc[r][1] = Splat(0.0f);
    __builtin_prefetch(c + r * ldc, 1, 3);
    __builtin_prefetch(c + r * ldc + kTileCols - 1, 1, 3);
  }
  for (int64_t p = 0; p < depth; ++p) {
    const Vec b0 = Load(b + p * kTileCols), b1 = Load(b + p * kTileCols + kLanes);
    for (int r = 0; r < kTileRows; ++r) {
      const Vec av = Splat(a[p * kTileRows + r]);
      acc[r][0] += av * b0;
      acc[r][1] += av * b1;
    }
  }
  if (rows == kTileRows && cols == kTileCols) {
    for (int r = 0; r < kTileRows; ++r)
      for (int v = 0; v < 2; ++v) {
        float* out = c + r * ldc + v * kLanes;
        Store(out, accumulate ? Load(out) + acc[r][v] : acc[r][v]);
      }
    return;
  }
  alignas(32) float tile[kTileRows][kTileCols];
  for (int r = 0; r < kTileRows; ++r)
    for (int v = 0; v < 2; ++v) Store(tile[r] + v * kLanes, acc[r][v]);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) c[r * ldc + j] = (accumulate ? c[r * ldc + j] : 0.0f) + tile[r][j];
}

// Rows [first, first + rows) x depths [p0, p0 + depth) of A as panels [depth][6], zero-padded; read along
// whichever of A's axes is contiguous.
void PackRows(const Strided& a, int64_t first, int64_t rows, int64_t p0, int64_t depth, float* out) {
  for (int64_t i = 0; i < rows; i += kTileRows, out += depth * kTileRows) {
    const int64_t live = std::min(kTileRows, rows - i);
    if (live < kTileRows) std::fill(out, out + depth * kTileRows, 0.0f);
    if (a.col == 1) {
      for (int64_t r = 0; r < live; ++r)
        for (int64_t p = 0; p < depth; ++p) out[p * kTileRows + r] = a.at(first + i + r, p0 + p);
    } else {
      for (int64_t p = 0; p < depth; ++p)
        for (int64_t r = 0; r < live; ++r) out[p * kTileRows + r] = a.at(first + i + r, p0 + p);
    }
  }
}

// Columns [first, first + cols) x depths [p0, p0 + depth) of B as one panel [depth][16], zero-padded.
void PackColumns(const Strided& b, int64_t p0, int64_t depth, int64_t first, int64_t cols, float* out) {
  if (b.col == 1 && cols == kTileCols) {
    for (int64_t p = 0; p < depth; ++p) std::memcpy(out + p * kTileCols, b.data + (p0 + p) * b.row + first, 64);
    return;
  }
  for (int64_t j = 0; j < kTileCols; ++j)
    for (int64_t p = 0; p < depth; ++p) out[p * kTileCols + j] = j < cols ? b.at(p0 + p, first + j) : 0.0f;
}

// C[M, N] = A B. for_each(count, body) runs body(0..count-1), on `threads` threads: B's block is packed
// once for all of them, then each task packs and multiplies its own rows of A.
template <typename ForEach>
void BlockedGemm(const ForEach& for_each, int64_t threads, int64_t M, int64_t N, int64_t K, const Strided& a,
                 const Strided& b, float* c) {
  if (M == 0 || N == 0) return;
  const int64_t row_block = std::min(kGemmRows, RoundUp((M + threads - 1) / threads, kTileRows));
  std::unique_ptr<float[]> b_packed(new float[kGemmDepth * RoundUp(std::min(N, kGemmWidth), kTileCols)]);
  if (K == 0) std::fill(c, c + M * N, 0.0f);
  for (int64_t jc = 0; jc < N; jc += kGemmWidth) {
    const int64_t width = std::min(kGemmWidth, N - jc), panels = (width + kTileCols - 1) / kTileCols;
    for (int64_t pc = 0; pc < K; pc += kGemmDepth) {
      const int64_t depth = std::min(kGemmDepth, K - pc);
      for_each(panels, [&](int64_t j) {
        PackColumns(b, pc, depth, jc + j * kTileCols, std::min(kTileCols, width - j * kTileCols),
                    b_packed.get() + j * depth * kTileCols);
      });
      for_each((M + row_block - 1) / row_block, [&](int64_t block) {
        const int64_t first = block * row_block, rows = std::min(row_block, M - first);
        thread_local std::vector<float> a_packed;
        a_packed.resize(RoundUp(rows, kTileRows) * depth);
        PackRows(a, first, rows, pc, depth, a_packed.data());
        for (int64_t j = 0; j < panels; ++j)
          for (int64_t i = 0; i < rows; i += kTileRows)
            PackedTile(depth, a_packed.data() + i * depth, b_packed.get() + j * depth * kTileCols,
                       c + (first + i) * N + jc + j * kTileCols, N, pc > 0, std::min(kTileRows, rows - i),
                       std::min(kTileCols, width - j * kTileCols));
      });
    }
  }
}

// BlockedGemm over all of the pool's threads.
void PoolGemm(ffi::ThreadPool& pool, int64_t M, int64_t N, int64_t K, const Strided& a, const Strided& b, float* c) {
  auto on_pool = [&pool](int64_t count, const auto& body) { ParallelFor(pool, count, body); };
  BlockedGemm(on_pool, std::max<int64_t>(1, pool.num_threads()), M, N, K, a, b, c);
}

// BlockedGemm on the calling thread alone.
void SerialGemm(int64_t M, int64_t N, int64_t K, const Strided& a, const Strided& b, float* c) {
  auto in_order = [](int64_t count, const auto& body) {
    for (int64_t i = 0; i < count; ++i) body(i);
  };
  BlockedGemm(in_order, 1, M, N, K, a, b, c);
}

// y[M, N] = x[M, K] w[K, N].
ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                  ffi::ResultBuffer<ffi::F32> y) {
  if (x.dimensions().size() != 2 || w.dimensions().size() != 2 || x.dimensions()[1] != w.dimensions()[0])
    return ffi::Error::InvalidArgument("matmul takes matrices [M, K] and [K, N]");
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1], N = w.dimensions()[1];
  PoolGemm(pool, M, N, K, Strided{x.typed_data(), K, 1}, Strided{w.typed_data(), N, 1}, y->typed_data());
  return ffi::Error::Success();
}

// The gradients of y = x w from dy [M, N]: dx = dy w^T [M, K] and dw = x^T dy [K, N]. On two threads the two
// products run at once, one per thread, with no synchronisation between them; on more threads, one after the
// other over all of them.
ffi::Error MatmulBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                          ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dw) {
  if (x.dimensions().size() != 2 || w.dimensions().size() != 2 || dy.dimensions().size() != 2 ||
      x.dimensions()[1] != w.dimensions()[0] || dy.dimensions()[0] != x.dimensions()[0] ||
      dy.dimensions()[1] != w.dimensions()[1])
    return ffi::Error::InvalidArgument("matmul backward takes x [M, K], w [K, N] and dy [M, N]");
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1], N = w.dimensions()[1];
  const Strided dy_rows{dy.typed_data(), N, 1}, w_t{w.typed_data(), 1, N}, x_t{x.typed_data(), 1, K};
  if (pool.num_threads() == 2) {
    ParallelFor(pool, 2, [&](int64_t product) {
      if (product == 0) SerialGemm(M, K, N, dy_rows, w_t, dx->typed_data());
      else SerialGemm(K, N, M, x_t, dy_rows, dw->typed_data());
    });
  } else {
    PoolGemm(pool, M, K, N, dy_rows, w_t, dx->typed_data());
    PoolGemm(pool, K, N, M, x_t, dy_rows, dw->typed_data());
  }
  return ffi::Error::Success();
}

using F32Buffer = ffi::Buffer<ffi::F32>;

// The binding both attention handlers start with: the thread pool, then q, k and v.
auto BindAttentionInputs() {
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MerFlashAttentionForward, Forward,
                              BindAttentionInputs()
                                  .Ret<F32Buffer>()  // o
                                  .Ret<F32Buffer>()  // log-sum-exp
                                  .Attr<bool>("causal")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MerFlashAttentionBackward, Backward,
                              BindAttentionInputs()
                                  .Arg<F32Buffer>()  // o
                                  .Arg<F32Buffer>()  // log-sum-exp
                                  .Arg<F32Buffer>()  // dO
                                  .Ret<F32Buffer>()  // dQ
                                  .Ret<F32Buffer>()  // dK
                                  .Ret<F32Buffer>()  // dV
                                  .Attr<bool>("causal")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MerTranspose, Transpose,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32Buffer>().Ret<F32Buffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MerMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Buffer>()  // x
                                  .Arg<F32Buffer>()  // w
                                  .Ret<F32Buffer>());  // y

XLA_FFI_DEFINE_HANDLER_SYMBOL(MerMatmulBackward, MatmulBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Buffer>()  // x
                                  .Arg<F32Buffer>()  // w
                                  .Arg<F32Buffer>()  // dy
                                  .Ret<F32Buffer>()  // dx
                                  .Ret<F32Buffer>());  // dw
