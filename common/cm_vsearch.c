/*  cm_vsearch.c: see cm_vsearch.h.

    Speed: a search reads every vector of the set once (100,000 x 256
    float32 = 100 MB), so it is bound by memory bandwidth more than by
    arithmetic. The dot product keeps eight independent sums so that the
    compiler vectorises it at -O2 with the baseline instruction set (no
    -march=native), and scores are compared with the heap's worst before
    anything else is done with them. */
#include "cm_vsearch.h"
#include "cm_log.h"
#include "cm_metrics.h"
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

//  The vectors of one dimension in a set.
typedef struct {
    size_t dim;            //  floats per vector
    size_t count;          //  vectors
    size_t max;            //  vectors allocated
    float *vectors;        //  count * dim, each of norm 1 (or 0)
    int64_t *document_ids; //  per vector: its chunk's document
    int64_t *positions;    //  per vector: its chunk's position
} s_group_t;

//  A workspace's vector set at one version: immutable once published.
typedef struct {
    atomic_int refs;    //  the cache's reference and each search's
    int64_t version;    //  cm_storage_vectors_version it was loaded at
    size_t total;       //  vectors in all groups
    size_t bytes;       //  its vectors and keys: what the cache's limit counts
    s_group_t *groups;  //  one per dimension
    size_t group_count; //  entries in groups
} s_set_t;

typedef struct {
    int64_t workspace_id;
    s_set_t *set;  //  the newest loaded; NULL before the first load
    bool loading;  //  a thread is loading a newer one
    uint64_t used; //  the cache's tick when it was last searched
} s_entry_t;

struct cm_vsearch_s {
    pthread_mutex_t lock;  //  guards entries (not the sets' contents)
    pthread_cond_t loaded; //  broadcast when a load ends
    s_entry_t **entries;   //  one per cached workspace
    size_t size;           //  entries in use
    size_t max;            //  entries allocated
    size_t bytes;          //  of the cached sets (s_set_t.bytes)
    size_t max_bytes;      //  the limit on bytes (0: none)
    uint64_t tick;         //  counts uses, for least recently used
    uint64_t evictions;    //  sets dropped for the limit
};

//  --- sets -----------------------------------------------------------------------

static void
s_set_release (s_set_t **set_p)
{
    s_set_t *set = *set_p;
    *set_p = NULL;
    if (!set || atomic_fetch_sub (&set->refs, 1) != 1)
        return;
    for (size_t i = 0; i < set->group_count; i++) {
        free (set->groups[i].vectors);
        free (set->groups[i].document_ids);
        free (set->groups[i].positions);
    }
    free (set->groups);
    free (set);
}

//  Add one loaded chunk to the set (cm_storage_chunk_fn).
static void
s_set_add (const cm_storage_chunk_t *chunk, void *arg)
{
    s_set_t *set = arg;
    if (chunk->dim == 0)
        return;
    s_group_t *group = NULL;
    for (size_t i = 0; i < set->group_count && !group; i++)
        if (set->groups[i].dim == chunk->dim)
            group = &set->groups[i];
    if (!group) {
        set->groups =
            cm_realloc (set->groups, (set->group_count + 1) * sizeof *set->groups);
        group = &set->groups[set->group_count++];
        memset (group, 0, sizeof *group);
        group->dim = chunk->dim;
    }
    if (group->count == group->max) {
        group->max = group->max ? group->max * 2 : 1024;
        group->vectors =
            cm_realloc (group->vectors, group->max * group->dim * sizeof (float));
        group->document_ids =
            cm_realloc (group->document_ids, group->max * sizeof *group->document_ids);
        group->positions =
            cm_realloc (group->positions, group->max * sizeof *group->positions);
    }
    float *vector = group->vectors + group->count * group->dim;
    memcpy (vector, chunk->vector, group->dim * sizeof (float));
    double norm = 0;
    for (size_t i = 0; i < group->dim; i++)
        norm += (double) vector[i] * vector[i];
    if (norm > 0 && isfinite (norm)) {
        float scale = (float) (1 / sqrt (norm));
        for (size_t i = 0; i < group->dim; i++)
            vector[i] *= scale;
    } else
        memset (vector, 0, group->dim * sizeof (float));
    group->document_ids[group->count] = chunk->document_id;
    group->positions[group->count] = chunk->position;
    group->count++;
    set->total++;
}

