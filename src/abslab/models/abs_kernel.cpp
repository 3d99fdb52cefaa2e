// ABS's latent optimisation (the Adam steps of abs_inference.optimise_latents) for the CPU.
//
// One work unit is one (image, class) pair: its latent z (8), Adam's moments, and the class's
// decoder, forward and adjoint, for every step. Units never interact (Adam is elementwise, the
// clip is per latent), so all steps of a unit run with its activations in L1/L2 cache (about
// 140 KB), and callers split the units over threads. Activations are channels-last, 16
// channels to a 512-bit vector (GCC vector extensions; the compiler maps them to AVX-512 where
// the CPU has it, to two AVX2 registers otherwise). Convolutions are written as gathers with a
// row of output pixels in registers, each weight vector loaded once per row.
//
// Layers (the folded decoder of abs_inference.FoldedDecoder, per class):
//   z (8) -> dense -> 32 x 4x4 -> ELU -> transposed conv 5x5 stride 2 -> 16 x 11x11 -> ELU
//     -> transposed conv 5x5 stride 2 -> 16 x 25x25 -> ELU -> transposed conv 4x4 -> 28x28
//     -> sigmoid.
// Loss: (||x - rec||^2 + beta/2 ||z||^2) / 784; Adam as torch.optim.Adam; the clip to the ball.
#include <cstdint>
#include <cstring>
#include <memory>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

constexpr int LAT = 8, C0 = 32, C1 = 16, C2 = 16;
constexpr int S0 = 4, S1 = 11, S2 = 25, S3 = 28, PIX = S3 * S3;
constexpr int K = 5, K3 = 4;
// Padded sides: a stride-2 gather reads 2 rows/columns beyond each side of its input; layer 3
// (4x4, stride 1) reads 3.
constexpr int P0 = S0 + 4, P1 = S1 + 4, P2 = S2 + 6;
constexpr float PIXELS = 784.0f;

inline v16 load(const float *p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float *p, v16 v) { std::memcpy(p, &v, sizeof v); }

inline v16 splat(float s) { return v16{} + s; }

