/* Dropout's random bits for CPU training, made where they are used.
 *
 * Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3",
 * SC 2011; the generator PyTorch's CUDA dropout uses) turns a 128-bit counter and a 64-bit key
 * into 128 random bits. It is counter-based, so element i's bits are a pure function of
 * (key, stream, i): no state, any thread can make any element's bits, and the result does not
 * depend on how the work is split.
 *
 * Element i of a stream takes one 16-bit half of one output word: with BLK = 64 counters per
 * chunk of 8 * BLK elements, chunk q = i / 512, r = i % 512, counter q * 64 + r % 64, and
 * half s = r / 64 (word s / 2, low half first). That order lets the compiler vectorise both
 * the rounds (over counters) and the mask loop (over contiguous elements). An element is kept
 * when its 16 bits are >= `drop`, so P(keep) = 1 - drop / 65536, as in tsconv's other CPU
 * dropout (tsconv/models/layers.py).
 *
 * Compiled on first use by tsconv/models/fused_cpu.py; no Python or torch headers.
 */
#include <stdint.h>
#include <stdlib.h>

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u
#define BLK 64
#define CHUNK (8 * BLK)

static inline void philox_rounds(uint32_t c[4][BLK], uint32_t k0, uint32_t k1)
{
    for (int round = 0; round < 10; round++) {
        for (int j = 0; j < BLK; j++) {
            uint64_t p0 = (uint64_t)M0 * c[0][j];
            uint64_t p1 = (uint64_t)M1 * c[2][j];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1][j] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3][j] ^ k1;
            c[1][j] = (uint32_t)p1;
            c[3][j] = (uint32_t)p0;
            c[0][j] = n0;
            c[2][j] = n2;
        }
        k0 += W0;
        k1 += W1;
    }
}

static inline void chunk_bits(uint32_t c[4][BLK], int64_t q, uint32_t k0, uint32_t k1,
                              uint32_t stream)
{
    for (int j = 0; j < BLK; j++) {
        uint64_t counter = (uint64_t)q * BLK + j;
        c[0][j] = (uint32_t)counter;
        c[1][j] = (uint32_t)(counter >> 32);
        c[2][j] = stream;
        c[3][j] = 0;
    }
    philox_rounds(c, k0, k1);
}

static inline uint32_t lane(uint32_t c[4][BLK], int64_t r)
{
    int s = (int)(r / BLK);
    return (c[s / 2][r % BLK] >> (16 * (s % 2))) & 0xffffu;
}

/* One Philox4x32-10 block, for known-answer tests. */
void tsc_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out)
{
    uint32_t c[4][BLK] = {{0}};
    for (int w = 0; w < 4; w++)
        c[w][0] = ctr[w];
    philox_rounds(c, key[0], key[1]);
    for (int w = 0; w < 4; w++)
        out[w] = c[w][0];
}

/* The end of a TCN block's convolution, in one pass over its output y (n = rows * channels,
 * time-major): y = max(y + bias, 0) * keep in place, that is bias, ReLU, then dropout without
 * the 1 / (1 - p) scale, which the caller folds into the weights before the ReLU. With `out`,
 * also out = max(y + res, 0): the block's residual connection and final ReLU. With `out` and
 * `masks`, also the two ReLU masks the backward pass needs, as bytes: masks[i] = (y[i] > 0) and
 * masks[n + i] = (out[i] > 0), where NaN counts as > 0 as in threshold_backward. `bias`
 * has one value per channel (NULL: none); y, res and out are time-major (rows, channels).
 * drop = 0 keeps everything and makes no random bits. NaN stays NaN, as with the separate
 * torch operations. Returns 0, or -1 (having written nothing) if it cannot allocate. */
int tsc_block_epilogue_f32(float *restrict y, int64_t n, const float *restrict bias,
                            int64_t channels, const float *restrict res, float *restrict out,
                            uint8_t *restrict masks, uint32_t k0, uint32_t k1,
                            uint32_t stream, uint32_t drop, int threads)
{
    /* The bias repeated over lcm(channels, CHUNK) elements: each chunk then reads its bias as
     * one contiguous run, and the inner loops vectorise. */
    int64_t tile = channels;
    while (tile % CHUNK)
        tile += channels;
    float *bias_tile = malloc((size_t)tile * sizeof(float));
    if (!bias_tile)
        return -1;
    for (int64_t i = 0; i < tile; i++)
        bias_tile[i] = bias ? bias[i % channels] : 0.0f;
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t q = 0; q < chunks; q++) {
        uint32_t c[4][BLK];
        int64_t first = q * CHUNK, m = n - first < CHUNK ? n - first : CHUNK;
        float *restrict yq = y + first;
        const float *restrict bq = bias_tile + first % tile;
        if (drop)
            chunk_bits(c, q, k0, k1, stream);
        if (m == CHUNK) {
            for (int s = 0; s < 8; s++) {
                float *restrict ys = yq + s * BLK;
                const float *restrict bs = bq + s * BLK;
                int half = 16 * (s % 2);
                for (int j = 0; j < BLK; j++) {
                    float v = ys[j] + bs[j];
                    v = v < 0.0f ? 0.0f : v;
                    if (drop)
                        v *= (float)(((c[s / 2][j] >> half) & 0xffffu) >= drop);
                    ys[j] = v;
                }
            }
        } else {
            for (int64_t r = 0; r < m; r++) {
                float v = yq[r] + bq[r];
                v = v < 0.0f ? 0.0f : v;
                if (drop)
                    v *= (float)(lane(c, r) >= drop);
                yq[r] = v;
            }
        }
        if (out) {
            const float *restrict rq = res + first;
            float *restrict oq = out + first;
            for (int64_t r = 0; r < m; r++) {
                float o = yq[r] + rq[r];
                oq[r] = o < 0.0f ? 0.0f : o;
            }
            if (masks) {
                uint8_t *restrict my = masks + first, *restrict mo = masks + n + first;
                for (int64_t r = 0; r < m; r++) {
                    my[r] = !(yq[r] <= 0.0f);
                    mo[r] = !(oq[r] <= 0.0f);
                }
            }
        }
    }
    free(bias_tile);
    return 0;
}

/* The gradient through the block's end, from the byte masks of tsc_block_epilogue_f32:
 * g = gout where out > 0 else 0 (the residual's gradient, and the start of the input's), and
 * g2 = g where y > 0 else 0 (the second convolution's output gradient). Selects, not
 * products, as threshold_backward: a NaN or inf gradient where the mask is 0 gives 0. */
void tsc_block_grads_f32(const float *restrict gout, const uint8_t *restrict masks, int64_t n,
                         float *restrict g, float *restrict g2, int threads)
{
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t q = 0; q < chunks; q++) {
        int64_t first = q * CHUNK, m = n - first < CHUNK ? n - first : CHUNK;
        const uint8_t *restrict my = masks + first, *restrict mo = masks + n + first;
        for (int64_t r = 0; r < m; r++) {
            float v = mo[r] ? gout[first + r] : 0.0f;
            g[first + r] = v;
            g2[first + r] = my[r] ? v : 0.0f;
        }
    }
}