//  Read a workspace's set from the database. NULL with *status_p on failure.
static s_set_t *
s_set_load (cm_storage_t *storage, int64_t workspace_id, cm_storage_status_t *status_p)
{
    s_set_t *set = cm_calloc (1, sizeof *set);
    atomic_init (&set->refs, 1);
    int64_t started = cm_clock_mono_ms ();
    *status_p =
        cm_storage_vectors_load (storage, workspace_id, 0, &set->version, s_set_add, set);
    if (*status_p != CM_STORAGE_OK) {
        s_set_release (&set);
        return NULL;
    }
    //  Give back what the doubling left unused.
    for (size_t i = 0; i < set->group_count; i++) {
        s_group_t *group = &set->groups[i];
        set->bytes +=
            group->count * (group->dim * sizeof (float) + sizeof *group->document_ids +
                            sizeof *group->positions);
        group->max = group->count;
        group->vectors =
            cm_realloc (group->vectors, group->count * group->dim * sizeof (float));
        group->document_ids =
            cm_realloc (group->document_ids, group->count * sizeof *group->document_ids);
        group->positions =
            cm_realloc (group->positions, group->count * sizeof *group->positions);
    }
    int64_t took = cm_clock_mono_ms () - started;
    if (set->group_count > 1)
        cm_warn (
            "vsearch: workspace %lld has vectors of %zu dimensions; a query searches "
            "those of its own",
            (long long) workspace_id, set->group_count);
    cm_debug ("vsearch: workspace %lld loaded: %zu vectors, version %lld, %lld ms",
              (long long) workspace_id, set->total, (long long) set->version,
              (long long) took);
    return set;
}

//  --- search ---------------------------------------------------------------------

//  Four floats, for GCC's and Clang's generic vectors: SSE on x86-64's
//  baseline, NEON on arm64, plain code elsewhere.
typedef float s_v4_t __attribute__ ((vector_size (16)));