inline float hsum(v16 v) {
  v += __builtin_shuffle(v, v16i{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  v += __builtin_shuffle(v, v16i{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  v += __builtin_shuffle(v, v16i{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  v += __builtin_shuffle(v, v16i{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
  return v[0];
}

// exp(x) - 1 and exp(x), Cephes' single-precision exp (polynomial and range reduction, about
// 1 ulp), x clamped to [-87.3, 88.3]. exp(x) = 2^n (1 + q), q = r + r^2 P(r), so exp(x) - 1 =
// 2^n q + (2^n - 1): for |x| < ln2/2 that is q itself, accurate relative to x near 0 (as
// torch's expm1 in ELU), where exp(x) - 1 would lose the low bits.
inline v16 vexpm1(v16 x) {
  x = x < -87.3f ? splat(-87.3f) : x;
  x = x > 88.3f ? splat(88.3f) : x;
  const v16 shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  v16 n = (x * 1.44269504088896341f + shifter) - shifter;
  v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const v16 q = p * (r * r) + r;
  v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return scale * q + (scale - 1.0f);
}

inline v16 vexp(v16 x) { return vexpm1(x) + 1.0f; }

inline v16 elu(v16 a) { return a > 0.0f ? a : vexpm1(a); }

// ELU's derivative from its output h: 1 above zero, h + 1 = exp(a) below.
inline v16 elu_slope(v16 h) { return h > 0.0f ? splat(1.0f) : h + 1.0f; }

// One class's decoder: weights in the layouts the loops below read.
struct Decoder {
  const float *dense;      // (8, 4*4*32): latent i -> (y, x, c)
  const float *dense_bias; // (4*4*32)
  const float *w1;         // (5*5, 32, 16): tap, input channel, output channel
  const float *w1_adj;     // (5*5, 16, 32): tap, output channel, input channel
  const float *b1;         // (16)
  const float *w2;         // (5*5, 16, 16)
  const float *w2_adj;     // (5*5, 16, 16)
  const float *b2;         // (16)
  const float *w3;         // (4*4, 16): tap, input channel
  float b3;
};

// Transposed convolution, stride 2, 5x5, CIN -> 16 channels, NIN -> NOUT = 2 NIN + 3 pixels,
// then ELU, into out (padded by PAD, channels-last, 16 channels). in: (NIN + 4)^2 x CIN,
// padded by 2. Output pixel (2j + py, 2i + px) sums the taps of its parity.
template <int CIN, int NIN, int PAD, int POUT>
void transposed_conv_elu(const float *in, const float *w, const float *bias, float *out) {
  constexpr int PIN = NIN + 4, NOUT = 2 * NIN + 3, J = NIN + 2;
  const v16 b = load(bias);
  for (int oy = 0; oy < NOUT; oy++) {
    const int py = oy & 1, jy = oy >> 1;
    for (int px = 0; px < 2; px++) {
      v16 acc[J];
#pragma GCC unroll 16
      for (int j = 0; j < J; j++) acc[j] = b;
      for (int ky = py; ky < K; ky += 2) {
        const int row = jy + 2 - (ky - py) / 2;
        if (row < 2 || row >= NIN + 2) continue;  // a padding row: zeros
        const float *row_base = in + row * PIN * CIN;
        for (int kx = px; kx < K; kx += 2) {
          const float *cols = row_base + (2 - (kx - px) / 2) * CIN;
          const float *wt = w + (ky * K + kx) * CIN * 16;
          for (int ic = 0; ic < CIN; ic++) {
            const v16 wv = load(wt + ic * 16);
#pragma GCC unroll 16
            for (int j = 0; j < J; j++) acc[j] += cols[j * CIN + ic] * wv;
          }
        }
      }
      const int count = (NOUT - px + 1) / 2;
      float *dst = out + ((oy + PAD) * POUT + PAD + px) * 16;
      for (int j = 0; j < count; j++) store(dst + 2 * j * 16, elu(acc[j]));
    }
  }
}

// The adjoint of transposed_conv_elu, times ELU's slope at its input: the ordinary
// convolution, stride 2, of grad (NOUT x NOUT x 16, unpadded) with the weights laid out
// (tap, output channel, input channel); h_in: the layer's input (padded by 2, CIN channels).
// grad_in: NIN x NIN x CIN.
template <int CIN, int NIN>
void conv_adjoint(const float *grad, const float *w_adj, const float *h_in, float *grad_in) {
  constexpr int NOUT = 2 * NIN + 3, PIN = NIN + 4, V = CIN / 16;
  for (int iy = 0; iy < NIN; iy++) {
    v16 acc[NIN][V];
#pragma GCC unroll 16
    for (int ix = 0; ix < NIN; ix++)
      for (int v = 0; v < V; v++) acc[ix][v] = v16{};
    for (int ky = 0; ky < K; ky++) {
      for (int kx = 0; kx < K; kx++) {
        const float *g = grad + ((2 * iy + ky) * NOUT + kx) * 16;
        const float *wt = w_adj + (ky * K + kx) * 16 * CIN;
        for (int oc = 0; oc < 16; oc++) {
          v16 wv[V];
          for (int v = 0; v < V; v++) wv[v] = load(wt + oc * CIN + v * 16);
#pragma GCC unroll 16
          for (int ix = 0; ix < NIN; ix++)
            for (int v = 0; v < V; v++) acc[ix][v] += g[2 * ix * 16 + oc] * wv[v];
        }
      }
    }
    for (int ix = 0; ix < NIN; ix++)
      for (int v = 0; v < V; v++) {
        const float *h = h_in + ((iy + 2) * PIN + ix + 2) * CIN + v * 16;
        store(grad_in + (iy * NIN + ix) * CIN + v * 16, acc[ix][v] * elu_slope(load(h)));
      }
  }
}

struct Workspace {
  alignas(64) float h0[P0 * P0 * C0];  // ELU outputs, padded, channels-last
  alignas(64) float h1[P1 * P1 * C1];
  alignas(64) float h2[P2 * P2 * C2];
  alignas(64) float rec_grad[PIX];     // d loss / d (pre-sigmoid) output
  alignas(64) float g2[S2 * S2 * C2];  // gradients at the pre-activations
  alignas(64) float g1[S1 * S1 * C1];
  alignas(64) float g0[S0 * S0 * C0];
};

// Layer 0: h0 = ELU(z M + b), 32 x 4x4, into the padded h0.
void dense_elu(const Decoder &d, const float *z, float *h0) {
  for (int y = 0; y < S0; y++)
    for (int xx = 0; xx < S0; xx++)
      for (int v = 0; v < C0 / 16; v++) {
        const int p = (y * S0 + xx) * C0 + v * 16;
        v16 a = load(d.dense_bias + p);
        for (int i = 0; i < LAT; i++) a += z[i] * load(d.dense + i * S0 * S0 * C0 + p);
        store(h0 + ((y + 2) * P0 + xx + 2) * C0 + v * 16, elu(a));
      }
}

// Layer 3 (16 -> 1, 4x4, stride 1, its 16 taps in registers), the sigmoid and the loss's
// derivative at the pre-sigmoid output, (rec - x) * 2/784 * rec (1 - rec), into out (784).
void last_layer_loss_grad(const Decoder &d, const float *h2, const float *x, float *out) {
  v16 w3[K3 * K3];
  for (int t = 0; t < K3 * K3; t++) w3[t] = load(d.w3 + t * 16);
  alignas(64) float pre[PIX];
  for (int oy = 0; oy < S3; oy++)
    for (int ox = 0; ox < S3; ox++) {
      v16 acc{};
      for (int ky = 0; ky < K3; ky++)
        for (int kx = 0; kx < K3; kx++)
          acc += load(h2 + ((oy - ky + 3) * P2 + ox - kx + 3) * 16) * w3[ky * K3 + kx];
      pre[oy * S3 + ox] = hsum(acc) + d.b3;
    }
  for (int p = 0; p < PIX; p += 16) {
    const v16 rec = 1.0f / (1.0f + vexp(-load(pre + p)));
    const v16 grad_rec = (rec - load(x + p)) * (2.0f / PIXELS);
    store(out + p, grad_rec * rec * (1.0f - rec));
  }
}

// Layer 3's adjoint (a stride-1 convolution) times ELU's slope at layer 2's output h2.
void last_layer_adjoint(const Decoder &d, const float *grad, const float *h2, float *grad_in) {
  v16 w3[K3 * K3];
  for (int t = 0; t < K3 * K3; t++) w3[t] = load(d.w3 + t * 16);
  for (int iy = 0; iy < S2; iy++)
    for (int ix = 0; ix < S2; ix++) {
      v16 acc{};
      for (int ky = 0; ky < K3; ky++)
        for (int kx = 0; kx < K3; kx++) acc += grad[(iy + ky) * S3 + ix + kx] * w3[ky * K3 + kx];
      const v16 h = load(h2 + ((iy + 3) * P2 + ix + 3) * 16);
      store(grad_in + (iy * S2 + ix) * 16, acc * elu_slope(h));
    }
}

// The gradient of the bound with respect to z (8) for the target image x (784).
void latent_gradient(const Decoder &d, const float *z, const float *x, float beta,
                     Workspace &ws, float *grad) {
  dense_elu(d, z, ws.h0);
  transposed_conv_elu<C0, S0, 2, P1>(ws.h0, d.w1, d.b1, ws.h1);
  transposed_conv_elu<C1, S1, 3, P2>(ws.h1, d.w2, d.b2, ws.h2);
  last_layer_loss_grad(d, ws.h2, x, ws.rec_grad);
  last_layer_adjoint(d, ws.rec_grad, ws.h2, ws.g2);
  conv_adjoint<C1, S1>(ws.g2, d.w2_adj, ws.h1, ws.g1);
  conv_adjoint<C0, S0>(ws.g1, d.w1_adj, ws.h0, ws.g0);
  for (int i = 0; i < LAT; i++) {
    v16 acc{};
    for (int p = 0; p < S0 * S0 * C0; p += 16)
      acc += load(ws.g0 + p) * load(d.dense + i * S0 * S0 * C0 + p);
    grad[i] = hsum(acc) + z[i] * (beta / PIXELS);
  }
}

// Class c's decoder in the per-class weight arrays (the ten classes one after another).
Decoder class_decoder(int c, const float *dense, const float *dense_bias, const float *w1,
                      const float *w1_adj, const float *b1, const float *w2, const float *w2_adj,
                      const float *b2, const float *w3, const float *b3) {
  return Decoder{dense + c * LAT * S0 * S0 * C0,
                 dense_bias + c * S0 * S0 * C0,
                 w1 + c * K * K * C0 * C1,
                 w1_adj + c * K * K * C0 * C1,
                 b1 + c * C1,
                 w2 + c * K * K * C1 * C2,
                 w2_adj + c * K * K * C1 * C2,
                 b2 + c * C2,
                 w3 + c * K3 * K3 * C2,
                 b3[c]};
}

}  // namespace

extern "C" {

// Units [begin, end) of a batch: unit u is image u / 10 and class u % 10. x: (B, 784) images;
// z, grad, first, second: (B, 10, 8). Per-class weight arrays hold the ten classes one after
// another in the layouts of Decoder.

// The gradient of the bound at z, into grad.
void abs_latent_gradients(const float *x, const float *z, float *grad, int64_t begin,
                          int64_t end, const float *dense, const float *dense_bias,
                          const float *w1, const float *w1_adj, const float *b1, const float *w2,
                          const float *w2_adj, const float *b2, const float *w3, const float *b3,
                          float beta) {
  const std::unique_ptr<Workspace> workspace(new Workspace());
  for (int64_t u = begin; u < end; u++) {
    const Decoder d = class_decoder(static_cast<int>(u % 10), dense, dense_bias, w1, w1_adj, b1,
                                    w2, w2_adj, b2, w3, b3);
    latent_gradient(d, z + u * LAT, x + (u / 10) * PIX, beta, *workspace, grad + u * LAT);
  }
}

// `steps` Adam steps from z and Adam's moments first and second, all three overwritten. Each
// step is followed by the clip to the ball. step_sizes, second_scales (steps): lr / (1 -
// beta1^t) and 1 / sqrt(1 - beta2^t) of these steps. The Adam constants come as torch passes
// them: 1 - beta in double, then rounded to float (1 - 0.999f in float is 1.3e-5 off 0.001, a
// 7e-6 larger first step).
void abs_optimise_latents(const float *x, float *z, float *first, float *second, int64_t begin,
                          int64_t end, const float *dense, const float *dense_bias,
                          const float *w1, const float *w1_adj, const float *b1, const float *w2,
                          const float *w2_adj, const float *b2, const float *w3, const float *b3,
                          int steps, const float *step_sizes, const float *second_scales,
                          float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                          float eps, float beta, float radius, int authors_clip) {
  // zeroed once: the padding stays zero, only the interiors are written. On the heap, not
  // thread_local: TLS lookups in a shared library cost a call per access inside the loops.
  const std::unique_ptr<Workspace> workspace(new Workspace());
  Workspace &ws = *workspace;
  for (int64_t u = begin; u < end; u++) {
    const Decoder d = class_decoder(static_cast<int>(u % 10), dense, dense_bias, w1, w1_adj, b1,
                                    w2, w2_adj, b2, w3, b3);
    const float *target = x + (u / 10) * PIX;
    float *zu = z + u * LAT, *m = first + u * LAT, *v = second + u * LAT;
    float grad[LAT];
    for (int t = 0; t < steps; t++) {
      latent_gradient(d, zu, target, beta, ws, grad);
      float sq = 0.0f;
      for (int i = 0; i < LAT; i++) {
        m[i] = m[i] * beta1 + one_minus_beta1 * grad[i];
        v[i] = v[i] * beta2 + one_minus_beta2 * grad[i] * grad[i];
        const float denom = __builtin_sqrtf(v[i]) * second_scales[t] + eps;
        zu[i] = zu[i] - step_sizes[t] * (m[i] / denom);
        sq += zu[i] * zu[i];
      }
      if (sq > radius * radius) {
        for (int i = 0; i < LAT; i++)
          zu[i] = authors_clip ? __builtin_sqrtf(zu[i] * zu[i] / sq * (radius * radius))
                               : zu[i] * (radius / __builtin_sqrtf(sq));
      }
    }
  }
}

}  // extern "C"
