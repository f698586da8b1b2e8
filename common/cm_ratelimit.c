/*  cm_ratelimit.c: see cm_ratelimit.h.

    GCRA with interval T = 1/rate and tolerance tau = burst * T. A request
    at time t against a bucket whose TAT is tat:

        next = max (tat, t) + T
        passes when next - tau <= t, and then tat = next

    so a fresh bucket passes exactly `burst` requests at one instant, and
    then one per T. A rejected request writes nothing, which is what makes
    the shared bucket a plain compare-and-swap loop. */
#include "cm_ratelimit.h"
#include <pthread.h>
#include <sodium.h>
#include <stdalign.h>
#include <stdatomic.h>

#define S_NIL         UINT32_MAX
#define S_MAX_STRIPES 64
#define S_STRIPE_MIN  64              //  keys per stripe at least (else fewer stripes)
#define S_LONG_AGO    (INT64_MIN / 4) //  TAT of a fresh bucket: the burst is whole
#define S_MAX_SPAN_NS 100000000000000000LL //  1e17 ns (3 years): T and tau at most
#define S_MAX_NOW_US  (INT64_MAX / 4000)   //  so that now in ns, plus tau, fits

//  One keyed bucket: 40 bytes.
typedef struct {
    uint64_t hash[2]; //  128-bit SipHash of the key: the key, as far as we care
    int64_t tat;      //  theoretical arrival time, ns
    uint32_t newer;   //  LRU neighbour toward the most recent (not kept at the head)
    uint32_t older;   //  LRU neighbour toward the least recent (not kept at the tail)
    uint32_t chain;   //  next entry in the same hash bucket, S_NIL at the end
} s_entry_t;

//  A slice of the key table with its own lock and LRU order. Aligned to a
//  cache line so that two stripes' locks never share one.
typedef struct {
    alignas (64) pthread_mutex_t lock; //  guards everything below
    s_entry_t *entries;                //  capacity slots; the first `used` are live
    uint32_t capacity;                 //  keys this stripe holds at most
    uint32_t used;                     //  slots handed out so far
    uint32_t *buckets;                 //  hash chains' first entries
    uint32_t mask;                     //  bucket count - 1 (a power of two)
    uint32_t newest;                   //  LRU head, S_NIL when empty
    uint32_t oldest;                   //  LRU tail: evicted first
    uint64_t evictions;                //  keys dropped to make room
} s_stripe_t;

struct cm_ratelimit_s {
    alignas (64) _Atomic int64_t tat; //  the shared bucket's TAT, ns (own cache line)
    alignas (64) double rate;         //  requests per second; 0: unlimited
    int64_t burst;                    //  requests that may pass at once
    int64_t interval_ns;              //  T: one request's worth of time
    int64_t tolerance_ns;             //  tau = burst * T
    unsigned char seed[crypto_shorthash_siphashx24_KEYBYTES]; //  hash key
    s_stripe_t *stripes;  //  the key table, NULL without keys
    uint32_t stripe_mask; //  stripe count - 1 (a power of two)
    size_t max_keys;      //  table size, over all stripes
};

static int64_t
s_ceil_us (int64_t ns)
{
    return ns <= 0 ? 0 : (ns + 999) / 1000;
}