//  a . b over n floats, 16 at a time in four independent sums (enough to
//  hide the add latency) without -ffast-math; loads through memcpy, so
//  no alignment is assumed.
static inline float
s_dot (const float *a, const float *b, size_t n)
{
    s_v4_t s0 = {0, 0, 0, 0}, s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s_v4_t a0, a1, a2, a3, b0, b1, b2, b3;
        memcpy (&a0, a + i, sizeof a0);
        memcpy (&a1, a + i + 4, sizeof a1);
        memcpy (&a2, a + i + 8, sizeof a2);
        memcpy (&a3, a + i + 12, sizeof a3);
        memcpy (&b0, b + i, sizeof b0);
        memcpy (&b1, b + i + 4, sizeof b1);
        memcpy (&b2, b + i + 8, sizeof b2);
        memcpy (&b3, b + i + 12, sizeof b3);
        s0 += a0 * b0;
        s1 += a1 * b1;
        s2 += a2 * b2;
        s3 += a3 * b3;
    }
    s_v4_t v = (s0 + s1) + (s2 + s3);
    float sum = (v[0] + v[1]) + (v[2] + v[3]);
    for (; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

typedef struct {
    float score;
    size_t index;
} s_scored_t;

//  a ranks below b: a lower score, or an equal one loaded later.
static inline bool
s_below (const s_scored_t *a, const s_scored_t *b)
{
    return a->score < b->score || (a->score == b->score && a->index > b->index);
}

//  Restore the min-heap (worst at 0) from i down.
static void
s_sift_down (s_scored_t *heap, size_t size, size_t i)
{
    while (true) {
        size_t left = 2 * i + 1, right = left + 1, least = i;
        if (left < size && s_below (&heap[left], &heap[least]))
            least = left;
        if (right < size && s_below (&heap[right], &heap[least]))
            least = right;
        if (least == i)
            return;
        s_scored_t swap = heap[i];
        heap[i] = heap[least];
        heap[least] = swap;
        i = least;
    }
}

static int
s_best_first (const void *a, const void *b)
{
    const s_scored_t *x = a, *y = b;
    return s_below (y, x) ? -1 : s_below (x, y) ? 1 : 0;
}

//  The best top_n of group for the normalised query, best first.
static size_t
s_group_search (const s_group_t *group, const float *query, size_t top_n, float threshold,
                cm_vsearch_hit_t *hits)
{
    if (top_n > group->count)
        top_n = group->count;
    if (!top_n)
        return 0;
    s_scored_t *heap = cm_malloc (top_n * sizeof *heap);
    size_t size = 0;
    const float *vector = group->vectors;
    //  Scores below floor cannot enter: the threshold, then the heap's worst.
    float floor = threshold;
    for (size_t i = 0; i < group->count; i++, vector += group->dim) {
        float score = s_dot (vector, query, group->dim);
        if (score < floor)
            continue;
        s_scored_t scored = {score, i};
        if (size < top_n) {
            //  Sift up.
            size_t at = size++;
            while (at && s_below (&scored, &heap[(at - 1) / 2])) {
                heap[at] = heap[(at - 1) / 2];
                at = (at - 1) / 2;
            }
            heap[at] = scored;
            if (size == top_n && heap[0].score > floor)
                floor = heap[0].score;
        } else if (s_below (&heap[0], &scored)) {
            heap[0] = scored;
            s_sift_down (heap, size, 0);
            if (heap[0].score > floor)
                floor = heap[0].score;
        }
    }
    qsort (heap, size, sizeof *heap, s_best_first);
    for (size_t i = 0; i < size; i++) {
        hits[i].document_id = group->document_ids[heap[i].index];
        hits[i].position = group->positions[heap[i].index];
        hits[i].score = heap[i].score;
    }
    free (heap);
    return size;
}

//  --- the cache ------------------------------------------------------------------

cm_vsearch_t *
cm_vsearch_new (void)
{
    cm_vsearch_t *self = cm_calloc (1, sizeof *self);
    pthread_mutex_init (&self->lock, NULL);
    pthread_cond_init (&self->loaded, NULL);
    return self;
}

void
cm_vsearch_destroy (cm_vsearch_t **self_p)
{
    assert (self_p);
    cm_vsearch_t *self = *self_p;
    if (!self)
        return;
    *self_p = NULL;
    for (size_t i = 0; i < self->size; i++) {
        assert (!self->entries[i]->loading);
        s_set_release (&self->entries[i]->set);
        free (self->entries[i]);
    }
    free (self->entries);
    pthread_cond_destroy (&self->loaded);
    pthread_mutex_destroy (&self->lock);
    free (self);
}

//  The entry of a workspace, or NULL. Under lock.
static s_entry_t *
s_entry_find (cm_vsearch_t *self, int64_t workspace_id, size_t *index_p)
{
    for (size_t i = 0; i < self->size; i++)
        if (self->entries[i]->workspace_id == workspace_id) {
            if (index_p)
                *index_p = i;
            return self->entries[i];
        }
    return NULL;
}

//  The entry of a workspace, made when missing. Under lock.
static s_entry_t *
s_entry_require (cm_vsearch_t *self, int64_t workspace_id)
{
    s_entry_t *entry = s_entry_find (self, workspace_id, NULL);
    if (entry)
        return entry;
    if (self->size == self->max) {
        self->max = self->max ? self->max * 2 : 8;
        self->entries = cm_realloc (self->entries, self->max * sizeof *self->entries);
    }
    entry = cm_calloc (1, sizeof *entry);
    entry->workspace_id = workspace_id;
    self->entries[self->size++] = entry;
    return entry;
}

//  Remove entry index and give its set to the caller. Under lock.
static s_set_t *
s_entry_remove (cm_vsearch_t *self, size_t index)
{
    s_entry_t *entry = self->entries[index];
    s_set_t *set = entry->set;
    if (set)
        self->bytes -= set->bytes;
    free (entry);
    self->entries[index] = self->entries[--self->size];
    return set;
}

//  While the cached sets pass the limit, drop the least recently searched
//  (never keep, the one just loaded: a set larger than the limit stays,
//  alone). Returns the dropped sets (*count_p of them), for the caller to
//  release once the lock is given back; searches running on them finish
//  first. Under lock.
static s_set_t **
s_evict (cm_vsearch_t *self, const s_entry_t *keep, size_t *count_p)
{
    s_set_t **evicted = NULL;
    *count_p = 0;
    while (self->max_bytes && self->bytes > self->max_bytes) {
        size_t victim = SIZE_MAX;
        for (size_t i = 0; i < self->size; i++) {
            const s_entry_t *entry = self->entries[i];
            if (entry != keep && entry->set && !entry->loading &&
                (victim == SIZE_MAX || entry->used < self->entries[victim]->used))
                victim = i;
        }
        if (victim == SIZE_MAX)
            break;
        int64_t workspace_id = self->entries[victim]->workspace_id;
        s_set_t *set = s_entry_remove (self, victim);
        cm_info ("vsearch: workspace %lld's vectors (%zu bytes) dropped from the cache: "
                 "it holds more than VECTOR_CACHE_MAX_BYTES=%zu",
                 (long long) workspace_id, set->bytes, self->max_bytes);
        evicted = cm_realloc (evicted, (*count_p + 1) * sizeof *evicted);
        evicted[(*count_p)++] = set;
        self->evictions++;
    }
    return evicted;
}

//  Release what s_evict dropped, outside the lock.
static void
s_release_evicted (s_set_t **evicted, size_t count)
{
    for (size_t i = 0; i < count; i++)
        s_set_release (&evicted[i]);
    free (evicted);
}

//  A reference to a set of the workspace at least as new as its version
//  in the database now, loading it when the cache has none. The caller
//  releases it.
static cm_storage_status_t
s_acquire (cm_vsearch_t *self, cm_storage_t *storage, int64_t workspace_id,
           s_set_t **set_p)
{
    *set_p = NULL;
    int64_t version;
    cm_storage_status_t status =
        cm_storage_vectors_version (storage, workspace_id, &version);
    if (status == CM_STORAGE_NOT_FOUND)
        cm_vsearch_forget (self, workspace_id);
    if (status != CM_STORAGE_OK)
        return status;

    pthread_mutex_lock (&self->lock);
    s_entry_t *entry;
    while (true) {
        //  Entries are looked up again after every wait: forget may have
        //  removed this one meanwhile.
        entry = s_entry_require (self, workspace_id);
        if (entry->set && entry->set->version >= version) {
            atomic_fetch_add (&entry->set->refs, 1);
            entry->used = ++self->tick;
            *set_p = entry->set;
            pthread_mutex_unlock (&self->lock);
            return CM_STORAGE_OK;
        }
        if (!entry->loading)
            break;
        pthread_cond_wait (&self->loaded, &self->lock);
    }
    entry->loading = true;
    pthread_mutex_unlock (&self->lock);

    s_set_t *set = s_set_load (storage, workspace_id, &status);

    s_set_t *old = NULL;
    s_set_t **evicted = NULL;
    size_t evicted_count = 0;
    pthread_mutex_lock (&self->lock);
    entry = s_entry_find (self, workspace_id, NULL);
    assert (entry); //  forget leaves an entry that is loading
    entry->loading = false;
    if (set) {
        old = entry->set;
        entry->set = set;
        entry->used = ++self->tick;
        self->bytes = self->bytes - (old ? old->bytes : 0) + set->bytes;
        atomic_fetch_add (&set->refs, 1);
        *set_p = set;
        evicted = s_evict (self, entry, &evicted_count);
    }
    pthread_cond_broadcast (&self->loaded);
    pthread_mutex_unlock (&self->lock);
    s_set_release (&old);
    s_release_evicted (evicted, evicted_count);
    return status;
}

cm_storage_status_t
cm_vsearch_warm (cm_vsearch_t *self, cm_storage_t *storage, int64_t workspace_id)
{
    assert (self);
    assert (storage);
    s_set_t *set;
    cm_storage_status_t status = s_acquire (self, storage, workspace_id, &set);
    s_set_release (&set);
    return status;
}

void
cm_vsearch_forget (cm_vsearch_t *self, int64_t workspace_id)
{
    assert (self);
    s_set_t *set = NULL;
    pthread_mutex_lock (&self->lock);
    size_t index;
    s_entry_t *entry = s_entry_find (self, workspace_id, &index);
    if (entry && !entry->loading)
        set = s_entry_remove (self, index);
    pthread_mutex_unlock (&self->lock);
    s_set_release (&set);
}

void
cm_vsearch_stats (cm_vsearch_t *self, size_t *workspaces_p, size_t *vectors_p,
                  size_t *bytes_p)
{
    assert (self);
    size_t workspaces = 0, vectors = 0, bytes = 0;
    pthread_mutex_lock (&self->lock);
    for (size_t i = 0; i < self->size; i++) {
        s_set_t *set = self->entries[i]->set;
        if (!set)
            continue;
        workspaces++;
        vectors += set->total;
        for (size_t g = 0; g < set->group_count; g++)
            bytes += set->groups[g].count * set->groups[g].dim * sizeof (float);
    }
    pthread_mutex_unlock (&self->lock);
    if (workspaces_p)
        *workspaces_p = workspaces;
    if (vectors_p)
        *vectors_p = vectors;
    if (bytes_p)
        *bytes_p = bytes;
}

//  The search itself; *hits_p is a new array (NULL when no hits).
static cm_storage_status_t
s_search (cm_vsearch_t *self, cm_storage_t *storage, int64_t workspace_id,
          const float *query, size_t dim, size_t top_n, double threshold,
          cm_vsearch_hit_t **hits_p, size_t *count_p, size_t *total_p)
{
    *hits_p = NULL;
    *count_p = 0;
    *total_p = 0;
    s_set_t *set;
    cm_storage_status_t status = s_acquire (self, storage, workspace_id, &set);
    if (status != CM_STORAGE_OK)
        return status;
    *total_p = set->total;
    const s_group_t *group = NULL;
    for (size_t i = 0; i < set->group_count && !group; i++)
        if (set->groups[i].dim == dim)
            group = &set->groups[i];
    if (group && group->count && top_n) {
        float *unit = cm_malloc (dim * sizeof *unit);
        double norm = 0;
        for (size_t i = 0; i < dim; i++)
            norm += (double) query[i] * query[i];
        float scale = norm > 0 && isfinite (norm) ? (float) (1 / sqrt (norm)) : 0;
        for (size_t i = 0; i < dim; i++)
            unit[i] = query[i] * scale;
        float floor = isnan (threshold) ? -INFINITY : (float) threshold;
        *hits_p =
            cm_malloc ((top_n < group->count ? top_n : group->count) * sizeof **hits_p);
        *count_p = s_group_search (group, unit, top_n, floor, *hits_p);
        free (unit);
    }
    s_set_release (&set);
    return CM_STORAGE_OK;
}

cm_storage_status_t
cm_vsearch_search (cm_vsearch_t *self, cm_storage_t *storage, int64_t workspace_id,
                   const float *query, size_t dim, size_t top_n, double threshold,
                   cm_vsearch_hit_t *hits, size_t *count_p, size_t *total_p)
{
    assert (self);
    assert (storage);
    assert (query || !dim);
    assert (hits || !top_n);
    assert (count_p);
    cm_vsearch_hit_t *found;
    size_t total;
    cm_storage_status_t status = s_search (self, storage, workspace_id, query, dim, top_n,
                                           threshold, &found, count_p, &total);
    if (*count_p)
        memcpy (hits, found, *count_p * sizeof *hits);
    free (found);
    if (total_p)
        *total_p = total;
    return status;
}

//  --- answers --------------------------------------------------------------------

//  obj[key] = text, or null when text is NULL (or not UTF-8: ingestion
//  refuses such text, so that is a damaged row).
static void
s_set_text (json_t *obj, const char *key, const char *text)
{
    json_t *value = text ? json_string (text) : NULL;
    json_object_set_new (obj, key, value ? value : json_null ());
}

//  obj[key] = count, or null when it is unknown (< 0).
static void
s_set_count (json_t *obj, const char *key, int64_t count)
{
    json_object_set_new (obj, key, count >= 0 ? json_integer (count) : json_null ());
}

typedef struct {
    float score;
    bool sources; //  a chat source (else a vector-search result)
    json_t *out;  //  the array to append to
} s_shape_t;

//  One read chunk as a result or a source (cm_storage_chunk_fn).
static void
s_shape (const cm_storage_chunk_t *chunk, void *arg)
{
    s_shape_t *shape = arg;
    double score = shape->score;
    json_t *item = json_object ();
    s_set_text (item, "id", chunk->id);
    if (shape->sources) {
        s_set_text (item, "url", chunk->url);
        s_set_text (item, "title", chunk->title);
        s_set_text (item, "docAuthor", chunk->doc_author);
        s_set_text (item, "description", chunk->description);
        s_set_text (item, "docSource", chunk->doc_source);
        s_set_text (item, "chunkSource", chunk->chunk_source);
        s_set_text (item, "published", chunk->published);
        s_set_count (item, "wordCount", chunk->word_count);
        s_set_count (item, "token_count_estimate", chunk->token_count_estimate);
        s_set_text (item, "text", chunk->text);
        json_object_set_new (item, "_distance", json_real (1 - score));
    } else {
        s_set_text (item, "text", chunk->text);
        json_t *metadata = json_object ();
        s_set_text (metadata, "url", chunk->url);
        s_set_text (metadata, "title", chunk->title);
        s_set_text (metadata, "author", chunk->doc_author);
        s_set_text (metadata, "description", chunk->description);
        s_set_text (metadata, "docSource", chunk->doc_source);
        s_set_text (metadata, "chunkSource", chunk->chunk_source);
        s_set_text (metadata, "published", chunk->published);
        s_set_count (metadata, "wordCount", chunk->word_count);
        s_set_count (metadata, "tokenCount", chunk->token_count_estimate);
        json_object_set_new (item, "metadata", metadata);
        json_object_set_new (item, "distance", json_real (1 - score));
    }
    json_object_set_new (item, "score", json_real (score));
    json_array_append_new (shape->out, item);
}

//  Read the hits' chunks into a new array, each shaped as sources says.
static cm_storage_status_t
s_hits_json (cm_storage_t *storage, const cm_vsearch_hit_t *hits, size_t count,
             bool sources, json_t **array_p)
{
    s_shape_t shape = {.sources = sources, .out = json_array ()};
    for (size_t i = 0; i < count; i++) {
        shape.score = hits[i].score;
        cm_storage_status_t status = cm_storage_chunk_read (
            storage, hits[i].document_id, hits[i].position, s_shape, &shape);
        if (status == CM_STORAGE_ERROR) {
            json_decref (shape.out);
            *array_p = NULL;
            return status;
        }
    }
    *array_p = shape.out;
    return CM_STORAGE_OK;
}

cm_storage_status_t
cm_vsearch_sources (cm_storage_t *storage, const cm_vsearch_hit_t *hits, size_t count,
                    json_t **sources_p)
{
    assert (storage);
    assert (hits || !count);
    assert (sources_p);
    return s_hits_json (storage, hits, count, true, sources_p);
}

cm_storage_status_t
cm_vsearch_query (cm_vsearch_t *self, cm_storage_t *storage, int64_t workspace_id,
                  const float *query, size_t dim, size_t top_n, double threshold,
                  json_t **result_p)
{
    assert (self);
    assert (storage);
    assert (query || !dim);
    assert (result_p);
    *result_p = NULL;
    cm_vsearch_hit_t *hits;
    size_t count, total;
    cm_storage_status_t status = s_search (self, storage, workspace_id, query, dim, top_n,
                                           threshold, &hits, &count, &total);
    json_t *results = NULL;
    if (status == CM_STORAGE_OK)
        status = s_hits_json (storage, hits, count, false, &results);
    free (hits);
    if (status != CM_STORAGE_OK)
        return status;
    *result_p = total ? json_pack ("{s:o}", "results", results)
                      : json_pack ("{s:o, s:s}", "results", results, "message",
                                   CM_VSEARCH_NO_EMBEDDINGS);
    return CM_STORAGE_OK;
}

void
cm_vsearch_set_max_bytes (cm_vsearch_t *self, size_t max_bytes)
{
    assert (self);
    s_set_t **evicted = NULL;
    size_t count = 0;
    pthread_mutex_lock (&self->lock);
    self->max_bytes = max_bytes;
    evicted = s_evict (self, NULL, &count);
    pthread_mutex_unlock (&self->lock);
    s_release_evicted (evicted, count);
}

uint64_t
cm_vsearch_evictions (cm_vsearch_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    uint64_t evictions = self->evictions;
    pthread_mutex_unlock (&self->lock);
    return evictions;
}

static void
s_collect (cm_metrics_t *metrics, void *arg)
{
    cm_vsearch_t *self = arg;
    pthread_mutex_lock (&self->lock);
    double bytes = (double) self->bytes, max_bytes = (double) self->max_bytes;
    double evictions = (double) self->evictions;
    size_t workspaces = 0;
    for (size_t i = 0; i < self->size; i++)
        workspaces += self->entries[i]->set != NULL;
    pthread_mutex_unlock (&self->lock);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_vector_cache_bytes",
                                     "Bytes of workspace vectors (and their keys) cached "
                                     "for search.",
                                     NULL),
                   bytes);
    cm_metric_set (
        cm_metrics_gauge (metrics, "llmrt_vector_cache_max_bytes",
                          "The cache's limit, VECTOR_CACHE_MAX_BYTES (0: none).", NULL),
        max_bytes);
    cm_metric_set (cm_metrics_gauge (metrics, "llmrt_vector_cache_workspaces",
                                     "Workspaces whose vectors are cached.", NULL),
                   (double) workspaces);
    cm_metric_set (cm_metrics_counter (metrics, "llmrt_vector_cache_evictions_total",
                                       "Workspaces' vectors dropped to keep the cache "
                                       "under its limit.",
                                       NULL),
                   evictions);
}

void
cm_vsearch_attach_metrics (cm_vsearch_t *self, cm_metrics_t *metrics)
{
    assert (self && metrics);
    s_collect (metrics, self);
    cm_metrics_collector (metrics, s_collect, self);
}
