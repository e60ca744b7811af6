/* Relaxed atomics for counters shared between relay workers and the Python thread
 * that reads them. Cython has no syntax for the GCC builtins, so they live here. */
#ifndef FASTPROXY_ATOMICS_H
#define FASTPROXY_ATOMICS_H
#include <stdint.h>

static inline void fp_add_u64(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline void fp_add_i64(int64_t *p, int64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline int64_t fp_fetch_add_i64(int64_t *p, int64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint64_t fp_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline int64_t fp_load_i64(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline int fp_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fp_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fp_store_i64(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t fp_next_u32(uint32_t *p) { return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
static inline uint32_t fp_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
/* On failure *expected gets the current value, ready for the next attempt. */
static inline int fp_cas_u32(uint32_t *p, uint32_t *expected, uint32_t v) {
    return __atomic_compare_exchange_n(p, expected, v, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
static inline int fp_xchg_int(int *p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
static inline void fp_add_int(int *p, int v) { __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
static inline int fp_incref(int *p) { return __atomic_add_fetch(p, 1, __ATOMIC_ACQ_REL); }
static inline int fp_decref(int *p) { return __atomic_sub_fetch(p, 1, __ATOMIC_ACQ_REL); }
static inline int fp_add_fetch_int(int *p, int v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
static inline uint64_t fp_load_acq_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fp_store_rel_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void *fp_load_ptr(void *const *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fp_store_ptr(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/* A full barrier: orders a store before a later load (release/acquire do not;
 * see the worker epochs in worker.pxi and api.pxi). */
static inline void fp_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
#endif
