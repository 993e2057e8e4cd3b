/* A compiled fast path for dlrmkit.data.criteo_text.parse_block: one pass over a block of
 * Criteo lines, writing label / dense / sparse arrays for good lines and the index of every bad
 * line. The rules are exactly the numpy parser's (which also produces the bad lines' messages):
 * 40 tab-separated fields; label "0" or "1"; dense: empty (0) or an optional '-' and 1..10
 * decimal digits within int32; categorical: empty (0) or 1..8 hex digits; a CR right before the
 * newline is dropped. Built as a Python extension module only so pip compiles it; Python calls
 * the plain C function through ctypes. */
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NUM_FIELDS 40
#define NUM_DENSE 13
#define NUM_SPARSE 26

static const int8_t *hex_table(void) {
    static int8_t t[256];
    static int ready = 0;
    if (!ready) {
        for (int i = 0; i < 256; i++) t[i] = -1;
        for (int i = 0; i < 10; i++) t['0' + i] = (int8_t)i;
        for (int i = 0; i < 6; i++) { t['a' + i] = (int8_t)(10 + i); t['A' + i] = (int8_t)(10 + i); }
        ready = 1;
    }
    return t;
}

/* Parses one line [p, end) (no newline, CR already dropped); returns 1 if good. */
static int parse_line(const uint8_t *p, const uint8_t *end, uint8_t *label, int32_t *dense, uint32_t *sparse) {
    const int8_t *hex = hex_table();
    const uint8_t *f = p;
    for (int field = 0; field < NUM_FIELDS; field++) {
        const uint8_t *e = f;
        while (e < end && *e != '\t') e++;
        if ((e == end) != (field == NUM_FIELDS - 1)) return 0; /* too few or too many fields */
        int64_t n = e - f;
        if (field == 0) {
            if (n != 1 || (f[0] != '0' && f[0] != '1')) return 0;
            *label = (uint8_t)(f[0] - '0');
        } else if (field <= NUM_DENSE) {
            int neg = n > 0 && f[0] == '-';
            int64_t digits = n - neg;
            if (neg && digits == 0) return 0;
            if (digits > 10) return 0;
            int64_t v = 0;
            for (const uint8_t *c = f + neg; c < e; c++) {
                if (*c < '0' || *c > '9') return 0;
                v = v * 10 + (*c - '0');
            }
            if (neg) v = -v;
            if (v > INT32_MAX || v < INT32_MIN) return 0;
            dense[field - 1] = (int32_t)v;
        } else {
            if (n > 8) return 0;
            uint32_t v = 0;
            for (const uint8_t *c = f; c < e; c++) {
                int8_t d = hex[*c];
                if (d < 0) return 0;
                v = (v << 4) | (uint32_t)d;
            }
            sparse[field - 1 - NUM_DENSE] = v;
        }
        f = e + 1;
    }
    return 1;
}

/* Returns the number of good rows; *lines gets the number of lines, *n_bad the bad ones (their
 * 0-based line numbers in bad[], at most max_bad recorded). The block must end with '\n'. */
int64_t dlrmkit_parse_block(const uint8_t *buf, int64_t len, uint8_t *label, int32_t *dense, uint32_t *sparse,
                            int64_t *rows, int64_t *lines, int64_t *bad, int64_t max_bad, int64_t *n_bad) {
    int64_t good = 0, line = 0, nb = 0;
    const uint8_t *p = buf, *stop = buf + len;
    while (p < stop) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(stop - p));
        if (nl == NULL) break;
        const uint8_t *end = nl;
        if (end > p && end[-1] == '\r') end--;
        if (parse_line(p, end, label + good, dense + good * NUM_DENSE, sparse + good * NUM_SPARSE)) {
            rows[good++] = line;
        } else {
            if (nb < max_bad) bad[nb] = line;
            nb++;
        }
        line++;
        p = nl + 1;
    }
    *lines = line;
    *n_bad = nb;
    return good;
}

/* counts[index[r * stride]] += 1 for r < n: one column of a row-major int32 index matrix. The
 * caller guarantees every index is in [0, size of counts). */
void dlrmkit_add_counts(int64_t *counts, const int32_t *index, int64_t n, int64_t stride) {
    for (int64_t r = 0; r < n; r++) counts[index[r * stride]]++;
}

/* A hash map from uint32 values to int64 (open addressing, linear probing, Fibonacci hashing),
 * for the vocabularies: counts (frequency), first-appearance numbers (reference), lookups. */
typedef struct {
    uint32_t *keys;
    int64_t *vals;
    uint8_t *used;
    int64_t cap, size;
    int shift;
} Map;

static int64_t slot_of(const Map *m, uint32_t key) {
    uint64_t h = ((uint64_t)key * 0x9E3779B97F4A7C15ull) >> m->shift;
    while (m->used[h] && m->keys[h] != key) h = (h + 1) & (uint64_t)(m->cap - 1);
    return (int64_t)h;
}

static int map_init(Map *m, int64_t cap) {
    int bits = 4;
    while ((1ll << bits) < cap) bits++;
    m->cap = 1ll << bits;
    m->shift = 64 - bits;
    m->size = 0;
    m->keys = malloc((size_t)m->cap * sizeof(uint32_t));
    m->vals = malloc((size_t)m->cap * sizeof(int64_t));
    m->used = calloc((size_t)m->cap, 1);
    return m->keys && m->vals && m->used;
}

