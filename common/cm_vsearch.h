/*  cm_vsearch.h: vector search over a workspace's chunks, in process.

    Each workspace's vectors (the chunks of the embedded documents linked
    to it: cm_storage_vectors_load) are held in memory as one contiguous
    float32 array, L2-normalised at load, and searched by brute force: the
    cosine of the query with every vector (a dot product), the best top_n
    kept in a heap. score = cosine similarity, distance = 1 - score (as
    upstream's LanceDB reports cosine distance), and only results with
    score >= threshold come back, best first (equal scores: in load order).

    Freshness: every search first reads the workspace's vector-set version
    (cm_storage_vectors_version, one primary-key read) with the caller's
    connection, and reloads the set when it moved, so a search sees every
    link, unlink and chunk committed before it began, by any process. The
    set holds only vectors and (document, position) keys; texts and
    document fields of the few hits are read from the database afterwards.

    Dimensions: a set keeps vectors of every dimension it finds (one array
    per dimension: after a change of embedder, old documents keep theirs
    until re-embedded), and a query searches only the vectors of its own
    dimension: the others are skipped, not an error.

    Threading: one cm_vsearch_t serves every thread of a process; each
    caller passes its own storage connection. Sets are immutable and
    reference-counted: searches run without a lock and never wait for one
    another; a reload (by the first caller that sees a new version; others
    that need that version wait for it) swaps the set in, and the old one
    is freed when its last search ends. Sets stay cached until
    cm_vsearch_forget or destroy, or until the cache holds more than its
    limit (cm_vsearch_set_max_bytes, VECTOR_CACHE_MAX_BYTES): then the
    least recently searched sets are dropped (a search running on one
    finishes first) and loaded again when next searched. A set larger
    than the limit is kept, alone. */
#ifndef CM_VSEARCH_H_INCLUDED
#define CM_VSEARCH_H_INCLUDED

#include "cm_config.h"
#include "cm_storage_docs.h"

typedef struct cm_vsearch_s cm_vsearch_t;

//  One result: the chunk (document and position, the keys of
//  cm_storage_chunk_read) and its cosine similarity to the query.
typedef struct {
    int64_t document_id;
    int64_t position;
    float score;
} cm_vsearch_hit_t;

//  What upstream answers a vector search of a workspace without vectors.
#define CM_VSEARCH_NO_EMBEDDINGS "No embeddings found for this workspace."

//  A new, empty cache.
cm_vsearch_t *cm_vsearch_new (void);
//  Free every cached set; no search may be running. NULL-safe; nulls.
void cm_vsearch_destroy (cm_vsearch_t **self_p);

//  The best (at most top_n, score >= threshold) chunks of a workspace for
//  query (dim floats; need not be normalised), best first, into hits
//  (room for top_n); *count_p: how many. *total_p (may be NULL): vectors
//  the workspace has, of any dimension (0: it has no embeddings); with
//  top_n 0 (query NULL, dim 0, hits NULL) that is all it does: a probe
//  that costs the version read once the set is cached.
//  OK, NOT_FOUND (no such workspace) or ERROR (the storage's, logged).
cm_storage_status_t cm_vsearch_search (cm_vsearch_t *self, cm_storage_t *storage,
                                       int64_t workspace_id, const float *query,
                                       size_t dim, size_t top_n, double threshold,
                                       cm_vsearch_hit_t *hits, size_t *count_p,
                                       size_t *total_p);

//  The answer of POST /api/v1/workspace/{slug}/vector-search:
//  {results:[{id, text, metadata:{url, title, author, description,
//  docSource, chunkSource, published, wordCount, tokenCount}, distance,
//  score}]}, or {results:[], message: CM_VSEARCH_NO_EMBEDDINGS} when the
//  workspace has no vectors. Caller owns *result_p. Statuses as search.
cm_storage_status_t cm_vsearch_query (cm_vsearch_t *self, cm_storage_t *storage,
                                      int64_t workspace_id, const float *query,
                                      size_t dim, size_t top_n, double threshold,
                                      json_t **result_p);

//  Hits as a chat's "sources", upstream's shape (its curated LanceDB
//  rows): [{id, url, title, docAuthor, description, docSource,
//  chunkSource, published, wordCount, token_count_estimate, text,
//  _distance, score}], in the order of hits. A hit whose chunk has gone
//  since the search is left out. Caller owns *sources_p. OK or ERROR.
cm_storage_status_t cm_vsearch_sources (cm_storage_t *storage,
                                        const cm_vsearch_hit_t *hits, size_t count,
                                        json_t **sources_p);

//  Bring a workspace's set up to date now (after ingestion, or to time a
//  load) instead of at the next search. Statuses as search.
cm_storage_status_t cm_vsearch_warm (cm_vsearch_t *self, cm_storage_t *storage,
                                     int64_t workspace_id);

//  Drop a workspace's cached set (the workspace was deleted); a search
//  running on it finishes first. No-op when not cached or being loaded.
void cm_vsearch_forget (cm_vsearch_t *self, int64_t workspace_id);

//  Limit the cached sets to max_bytes (their vectors and keys; 0: no
//  limit, the default), dropping sets now if they pass it.
void cm_vsearch_set_max_bytes (cm_vsearch_t *self, size_t max_bytes);

//  Sets dropped so far to keep under the limit.
uint64_t cm_vsearch_evictions (cm_vsearch_t *self);

//  Publish the cache in metrics, refreshed before each snapshot:
//    gauge   llmrt_vector_cache_bytes          vectors and keys cached now
//    gauge   llmrt_vector_cache_max_bytes      the limit (0: none)
//    gauge   llmrt_vector_cache_workspaces     workspaces whose set is cached
//    counter llmrt_vector_cache_evictions_total  sets dropped for the limit
//  Call once. Take no snapshot after the cache is destroyed.
struct cm_metrics_s;
void cm_vsearch_attach_metrics (cm_vsearch_t *self, struct cm_metrics_s *metrics);

//  The limit as a daemon's setting (cm_config.h), into int64_t member.
// clang-format off
#define CM_VSEARCH_CONF_ENTRY(type, member)                                              \
    {"VECTOR_CACHE_MAX_BYTES", CM_CONF_INT, "536870912", 0, INT64_C (1) << 40,           \
     offsetof (type, member),                                                           \
     "bytes of workspace vectors this process keeps cached for search; the least "      \
     "recently searched go first (0: no limit)"}
// clang-format on

//  What the cache holds: workspaces, vectors, and bytes of vector data.
void cm_vsearch_stats (cm_vsearch_t *self, size_t *workspaces_p, size_t *vectors_p,
                       size_t *bytes_p);

#endif
