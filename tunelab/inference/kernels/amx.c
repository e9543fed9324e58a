/* Matrix products for decode steps and prompts with Intel AMX.
 *
 * int4_gemm: out[M, N] (bf16) = x[M, K] (bf16) @ W.T, W in 4-bit codes with a step and an offset per
 * group of 32 inputs (w = low + step * code): the layers' projections, for up to 80 rows of x a call.
 *
 * PyTorch's int4 kernel dequantizes the weights once per 4 rows of x and multiplies on the vector units, so 8
 * rows cost twice 4. Here each block of 32 inputs x 16 outputs is dequantized once per call, whatever the number
 * of rows, into a 1 KB buffer in the layout AMX reads (pairs of consecutive inputs side by side for each
 * output), and one AMX bf16 tile product per 16 rows of x multiplies it, accumulating in fp32. Up to 16 rows the
 * dequantization is the work; a prompt's 80 rows cost about twice 16, and less than PyTorch's bf16 product
 * with the weights already dequantized, which reads four times the bytes. Each output is a sum over the groups
 * in the same order whatever the rows, so a row's result never depends on the rows beside it.
 *
 * Layout (made by kernels/__init__.py, which also checks every call's dtypes and shapes before it gets here):
 *   codes  [N/16][K/2][16] bytes: byte j holds lane j of the low half (outputs 0-7 of the tile: lane 2i is
 *          (output i, input k), lane 2i+1 is (output i, input k+1)) in its low nibble, and the same lane of the
 *          high half (outputs 8-15) in its high nibble.
 *   scales [N/16][K/32][2][16] bf16: the step, then the offset, of the tile's 16 outputs for each group.
 *
 * Threads: the tiles are shared among the calling thread's OpenMP team (torch's runtime, whose soname this
 * library's is: the same team torch's own operations use). Each thread configures its own AMX tiles.
 *
 * Built when tunelab is installed, as the extension module tunelab.inference.kernels._amx (setup.py); its
 * functions take the tensors' data pointers as integers and release the GIL while they compute.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <immintrin.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define MAX_ROWS 16

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Linux hands out AMX state only to a process that asks; 0 when granted (or granted before). */
static int amx_init(void) { return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); }

static void configure(int rows) {
    tile_config config = {0};
    config.palette_id = 1;
    config.rows[0] = rows, config.colsb[0] = 64; /* C: rows x 16 fp32 */
    config.rows[1] = rows, config.colsb[1] = 64; /* A: rows x 32 bf16 of x */
    config.rows[2] = 16, config.colsb[2] = 64;   /* B: 16 input pairs x 16 outputs x 2 */
    _tile_loadconfig(&config);
}

/* The int4 kernel takes up to 80 rows in chunks of 16: the C tiles of the chunks are 0, 1, 2, 3 and 7 (the last
 * chunk's has the `last` rows, 1 to 16, the others 16), tile 4 holds a full chunk's rows of x and tile 5 the last
 * chunk's, tile 6 the block of weights. */
#define CHUNK_ROWS 16
#define MAX_CHUNKS 5
#define FULL 4
#define LAST 5
#define WEIGHTS 6

static void configure_chunks(int chunks, int last) {
    static const int c_tiles[MAX_CHUNKS] = {0, 1, 2, 3, 7};
    tile_config config = {0};
    config.palette_id = 1;
    for (int c = 0; c < chunks; c++) {
        config.rows[c_tiles[c]] = c == chunks - 1 ? last : CHUNK_ROWS;
        config.colsb[c_tiles[c]] = 64;
    }
    config.rows[FULL] = CHUNK_ROWS, config.colsb[FULL] = 64;
    config.rows[LAST] = last, config.colsb[LAST] = 64;
    config.rows[WEIGHTS] = 16, config.colsb[WEIGHTS] = 64;
    _tile_loadconfig(&config);
}

