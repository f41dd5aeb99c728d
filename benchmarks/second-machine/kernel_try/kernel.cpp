#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <cmath>
#include <vector>
using Vec = at::vec::Vectorized<float>;

#include <immintrin.h>
static inline Vec fexp(const Vec& xv) {  // Cody-Waite reduction + degree-6 polynomial, inlined
  __m256 x = _mm256_min_ps(_mm256_max_ps((__m256)xv, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return Vec(_mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
struct F2 { float vth, smax, alpha_h, rho, reach, log_floor; int k; float w[8]; };

// One step of eqs. (4)-(5) for a vector of elements: returns s[t], updates u to u[t], writes v[t].
static inline Vec lif_step(Vec& u, const float* x, float decay, float vth, float smax, Vec& v) {
  v = u * Vec(decay) + Vec::loadu(x);
  Vec s = at::vec::minimum(at::vec::maximum((v / Vec(vth)).floor(), Vec(0.f)), Vec(smax));
  u = v - s * Vec(vth);
  return s;
}

static inline Vec f2(const Vec& v, const F2& p) {
  Vec x = v / Vec(p.vth);
  Vec c = at::vec::minimum(at::vec::maximum(x.round(), Vec(1.f)), Vec(p.smax));
  Vec d = x - c;
  Vec dc = at::vec::minimum(at::vec::maximum(d, Vec(-p.reach)), Vec(p.reach));
  Vec r = fexp(dc * Vec(2.f * p.rho));
  Vec rinv = Vec(1.f) / r;
  Vec factor(1.f), up(1.f), down(1.f), zero(0.f);
  for (int j = 1; j <= p.k; ++j) {
    up = up * r; down = down * rinv;
    Vec a = Vec::blendv(zero, up, c <= Vec(p.smax - j));
    Vec b = Vec::blendv(zero, down, c >= Vec(1.f + j));
    factor = factor + Vec(p.w[j]) * (a + b);
  }
  Vec e = d * d * Vec(-p.rho);
  Vec ex = fexp(at::vec::maximum(e, Vec(p.log_floor)));
  ex = Vec::blendv(ex, zero, e < Vec(p.log_floor));
  return Vec(p.alpha_h) * ex * factor;
}

// g, x: [T, M] contiguous float32. bptt-detach: g_v[t] = f(v[t]) g[t] + beta g_v[t+1].
torch::Tensor bptt_detach_backward(torch::Tensor g, torch::Tensor x, double decay, double vth, int64_t smax,
                                   double alpha_h, double alpha_w, int64_t k) {
  const int64_t T = x.size(0), M = x.size(1);
  auto out = torch::empty_like(x);
  F2 p{(float)vth, (float)smax, (float)alpha_h, (float)(vth * vth / alpha_w), 0.f, 0.f, (int)k, {0}};
  p.log_floor = 0.5f * std::log(std::numeric_limits<float>::min());
  p.reach = std::sqrt(-p.log_floor / p.rho);
  for (int j = 1; j <= k; ++j) p.w[j] = std::exp(-p.rho * j * j);
  const float* gp = g.data_ptr<float>(); const float* xp = x.data_ptr<float>(); float* op = out.data_ptr<float>();
  const int64_t W = Vec::size();
  constexpr int U = 2;  // vectors in flight: independent chains for the out-of-order core
  TORCH_CHECK(M % (W * U) == 0, "prototype: M must be a multiple of ", W * U);
  at::parallel_for(0, M / (W * U), 64, [&](int64_t b, int64_t e) {
    std::vector<Vec> vs(T * U);
    for (int64_t i = b; i < e; ++i) {
      const int64_t o = i * W * U;
      Vec u[U];
      for (int q = 0; q < U; ++q) u[q] = Vec(0.f);
      for (int64_t t = 0; t < T; ++t) {
        for (int q = 0; q < U; ++q) {
          lif_step(u[q], xp + t * M + o + q * W, (float)decay, p.vth, p.smax, vs[t * U + q]);
        }
      }
      Vec gu[U];
      for (int q = 0; q < U; ++q) gu[q] = Vec(0.f);
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int q = 0; q < U; ++q) {
          Vec gv = f2(vs[t * U + q], p) * Vec::loadu(gp + t * M + o + q * W) + gu[q];
          gv.store(op + t * M + o + q * W);
          gu[q] = gv * Vec((float)decay);
        }
      }
    }
  });
  return out;
}

torch::Tensor lif_forward_k(torch::Tensor x, double decay, double vth, int64_t smax) {
  const int64_t T = x.size(0), M = x.size(1);
  auto out = torch::empty_like(x);
  const float* xp = x.data_ptr<float>(); float* op = out.data_ptr<float>();
  const int64_t W = Vec::size();
  constexpr int U = 4;
  TORCH_CHECK(M % (W * U) == 0, "prototype: M must be a multiple of ", W * U);
  at::parallel_for(0, M / (W * U), 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t o = i * W * U;
      Vec u[U];
      for (int q = 0; q < U; ++q) u[q] = Vec(0.f);
      for (int64_t t = 0; t < T; ++t) {
        for (int q = 0; q < U; ++q) {
          Vec v;
          lif_step(u[q], xp + t * M + o + q * W, (float)decay, (float)vth, (float)smax, v).store(op + t * M + o + q * W);
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bptt_detach_backward", &bptt_detach_backward);
  m.def("lif_forward", &lif_forward_k);
}
