/*
 * ekey.core._stattests: the raw statistics of ekey.core.stattests in C.
 *
 * Every byte a key or an upstream delivers goes through the FIPS 140-2
 * tests and the SP 800-90B repetition searches; in pure Python these cost
 * about 100 ns a byte, which limits a relay to about 10 MiB/s a core.  This
 * module computes the same statistics with the same bit order: a block is
 * read as one big-endian bit string, most significant bit of the first byte
 * first, runs continuing across byte boundaries.  The pass/fail decision is
 * one Python function (ekey.core.stattests.fipsDecision); fipsScan, which
 * finds the first failing block of many in one call, checks the statistics
 * against inclusive ranges that ekey.core.stattests derives from that
 * function, and the caller judges the block it points at with the function.
 *
 * It is optional: ekey.core.stattests falls back to pure Python when this
 * module is not built, and the tests compare the two.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK_BYTES 2500
#define BLOCK_BITS (8 * BLOCK_BYTES)
/* 2,500 bytes are 312.5 words: the last word is half padding. */
#define WORDS ((BLOCK_BYTES + 7) / 8)
#define LONG_RUN 26

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* x86 processors without POPCNT are rare but exist, and the build targets
   them by default: the run counting is compiled twice, once with POPCNT
   and once without, and the processor chooses (gcc and clang). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define POPCNT_DISPATCH 1
#endif

/* Portable: without -mpopcnt the compiler's builtin is a library call. */
static ALWAYS_INLINE int
popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
}

/* Eight bytes as one word, the first in its most significant end. */
static ALWAYS_INLINE uint64_t
loadBigEndian(const unsigned char *p)
{
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t w;
    memcpy(&w, p, 8);
    return __builtin_bswap64(w);
#else
    uint64_t w = 0;
    for (int j = 0; j < 8; j++) {
        w = (w << 8) | p[j];
    }
    return w;
#endif
}