/* Tile operations name their tiles with constants, so each number of chunks has its own line. */
#define CHUNKS(chunks, FIRST, THEN)                                                                               \
    switch (chunks) {                                                                                             \
    case 1: THEN(0, 0); break;                                                                                    \
    case 2: FIRST(0, 0); THEN(1, 1); break;                                                                       \
    case 3: FIRST(0, 0); FIRST(1, 1); THEN(2, 2); break;                                                          \
    case 4: FIRST(0, 0); FIRST(1, 1); FIRST(2, 2); THEN(3, 3); break;                                             \
    default: FIRST(0, 0); FIRST(1, 1); FIRST(2, 2); FIRST(3, 3); THEN(4, 7); break;                               \
    }

/* The block of 32 inputs (group g) x 16 outputs of one tile, as 16 rows of bf16 pairs. */
static inline void dequantize(const uint8_t *codes, const uint16_t *scales, uint16_t *block) {
    const __m512i low_lanes = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512i high_lanes = _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
    const __m512i nibble = _mm512_set1_epi32(15);
    const __m512 step = _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256((const __m256i *)scales));
    const __m512 offset = _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256((const __m256i *)(scales + 16)));
    const __m512 step_lo = _mm512_permutexvar_ps(low_lanes, step), step_hi = _mm512_permutexvar_ps(high_lanes, step);
    const __m512 off_lo = _mm512_permutexvar_ps(low_lanes, offset), off_hi = _mm512_permutexvar_ps(high_lanes, offset);
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++) {
        const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(codes + p * 16)));
        const __m512 w_lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(c, nibble)), step_lo, off_lo);
        const __m512 w_hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(c, 4)), step_hi, off_hi);
        _mm512_storeu_si512(block + p * 32, (__m512i)_mm512_cvtne2ps_pbh(w_hi, w_lo));
    }
}

/* The 16 int8 input pairs of one group of one tile, as 16 rows of bf16 pairs (whole numbers: exact). */
static inline void widen(const int8_t *codes, uint16_t *block) {
#pragma GCC unroll 16
    for (int p = 0; p < 16; p++) {
        const __m128i *pair = (const __m128i *)(codes + p * 32);
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(pair)));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(pair + 1)));
        _mm512_storeu_si512(block + p * 32, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}

/* Tile 0 += x's rows (inputs 32g..32g+31) @ the block: one AMX tile product. */
static inline void multiply(const uint16_t *x, int K, int g, const uint16_t *block) {
    _tile_loadd(1, x + g * 32, K * 2);
    _tile_loadd(2, block, 64);
    _tile_dpbf16ps(0, 1, 2);
}

static void int4_gemm(const uint16_t *x, const uint8_t *codes, const uint16_t *scales, uint16_t *out, int M, int N,
                      int K) {
    const int chunks = (M + CHUNK_ROWS - 1) / CHUNK_ROWS, last = M - (chunks - 1) * CHUNK_ROWS;
    const size_t chunk = (size_t)CHUNK_ROWS * K, stride = (size_t)K * 2;
#pragma omp parallel
    {
        _Alignas(64) uint16_t block[16 * 32];
        _Alignas(64) float result[MAX_CHUNKS * CHUNK_ROWS * 16];
        configure_chunks(chunks, last);
#pragma omp for schedule(static)
        for (int t = 0; t < N / 16; t++) {
            const uint8_t *tile_codes = codes + (size_t)t * (K / 2) * 16;
            const uint16_t *tile_scales = scales + (size_t)t * (K / 32) * 32;
#define ZERO(c, C) _tile_zero(C)
            CHUNKS(chunks, ZERO, ZERO)
            for (int g = 0; g < K / 32; g++) {
                dequantize(tile_codes + g * 16 * 16, tile_scales + g * 32, block);
                _tile_loadd(WEIGHTS, block, 64);
                const uint16_t *a = x + g * 32;
#define PRODUCT_FULL(c, C) { _tile_loadd(FULL, a + (c) * chunk, stride); _tile_dpbf16ps(C, FULL, WEIGHTS); }
#define PRODUCT_LAST(c, C) { _tile_loadd(LAST, a + (c) * chunk, stride); _tile_dpbf16ps(C, LAST, WEIGHTS); }
                CHUNKS(chunks, PRODUCT_FULL, PRODUCT_LAST)
            }
#define STORE(c, C) _tile_stored(C, result + (c) * CHUNK_ROWS * 16, 64)
            CHUNKS(chunks, STORE, STORE)
            for (int m = 0; m < M; m++) {
                __m512 row = _mm512_loadu_ps(result + m * 16);
                _mm256_storeu_si256((__m256i *)(out + (size_t)m * N + t * 16), (__m256i)_mm512_cvtneps_pbh(row));
            }
        }
        _tile_release();
    }
}