static uint32_t
s_pow2_at_least (uint64_t n)
{
    uint32_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

cm_ratelimit_t *
cm_ratelimit_new (double rate, int64_t burst, size_t max_keys)
{
    assert (rate >= 0 && rate <= 1e9);
    assert (burst >= 1);
    assert (max_keys < S_NIL / 2);
    if (sodium_init () < 0)
        abort ();
    cm_ratelimit_t *self = aligned_alloc (64, (sizeof *self + 63) / 64 * 64);
    if (!self)
        abort ();
    memset (self, 0, sizeof *self);
    atomic_init (&self->tat, S_LONG_AGO);
    self->rate = rate;
    self->burst = burst;
    if (rate > 0) {
        double interval = 1e9 / rate;
        assert (interval >= 1 && interval * (double) burst <= (double) S_MAX_SPAN_NS);
        self->interval_ns = (int64_t) (interval + 0.5);
        self->tolerance_ns = self->interval_ns * burst;
    }
    randombytes_buf (self->seed, sizeof self->seed);
    self->max_keys = max_keys;
    if (max_keys) {
        uint32_t stripes = 1;
        while (stripes < S_MAX_STRIPES && max_keys / (stripes * 2) >= S_STRIPE_MIN)
            stripes *= 2;
        self->stripe_mask = stripes - 1;
        self->stripes = aligned_alloc (64, stripes * sizeof (s_stripe_t));
        if (!self->stripes)
            abort ();
        memset (self->stripes, 0, stripes * sizeof (s_stripe_t));
        for (uint32_t i = 0; i < stripes; i++) {
            s_stripe_t *stripe = &self->stripes[i];
            pthread_mutex_init (&stripe->lock, NULL);
            //  The stripes' capacities add up to max_keys exactly.
            stripe->capacity = (uint32_t) (max_keys / stripes + (i < max_keys % stripes));
            stripe->entries = cm_calloc (stripe->capacity, sizeof (s_entry_t));
            //  Twice as many chains as keys: chains stay short.
            uint32_t chains = s_pow2_at_least ((uint64_t) stripe->capacity * 2);
            stripe->mask = chains - 1;
            stripe->buckets = cm_malloc (chains * sizeof (uint32_t));
            memset (stripe->buckets, 0xff, chains * sizeof (uint32_t));
            stripe->newest = stripe->oldest = S_NIL;
        }
    }
    return self;
}

void
cm_ratelimit_destroy (cm_ratelimit_t **self_p)
{
    assert (self_p);
    cm_ratelimit_t *self = *self_p;
    if (!self)
        return;
    if (self->stripes) {
        for (uint32_t i = 0; i <= self->stripe_mask; i++) {
            pthread_mutex_destroy (&self->stripes[i].lock);
            free (self->stripes[i].entries);
            free (self->stripes[i].buckets);
        }
        free (self->stripes);
    }
    free (self);
    *self_p = NULL;
}

//  The GCRA decision for a bucket at tat, at now (both ns). Sets *next to
//  the TAT the bucket gets if the request passes.
static bool
s_decide (cm_ratelimit_t *self, int64_t tat, int64_t now, int64_t *next,
          cm_ratelimit_result_t *result)
{
    int64_t base = tat > now ? tat : now;
    *next = base + self->interval_ns;
    int64_t allow_at = *next - self->tolerance_ns;
    bool allowed = allow_at <= now;
    if (result) {
        result->outcome = allowed ? CM_RATELIMIT_ALLOWED : CM_RATELIMIT_REJECTED;
        //  Passed: the room left below the tolerance, in whole requests.
        //  Rejected: less than one request's worth, by the test above.
        result->remaining =
            allowed ? (now + self->tolerance_ns - *next) / self->interval_ns : 0;
        result->reset_us = s_ceil_us ((allowed ? *next : base) - now);
        //  Rounded up to the microsecond, so asking at now + retry_after
        //  is never early.
        result->retry_after_us = allowed ? 0 : s_ceil_us (allow_at - now);
        result->undo_from = tat;
        result->undo_to = allowed ? *next : tat;
    }
    return allowed;
}

static void
s_unlimited (cm_ratelimit_result_t *result)
{
    if (result)
        *result = (cm_ratelimit_result_t){.outcome = CM_RATELIMIT_ALLOWED,
                                          .remaining = INT64_MAX};
}

static int64_t
s_now_ns (int64_t now_us)
{
    assert (now_us > -S_MAX_NOW_US && now_us < S_MAX_NOW_US);
    return now_us * 1000;
}

static void
s_hash (cm_ratelimit_t *self, const char *key, uint64_t hash[2])
{
    unsigned char out[crypto_shorthash_siphashx24_BYTES];
    crypto_shorthash_siphashx24 (out, (const unsigned char *) key, strlen (key),
                                 self->seed);
    memcpy (hash, out, sizeof out);
}

static s_stripe_t *
s_stripe (cm_ratelimit_t *self, const uint64_t hash[2])
{
    //  Stripe from the high bits of the second half, chain from the first
    //  half's low bits: independent choices.
    return &self->stripes[(hash[1] >> 40) & self->stripe_mask];
}

//  Lock held. The entry for hash, or S_NIL.
static uint32_t
s_find (s_stripe_t *stripe, const uint64_t hash[2])
{
    uint32_t index = stripe->buckets[hash[0] & stripe->mask];
    while (index != S_NIL) {
        s_entry_t *entry = &stripe->entries[index];
        if (entry->hash[0] == hash[0] && entry->hash[1] == hash[1])
            return index;
        index = entry->chain;
    }
    return S_NIL;
}

//  Lock held. Take an entry out of the LRU list. The ends are known by the
//  stripe's newest and oldest, never by a link, so the links that point
//  past the ends are left stale: evicting the oldest then writes to no
//  other entry (one cache miss fewer on the path where every key is new).
static void
s_lru_unlink (s_stripe_t *stripe, uint32_t index)
{
    s_entry_t *entry = &stripe->entries[index];
    bool newest = index == stripe->newest, oldest = index == stripe->oldest;
    if (newest && oldest)
        stripe->newest = stripe->oldest = S_NIL;
    else if (newest)
        stripe->newest = entry->older;
    else if (oldest)
        stripe->oldest = entry->newer;
    else {
        stripe->entries[entry->newer].older = entry->older;
        stripe->entries[entry->older].newer = entry->newer;
    }
}

//  Lock held. Put an entry at the most recent end.
static void
s_lru_push (s_stripe_t *stripe, uint32_t index)
{
    if (stripe->newest == S_NIL)
        stripe->oldest = index;
    else {
        stripe->entries[index].older = stripe->newest;
        stripe->entries[stripe->newest].newer = index;
    }
    stripe->newest = index;
}

//  Lock held. A slot for a new key: a never-used one, or the least
//  recently used key's, which is forgotten.
static uint32_t
s_slot (s_stripe_t *stripe)
{
    if (stripe->used < stripe->capacity)
        return stripe->used++;
    uint32_t victim = stripe->oldest;
    s_lru_unlink (stripe, victim);
    uint32_t *link = &stripe->buckets[stripe->entries[victim].hash[0] & stripe->mask];
    while (*link != victim)
        link = &stripe->entries[*link].chain;
    *link = stripe->entries[victim].chain;
    stripe->evictions++;
    return victim;
}

cm_ratelimit_outcome_t
cm_ratelimit_take (cm_ratelimit_t *self, const char *key, int64_t now_us,
                   cm_ratelimit_result_t *result)
{
    assert (self);
    int64_t now = s_now_ns (now_us);
    if (self->rate == 0) {
        s_unlimited (result);
        return CM_RATELIMIT_ALLOWED;
    }
    int64_t next;
    if (!key) {
        int64_t tat = atomic_load_explicit (&self->tat, memory_order_relaxed);
        while (s_decide (self, tat, now, &next, result)) {
            //  On failure tat is reloaded, and the decision made again.
            if (atomic_compare_exchange_weak_explicit (
                    &self->tat, &tat, next, memory_order_relaxed, memory_order_relaxed))
                return CM_RATELIMIT_ALLOWED;
        }
        return CM_RATELIMIT_REJECTED;
    }
    assert (self->stripes);
    uint64_t hash[2];
    s_hash (self, key, hash);
    s_stripe_t *stripe = s_stripe (self, hash);
    pthread_mutex_lock (&stripe->lock);
    uint32_t index = s_find (stripe, hash);
    bool allowed;
    if (index != S_NIL) {
        s_entry_t *entry = &stripe->entries[index];
        allowed = s_decide (self, entry->tat, now, &next, result);
        if (allowed)
            entry->tat = next;
        if (stripe->newest != index) {
            s_lru_unlink (stripe, index);
            s_lru_push (stripe, index);
        }
    } else {
        //  A new key has its whole burst: it always passes.
        allowed = s_decide (self, S_LONG_AGO, now, &next, result);
        index = s_slot (stripe);
        s_entry_t *entry = &stripe->entries[index];
        entry->hash[0] = hash[0];
        entry->hash[1] = hash[1];
        entry->tat = allowed ? next : S_LONG_AGO;
        uint32_t *head = &stripe->buckets[hash[0] & stripe->mask];
        entry->chain = *head;
        *head = index;
        s_lru_push (stripe, index);
    }
    pthread_mutex_unlock (&stripe->lock);
    return allowed ? CM_RATELIMIT_ALLOWED : CM_RATELIMIT_REJECTED;
}

cm_ratelimit_outcome_t
cm_ratelimit_peek (cm_ratelimit_t *self, const char *key, int64_t now_us,
                   cm_ratelimit_result_t *result)
{
    assert (self);
    int64_t now = s_now_ns (now_us);
    if (self->rate == 0) {
        s_unlimited (result);
        return CM_RATELIMIT_ALLOWED;
    }
    int64_t next, tat;
    if (!key)
        tat = atomic_load_explicit (&self->tat, memory_order_relaxed);
    else {
        assert (self->stripes);
        uint64_t hash[2];
        s_hash (self, key, hash);
        s_stripe_t *stripe = s_stripe (self, hash);
        pthread_mutex_lock (&stripe->lock);
        uint32_t index = s_find (stripe, hash);
        tat = index != S_NIL ? stripe->entries[index].tat : S_LONG_AGO;
        pthread_mutex_unlock (&stripe->lock);
    }
    return s_decide (self, tat, now, &next, result) ? CM_RATELIMIT_ALLOWED
                                                    : CM_RATELIMIT_REJECTED;
}

void
cm_ratelimit_undo (cm_ratelimit_t *self, const char *key,
                   const cm_ratelimit_result_t *result)
{
    assert (self && result);
    if (self->rate == 0 || result->outcome != CM_RATELIMIT_ALLOWED)
        return;
    if (!key) {
        int64_t expected = result->undo_to;
        atomic_compare_exchange_strong_explicit (&self->tat, &expected, result->undo_from,
                                                 memory_order_relaxed,
                                                 memory_order_relaxed);
        return;
    }
    assert (self->stripes);
    uint64_t hash[2];
    s_hash (self, key, hash);
    s_stripe_t *stripe = s_stripe (self, hash);
    pthread_mutex_lock (&stripe->lock);
    uint32_t index = s_find (stripe, hash);
    if (index != S_NIL && stripe->entries[index].tat == result->undo_to)
        stripe->entries[index].tat = result->undo_from;
    pthread_mutex_unlock (&stripe->lock);
}

bool
cm_ratelimit_unlimited (cm_ratelimit_t *self)
{
    assert (self);
    return self->rate == 0;
}

double
cm_ratelimit_rate (cm_ratelimit_t *self)
{
    assert (self);
    return self->rate;
}

int64_t
cm_ratelimit_burst (cm_ratelimit_t *self)
{
    assert (self);
    return self->burst;
}

int64_t
cm_ratelimit_window_s (cm_ratelimit_t *self)
{
    assert (self);
    return (self->tolerance_ns + 999999999) / 1000000000;
}

size_t
cm_ratelimit_keys (cm_ratelimit_t *self)
{
    assert (self);
    size_t keys = 0;
    for (uint32_t i = 0; self->stripes && i <= self->stripe_mask; i++) {
        pthread_mutex_lock (&self->stripes[i].lock);
        keys += self->stripes[i].used;
        pthread_mutex_unlock (&self->stripes[i].lock);
    }
    return keys;
}

uint64_t
cm_ratelimit_evictions (cm_ratelimit_t *self)
{
    assert (self);
    uint64_t evictions = 0;
    for (uint32_t i = 0; self->stripes && i <= self->stripe_mask; i++) {
        pthread_mutex_lock (&self->stripes[i].lock);
        evictions += self->stripes[i].evictions;
        pthread_mutex_unlock (&self->stripes[i].lock);
    }
    return evictions;
}

int64_t
cm_ratelimit_seconds (int64_t us)
{
    return us <= 0 ? 0 : (us + 999999) / 1000000;
}