/* Whether any of the 8 bytes of x is 0 (exact, whichever byte it is). */
static inline int
hasZeroByte(uint64_t x)
{
    return ((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL) != 0;
}

/* The running state of runCounts on one bit string (ones or zeros). */
typedef struct {
    /* previous[k]: the previous word of y_{k+1}; long: y_12, y_24 too. */
    uint64_t previous[7];
    uint64_t previous12, previous24;
    long counts[7];
    int longRun;
} Runs;

/*
 * One more word of a bit string (words are big-endian: word 0 holds the
 * first bits, in its most significant end).  y_1 = x and
 * y_{k+1} = y_k & (y_k >> 1) (shifted towards the end of the string, bits
 * before the start 0, exactly as Python's y & (y >> 1) on the block as one
 * integer) marks the bits ending a run of at least k + 1 ones, so a run of
 * L ones gives L - k + 1 bits of y_k and popcount(y_k) - popcount(y_{k+1})
 * is the number of runs of at least k.  The long run doubles up from y_6:
 * y_12, y_24, then y_26 = y_24 & (y_2 >> 24).  All in one pass, the bits
 * shifted in from the word before kept in Runs.
 */
#if defined(POPCNT_DISPATCH)
#define POPCOUNT(x) (hardware ? __builtin_popcountll(x) : popcount64(x))
#else
#define POPCOUNT(x) popcount64(x)
#endif

static ALWAYS_INLINE void
runsWord(Runs *r, uint64_t x, int hardware)
{
    uint64_t y[7];
    y[0] = x;
    r->counts[0] += POPCOUNT(x);
    for (int k = 1; k < 7; k++) {
        y[k] = y[k - 1] & ((y[k - 1] >> 1) | (r->previous[k - 1] << 63));
        r->counts[k] += POPCOUNT(y[k]);
    }
    uint64_t y12 = y[5] & ((y[5] >> 6) | (r->previous[5] << 58));
    uint64_t y24 = y12 & ((y12 >> 12) | (r->previous12 << 52));
    uint64_t y26 = y24 & ((y[1] >> 24) | (r->previous[1] << 40));
    r->longRun |= y26 != 0;
    for (int k = 0; k < 7; k++) {
        r->previous[k] = y[k];
    }
    r->previous12 = y12;
    r->previous24 = y24;
}

/* The runs of ones and of zeros of a block, into ones and zeros. */
static ALWAYS_INLINE void
runsBlock(const unsigned char *data, Runs *ones, Runs *zeros, int hardware)
{
    /* Counted in locals, copied out at the end: the data, read through
       unsigned char, may alias the caller's Runs as far as the compiler
       knows, which would keep every count in memory (stored and loaded
       again for every word). */
    Runs o, z;
    memset(&o, 0, sizeof(o));
    memset(&z, 0, sizeof(z));
    for (int i = 0; i < BLOCK_BYTES / 8; i++) {
        uint64_t w = loadBigEndian(data + 8 * i);
        runsWord(&o, w, hardware);
        runsWord(&z, ~w, hardware);
    }
#if BLOCK_BYTES % 8
    {
        /* The last word, half padding, which is no run of zeros. */
        const int bytes = BLOCK_BYTES % 8;
        uint64_t w = 0;
        for (int j = 0; j < 8; j++) {
            w = (w << 8) | (j < bytes ? data[BLOCK_BYTES - bytes + j] : 0);
        }
        runsWord(&o, w, hardware);
        runsWord(&z, ~w & (~(uint64_t)0 << (64 - 8 * bytes)), hardware);
    }
#endif
    *ones = o;
    *zeros = z;
}

static void
runsBlockPortable(const unsigned char *data, Runs *ones, Runs *zeros)
{
    runsBlock(data, ones, zeros, 0);
}

#if defined(POPCNT_DISPATCH)
__attribute__((target("popcnt"))) static void
runsBlockPopcnt(const unsigned char *data, Runs *ones, Runs *zeros)
{
    runsBlock(data, ones, zeros, 1);
}
#endif

/* The run counts of length 1 to 5 and 6 or more, from Runs.counts. */
static void
exactRuns(const Runs *r, long exact[6])
{
    long atLeast[6];
    for (int k = 0; k < 6; k++) {
        atLeast[k] = r->counts[k] - r->counts[k + 1];
    }
    for (int k = 0; k < 5; k++) {
        exact[k] = atLeast[k] - atLeast[k + 1];
    }
    exact[5] = atLeast[5];
}

PyDoc_STRVAR(fipsStatistics_doc,
"fipsStatistics(block) -> (ones, sumSquares, runs, longRun)\n\n"
"The raw FIPS 140-2 statistics of one 2,500-byte block (any bytes-like\n"
"object): the number of one bits, the sum over the 16 nibble values of\n"
"their count squared, the 12 run counts (runs of ones of lengths 1 to 5\n"
"and 6 or more, then the same for zeros) and whether a run of 26 or more\n"
"of either bit occurs.  Raises ValueError unless the block is 2,500 bytes.");

/* The raw statistics of one block (see fipsStatistics). */
typedef struct {
    long ones;
    long long sumSquares;
    long runs[12];
    int longRun;
} Statistics;

static void
blockStatistics(const unsigned char *data, Statistics *out)
{
    /* Four histograms, so that consecutive equal bytes do not wait for
       each other's increment. */
    uint32_t histogram[4][256];
    long nibbles[16] = {0};
    Runs ones, zeros;

    memset(histogram, 0, sizeof(histogram));
#if defined(POPCNT_DISPATCH)
    if (__builtin_cpu_supports("popcnt")) {
        runsBlockPopcnt(data, &ones, &zeros);
    } else
#endif
    {
        runsBlockPortable(data, &ones, &zeros);
    }
    for (int i = 0; i + 4 <= BLOCK_BYTES; i += 4) {
        histogram[0][data[i]]++;
        histogram[1][data[i + 1]]++;
        histogram[2][data[i + 2]]++;
        histogram[3][data[i + 3]]++;
    }
    for (int v = 0; v < 256; v++) {
        long n = (long)histogram[0][v] + histogram[1][v] + histogram[2][v] + histogram[3][v];
        nibbles[v >> 4] += n;
        nibbles[v & 15] += n;
    }
    out->ones = ones.counts[0];
    exactRuns(&ones, out->runs);
    exactRuns(&zeros, out->runs + 6);
    out->sumSquares = 0;
    for (int v = 0; v < 16; v++) {
        out->sumSquares += (long long)nibbles[v] * nibbles[v];
    }
    out->longRun = ones.longRun || zeros.longRun;
}

static PyObject *
fipsStatistics(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    Statistics s;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len != BLOCK_BYTES) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "a FIPS 140-2 block is 2,500 bytes");
        return NULL;
    }
    blockStatistics((const unsigned char *)view.buf, &s);
    PyBuffer_Release(&view);
    return Py_BuildValue("lL(llllllllllll)N", s.ones, s.sumSquares,
                         s.runs[0], s.runs[1], s.runs[2], s.runs[3], s.runs[4], s.runs[5],
                         s.runs[6], s.runs[7], s.runs[8], s.runs[9], s.runs[10], s.runs[11],
                         PyBool_FromLong(s.longRun));
}