/* out[M, N] (fp32) = x[M, K] (bf16) @ W.T with W in int8 codes and one scale per output row (w = scale * code):
 * the LM head. The codes are whole numbers below 128, exact in bf16, so the tile product multiplies them as they
 * are and each output is scaled once at the end.
 *
 * Layout: codes [N/16][K/2][32] int8, lane 2i + j of a pair's 32 bytes being (output i, input k + j); scales
 * [N] fp32. */
static void int8_gemm(const uint16_t *x, const int8_t *codes, const float *scales, float *out, int M, int N,
                      int K) {
#pragma omp parallel
    {
        _Alignas(64) uint16_t block[16 * 32];
        _Alignas(64) float result[MAX_ROWS * 16];
        configure(M);
#pragma omp for schedule(static)
        for (int t = 0; t < N / 16; t++) {
            const int8_t *tile_codes = codes + (size_t)t * (K / 2) * 32;
            _tile_zero(0);
            for (int g = 0; g < K / 32; g++) {
                widen(tile_codes + (size_t)g * 16 * 32, block);
                multiply(x, K, g, block);
            }
            _tile_stored(0, result, 64);
            const __m512 scale = _mm512_loadu_ps(scales + t * 16);
            for (int m = 0; m < M; m++) {
                _mm512_storeu_ps(out + (size_t)m * N + t * 16, _mm512_mul_ps(_mm512_loadu_ps(result + m * 16), scale));
            }
        }
        _tile_release();
    }
}

/* The Python module. */

static PyObject *py_init(PyObject *self, PyObject *args) { return PyLong_FromLong(amx_init()); }

static PyObject *py_int4_gemm(PyObject *self, PyObject *args) {
    unsigned long long x, codes, scales, out;
    int M, N, K;
    if (!PyArg_ParseTuple(args, "KKKKiii", &x, &codes, &scales, &out, &M, &N, &K)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    int4_gemm((const uint16_t *)x, (const uint8_t *)codes, (const uint16_t *)scales, (uint16_t *)out, M, N, K);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_int8_gemm(PyObject *self, PyObject *args) {
    unsigned long long x, codes, scales, out;
    int M, N, K;
    if (!PyArg_ParseTuple(args, "KKKKiii", &x, &codes, &scales, &out, &M, &N, &K)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    int8_gemm((const uint16_t *)x, (const int8_t *)codes, (const float *)scales, (float *)out, M, N, K);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", py_init, METH_NOARGS, "Ask Linux for this process's AMX state: 0 when granted."},
    {"int4_gemm", py_int4_gemm, METH_VARARGS, "int4_gemm(x, codes, scales, out, M, N, K): data pointers, checked by "
     "the caller (tunelab.inference.kernels)."},
    {"int8_gemm", py_int8_gemm, METH_VARARGS, "int8_gemm(x, codes, scales, out, M, N, K): data pointers, checked by "
     "the caller (tunelab.inference.kernels)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_amx", "tunelab's AMX kernels (amx.c).", -1, methods};

PyMODINIT_FUNC PyInit__amx(void) { return PyModule_Create(&module); }
