/* The activation statistics of one layer in one pass over its memory, for the CPU.
 *
 * Built and called by activation_stats_cpu.py, which documents the layout and the results.
 * Elements are visited in memory order as a dense (M, P, Gi, U, Q) array: models outermost (M) or
 * just outside the units (Gi), rows (P, Q) around the units (U). Element (m, p, gi, u, q) belongs
 * to model m * Gi + gi and to lane (model, unit) = (m * Gi + gi) * U + u.
 *
 * Per lane: the sum and the sum of squares of (a - shift), in double, where shift is the lane's
 * first element (0 when that is not finite): about its own data the sum of squares keeps the
 * variance when |mean| >> std; the count of pre > 0; and the histogram of |a| with torch.histc's
 * rule, bin floor(|a| * bins / hist_max) computed in the input's precision, |a| == hist_max in
 * the last bin, and one slot more (index `bins`) for what histc does not count: |a| > hist_max,
 * infinities and NaN. Each lane has its own histogram so that the increments of neighbouring
 * elements (different units in a channels-last layout) do not wait on each other.
 */

#include <math.h>
#include <stdint.h>

#define BLOCK 512 /* elements per block: their accumulators stay in the L1 cache */

/* One block of n elements in memory order: element i adds to accumulators k, t1, t2, c [i] (its
 * lane's, or a slot of a block-wide set folded later) and to histogram slot hist[h_of[i] + bin]. */
#define DEFINE_BLOCK(NAME, T, FABS)                                                                \
static inline void NAME(const T *restrict a, const T *restrict z, int64_t n,                      \
                        const double *restrict k, double *restrict t1, double *restrict t2,        \
                        int64_t *restrict c, const int64_t *restrict h_of, int64_t *restrict hist, \
                        T scale, T bins)                                                           \
{                                                                                                  \
    int64_t slot[BLOCK];                                                                           \
    for (int64_t i = 0; i < n; i++) {  /* vectorised: no element depends on another */            \
        const double d = (double)a[i] - k[i];                                                      \
        t1[i] += d;                                                                                \
        t2[i] += d * d;                                                                            \
        c[i] += z[i] > 0;                                                                          \
        const T s = FABS(a[i]) * scale;                                                            \
        slot[i] = h_of[i] + (int64_t)(s < bins ? s : (s == bins ? bins - 1 : bins));               \
    }                                                                                              \
    for (int64_t i = 0; i < n; i++)  /* the scatter, apart: it cannot be vectorised */            \
        hist[slot[i]]++;                                                                           \
}

#define DEFINE_LANE_STATS(NAME, BLOCK_NAME, T)                                                     \
void NAME(const T *act, const T *pre, int64_t M, int64_t P, int64_t Gi, int64_t U, int64_t Q,       \
          int64_t bins, double scale, double *shift, double *s1, double *s2, int64_t *pos,        \
          int64_t *hist)                                                                          \
{                                                                                                  \
    const T t_scale = (T)scale, t_bins = (T)bins;                                                  \
    const int64_t slots = bins + 1, width = Gi * U;  /* a row: the lanes of M's model group */   \
    for (int64_t lane = 0; lane < M * width; lane++) {                                             \
        const int64_t m = lane / width, j = lane % width;                                          \
        const double first = (double)act[(m * P * width + j) * Q];                                 \
        shift[lane] = isfinite(first) ? first : 0.0;                                               \
    }                                                                                              \
    double k[BLOCK], t1[BLOCK], t2[BLOCK];                                                         \
    int64_t c[BLOCK], h_of[BLOCK];                                                                 \
    if (Q == 1 && width <= BLOCK) {                                                                \
        /* Narrow rows follow each other: `rows` of them make a block, element i of which always */\
        /* belongs to lane i % width; its own accumulators are folded into that lane at the end. */\
        const int64_t rows = BLOCK / width, n = rows * width;                                      \
        for (int64_t i = 0; i < n; i++)                                                            \
            h_of[i] = (i % width) * slots;                                                         \
        for (int64_t m = 0; m < M; m++) {                                                          \
            for (int64_t i = 0; i < n; i++) {                                                      \
                k[i] = shift[m * width + i % width];                                               \
                t1[i] = t2[i] = 0.0;                                                               \
                c[i] = 0;                                                                          \
            }                                                                                      \
            for (int64_t p = 0; p < P; p += rows) {                                                \
                const int64_t at = (m * P + p) * width;                                            \
                BLOCK_NAME(act + at, pre + at, (P - p < rows ? P - p : rows) * width, k, t1, t2,   \
                           c, h_of, hist + m * width * slots, t_scale, t_bins);                    \
            }                                                                                      \
            for (int64_t i = 0; i < n; i++) {                                                      \
                s1[m * width + i % width] += t1[i];                                                \
                s2[m * width + i % width] += t2[i];                                                \
                pos[m * width + i % width] += c[i];                                                \
            }                                                                                      \
        }                                                                                          \
    } else if (Q == 1) {                                                                           \
        /* Wide rows: blocks of a row's lanes, which accumulate in place. */                       \
        for (int64_t i = 0; i < BLOCK; i++)                                                        \
            h_of[i] = i * slots;                                                                   \
        for (int64_t m = 0; m < M; m++)                                                            \
        for (int64_t p = 0; p < P; p++)                                                            \
        for (int64_t j = 0; j < width; j += BLOCK) {                                               \
            const int64_t at = (m * P + p) * width + j, lane = m * width + j;                      \
            BLOCK_NAME(act + at, pre + at, width - j < BLOCK ? width - j : BLOCK, shift + lane,    \
                       s1 + lane, s2 + lane, pos + lane, h_of, hist + lane * slots, t_scale, t_bins);\
        }                                                                                          \
    } else {                                                                                       \
        /* Positions innermost (not channels-last): a lane's Q elements in blocks. */              \
        for (int64_t i = 0; i < BLOCK; i++)                                                        \
            h_of[i] = 0;                                                                           \
        for (int64_t m = 0; m < M; m++)                                                            \
        for (int64_t p = 0; p < P; p++)                                                            \
        for (int64_t j = 0; j < width; j++) {                                                      \
            const int64_t lane = m * width + j;                                                    \
            for (int64_t i = 0; i < BLOCK; i++) {                                                  \
                k[i] = shift[lane];                                                                \
                t1[i] = t2[i] = 0.0;                                                               \
                c[i] = 0;                                                                          \
            }                                                                                      \
            for (int64_t q = 0; q < Q; q += BLOCK) {                                               \
                const int64_t at = ((m * P + p) * width + j) * Q + q;                              \
                BLOCK_NAME(act + at, pre + at, Q - q < BLOCK ? Q - q : BLOCK, k, t1, t2, c, h_of,  \
                           hist + lane * slots, t_scale, t_bins);                                  \
            }                                                                                      \
            for (int64_t i = 0; i < BLOCK; i++) {                                                  \
                s1[lane] += t1[i];                                                                 \
                s2[lane] += t2[i];                                                                 \
                pos[lane] += c[i];                                                                 \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}

DEFINE_BLOCK(block_float32, float, fabsf)
DEFINE_BLOCK(block_float64, double, fabs)
DEFINE_LANE_STATS(lane_stats_float32, block_float32, float)
DEFINE_LANE_STATS(lane_stats_float64, block_float64, double)