PyDoc_STRVAR(fipsScan_doc,
"fipsScan(data, start, end, passing) -> int or None\n\n"
"The offset of the first of the 2,500-byte blocks of data at start,\n"
"start + 2500, ... (each ending at or before end) whose statistics fall\n"
"outside passing, or None when all are inside.  passing is the tuple\n"
"(onesLow, onesHigh, sumSquaresLow, sumSquaresHigh, runsLow, runsHigh)\n"
"of inclusive bounds, runsLow and runsHigh 12 each, in the order of\n"
"fipsStatistics; a long run always fails.  It says only where to look:\n"
"the caller judges that block itself.  Raises ValueError on a bad range\n"
"or bounds.");

static int
readBounds(PyObject *sequence, long *out, Py_ssize_t count)
{
    PyObject *fast = PySequence_Fast(sequence, "passing bounds must be a sequence");
    if (fast == NULL) {
        return -1;
    }
    if (PySequence_Fast_GET_SIZE(fast) != count) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "passing bounds of the wrong length");
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        out[i] = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

static PyObject *
fipsScan(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, end;
    long onesLow, onesHigh;
    long long squaresLow, squaresHigh;
    PyObject *runsLowObject, *runsHighObject;
    long runsLow[12], runsHigh[12];
    if (!PyArg_ParseTuple(args, "y*nn(llLLOO):fipsScan", &view, &start, &end, &onesLow,
                          &onesHigh, &squaresLow, &squaresHigh, &runsLowObject,
                          &runsHighObject)) {
        return NULL;
    }
    if (readBounds(runsLowObject, runsLow, 12) < 0
            || readBounds(runsHighObject, runsHigh, 12) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the blocks must lie within the data");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t found = -1;
    for (Py_ssize_t offset = start; end - offset >= BLOCK_BYTES; offset += BLOCK_BYTES) {
        Statistics s;
        int fails;
        blockStatistics(data + offset, &s);
        fails = s.longRun || s.ones < onesLow || s.ones > onesHigh
            || s.sumSquares < squaresLow || s.sumSquares > squaresHigh;
        for (int k = 0; k < 12 && !fails; k++) {
            fails = s.runs[k] < runsLow[k] || s.runs[k] > runsHigh[k];
        }
        if (fails) {
            found = offset;
            break;
        }
    }
    PyBuffer_Release(&view);
    if (found < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t(found);
}

PyDoc_STRVAR(repeatAtDistance_doc,
"repeatAtDistance(data, distance, length) -> int or None\n\n"
"The first index i such that data[i + j] == data[i + distance + j] for\n"
"every j below length, or None.  Raises ValueError unless distance and\n"
"length are at least 1.");

static PyObject *
repeatAtDistance(PyObject *module, PyObject *args)
{
    Py_buffer view;
    PyObject *distanceObject, *lengthObject;
    if (!PyArg_ParseTuple(args, "y*OO:repeatAtDistance", &view, &distanceObject,
                          &lengthObject)) {
        return NULL;
    }
    /* Clipped, not overflowing: a distance past any buffer finds nothing. */
    Py_ssize_t distance = PyNumber_AsSsize_t(distanceObject, NULL);
    Py_ssize_t length = distance == -1 && PyErr_Occurred()
        ? -1 : PyNumber_AsSsize_t(lengthObject, NULL);
    if (PyErr_Occurred()) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (distance < 1 || length < 1) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError,
                        "a repeat needs a distance and a length of at least 1");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len;
    Py_ssize_t found = -1;
    if (distance < size && length <= size - distance) {
        Py_ssize_t end = size - distance;
        Py_ssize_t streak = 0;
        Py_ssize_t i = 0;
        while (i < end && found < 0) {
            /* Eight bytes at a time while none equals the one distance
               after it (random data: almost always). */
            if (i + 8 <= end) {
                uint64_t a, b;
                memcpy(&a, data + i, 8);
                memcpy(&b, data + i + distance, 8);
                if (!hasZeroByte(a ^ b)) {
                    streak = 0;
                    i += 8;
                    continue;
                }
            }
            Py_ssize_t stop = i + 8 < end ? i + 8 : end;
            for (; i < stop; i++) {
                if (data[i] == data[i + distance]) {
                    if (++streak == length) {
                        found = i + 1 - length;
                        break;
                    }
                } else {
                    streak = 0;
                }
            }
        }
    }
    PyBuffer_Release(&view);
    if (found < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromSsize_t(found);
}

PyDoc_STRVAR(proportionFailure_doc,
"proportionFailure(data, start, window, cutoff) -> (index, count) or None\n\n"
"SP 800-90B's adaptive proportion test on the complete windows of data\n"
"beginning at start, start + window, ...: the first window whose first\n"
"byte appears cutoff times or more in it, as (its index, that count), or\n"
"None.  Raises ValueError unless 0 <= start and window >= 1.");

static PyObject *
proportionFailure(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, window, cutoff;
    if (!PyArg_ParseTuple(args, "y*nnn:proportionFailure", &view, &start, &window,
                          &cutoff)) {
        return NULL;
    }
    if (start < 0 || window < 1) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError,
                        "a proportion window starts at 0 or later and is at least 1 byte");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len;
    Py_ssize_t foundAt = -1, foundCount = 0;
    for (Py_ssize_t i = start; i <= size - window; i += window) {
        unsigned char first = data[i];
        Py_ssize_t count = 0;
        for (Py_ssize_t j = i; j < i + window; j++) {
            count += data[j] == first;
        }
        if (count >= cutoff) {
            foundAt = i;
            foundCount = count;
            break;
        }
    }
    PyBuffer_Release(&view);
    if (foundAt < 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("nn", foundAt, foundCount);
}

static PyMethodDef methods[] = {
    {"fipsScan", fipsScan, METH_VARARGS, fipsScan_doc},
    {"fipsStatistics", fipsStatistics, METH_O, fipsStatistics_doc},
    {"repeatAtDistance", repeatAtDistance, METH_VARARGS, repeatAtDistance_doc},
    {"proportionFailure", proportionFailure, METH_VARARGS, proportionFailure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduleDefinition = {
    PyModuleDef_HEAD_INIT,
    "ekey.core._stattests",
    "The raw statistics of ekey.core.stattests, in C (optional accelerator).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__stattests(void)
{
#if defined(POPCNT_DISPATCH)
    __builtin_cpu_init();
#endif
    return PyModule_Create(&moduleDefinition);
}