static int grow(Map *m) {
    Map bigger;
    if (!map_init(&bigger, m->cap * 2)) return 0;
    for (int64_t i = 0; i < m->cap; i++) {
        if (!m->used[i]) continue;
        int64_t h = slot_of(&bigger, m->keys[i]);
        bigger.used[h] = 1;
        bigger.keys[h] = m->keys[i];
        bigger.vals[h] = m->vals[i];
    }
    bigger.size = m->size;
    free(m->keys); free(m->vals); free(m->used);
    *m = bigger;
    return 1;
}

/* The slot of key, inserted with value `fresh` when absent; -1 when out of memory. */
static int64_t find_or_insert(Map *m, uint32_t key, int64_t fresh) {
    if (2 * (m->size + 1) > m->cap && !grow(m)) return -1;
    int64_t h = slot_of(m, key);
    if (!m->used[h]) {
        m->used[h] = 1;
        m->keys[h] = key;
        m->vals[h] = fresh;
        m->size++;
    }
    return h;
}

void *dlrmkit_map_new(int64_t cap) {
    Map *m = malloc(sizeof(Map));
    if (m && !map_init(m, cap < 16 ? 16 : 2 * cap)) { free(m); return NULL; }
    return m;
}

void dlrmkit_map_free(void *p) {
    Map *m = p;
    if (!m) return;
    free(m->keys); free(m->vals); free(m->used); free(m);
}

int64_t dlrmkit_map_size(void *p) { return ((Map *)p)->size; }

/* vals[key] += 1 for each value (a column of n values, `stride` elements apart). 0 on failure. */
int dlrmkit_map_count(void *p, const uint32_t *col, int64_t n, int64_t stride) {
    Map *m = p;
    for (int64_t r = 0; r < n; r++) {
        int64_t h = find_or_insert(m, col[r * stride], 0);
        if (h < 0) return 0;
        m->vals[h]++;
    }
    return 1;
}

/* out[r] = the value's number in order of first appearance (new values get the next number). */
int dlrmkit_map_first(void *p, const uint32_t *col, int64_t n, int64_t stride, int32_t *out, int64_t out_stride) {
    Map *m = p;
    for (int64_t r = 0; r < n; r++) {
        int64_t h = find_or_insert(m, col[r * stride], m->size);
        if (h < 0) return 0;
        out[r * out_stride] = (int32_t)m->vals[h];
    }
    return 1;
}

/* out[r] = the value's number, or `missing` when absent. */
void dlrmkit_map_lookup(void *p, const uint32_t *col, int64_t n, int64_t stride, int64_t missing,
                        int32_t *out, int64_t out_stride) {
    Map *m = p;
    for (int64_t r = 0; r < n; r++) {
        int64_t h = slot_of(m, col[r * stride]);
        out[r * out_stride] = (int32_t)(m->used[h] ? m->vals[h] : missing);
    }
}

/* keys[i], vals[i] for every entry (in slot order). */
void dlrmkit_map_items(void *p, uint32_t *keys, int64_t *vals) {
    Map *m = p;
    int64_t k = 0;
    for (int64_t i = 0; i < m->cap; i++)
        if (m->used[i]) { keys[k] = m->keys[i]; vals[k] = m->vals[i]; k++; }
}

/* Insert n (key, value) pairs (keys distinct, absent). 0 on failure. */
int dlrmkit_map_insert(void *p, const uint32_t *keys, const int64_t *vals, int64_t n) {
    Map *m = p;
    for (int64_t i = 0; i < n; i++) {
        int64_t h = find_or_insert(m, keys[i], vals[i]);
        if (h < 0) return 0;
    }
    return 1;
}

/* The map as a flat, read-only table that many processes can share by mapping one file: slot i is
 * (key, value) at slots[2i], slots[2i + 1]; the value 0xFFFFFFFF marks an empty slot. Same hashing
 * and probing as the map; cap (a power of two) is its capacity. */
#define FLAT_EMPTY 0xFFFFFFFFu

int64_t dlrmkit_map_capacity(void *p) { return ((Map *)p)->cap; }

void dlrmkit_map_export(void *p, uint32_t *slots) {
    Map *m = p;
    for (int64_t i = 0; i < m->cap; i++) {
        slots[2 * i] = m->used[i] ? m->keys[i] : 0;
        slots[2 * i + 1] = m->used[i] ? (uint32_t)m->vals[i] : FLAT_EMPTY;
    }
}

/* out[r] = the value's number in the flat table, or `missing` when absent. */
void dlrmkit_flat_lookup(const uint32_t *slots, int64_t cap, const uint32_t *col, int64_t n, int64_t stride,
                         int64_t missing, int32_t *out, int64_t out_stride) {
    int bits = 4;
    while ((1ll << bits) < cap) bits++;
    const uint64_t mask = (uint64_t)cap - 1;
    for (int64_t r = 0; r < n; r++) {
        uint32_t key = col[r * stride];
        uint64_t h = ((uint64_t)key * 0x9E3779B97F4A7C15ull) >> (64 - bits);
        while (slots[2 * h + 1] != FLAT_EMPTY && slots[2 * h] != key) h = (h + 1) & mask;
        out[r * out_stride] = slots[2 * h + 1] != FLAT_EMPTY ? (int32_t)slots[2 * h + 1] : (int32_t)missing;
    }
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_criteo_parse", "C fast path (see criteo_parse.c)", -1, NULL};

PyMODINIT_FUNC PyInit__criteo_parse(void) { return PyModule_Create(&module); }
