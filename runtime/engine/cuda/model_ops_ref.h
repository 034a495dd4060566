// CPU twins of model_ops_cuda.h: plain loops over fp32 (fp64 where the maths is a reduction),
// built on kernels/cpu/ops.h, with bf16 values passed as fp32 holding bf16-representable numbers
// and outputs rounded to bf16 exactly where the GPU stores bf16. The oracles of
// model_ops_cuda_test.cc.
#pragma once

#include <cstdint>
#include <vector>

namespace resa::cuda::ref {

float RoundBf16(float x);  // nearest even

void Embed(const float* table, const int32_t* tokens, int rows, int hidden, float* h);
// h += add (when set); x = bf16(RmsNorm(h) * w).
void AddRmsNorm(float* h, const float* add, const float* weight, int rows, int dim, float eps,
                float* x);
// qkv [rows][(H + 2 Hkv) d] (+ bias) -> q [rows][H][d], k, v [rows][Hkv][d], bf16-rounded, q and
// k rotated by RopeNeox.
void QkvRope(const float* qkv, const float* bias, const int32_t* positions, int rows,
             int num_heads, int num_kv_heads, int head_dim, float theta, float* q, float* k,
             float* v);
void SiluMul(const float* gu, int rows, int inter, float* act);
// y[m][j] = sum_k x[m][k] w[j][k] in fp64.
void Gemv(const float* w, const float* x, int rows, int n, int k, float* y);
// GemvResidualBf16Cuda (one row): h[j] += (w . x)[j] (the fp64 sum rounded to fp32, then one
// fp32 add), g[j] = bf16(h[j] * next_w[j]).
void GemvResidual(const float* w, const float* x, int n, int k, float* h, const float* next_w,
                  float* g);
// A RowNorm input's scale: 1 / sqrt(mean(h^2) + eps), in fp64.
double RowRmsInv(const float* h, int dim, float eps);
// (value desc, index asc), NaN never wins.
int32_t Argmax(const float* row, int n);
// Whole-page min/max summaries, [pages][hkv][2][d] from k [pages][hkv][16][d].
void SummarizePages(const float* k, int64_t pages, int hkv, int d, float* summary);

}  // namespace resa::cuda::ref
