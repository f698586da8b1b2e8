/*  cm_embed.h: text embedders: turn texts into vectors for vector search.

    ingestd embeds the chunks of a document, chatd embeds a chat prompt to
    find the chunks near it, and POST /api/v1/openai/embeddings hands the
    vectors to clients. All three read EMBEDDING_* the same way
    (CM_EMBED_CONF_ENTRIES) and use one of two providers:

    builtin (the default): a local, deterministic embedder that needs no
      model and no network: feature hashing of the text's words. Each text
      becomes CM_EMBED_BUILTIN_DIM (256) float32 numbers, L2-normalised (a
      text with no word gives the zero vector). Features, with weights:
        - each word, lower-cased (ASCII), apostrophes dropped, a plural 's'
          taken off ("chunks" -> "chunk"), stop words ("the", "and", ...)
          left out                                                   1.0
        - each pair of neighbouring words (stop words skipped)       0.25
        - each character 3-gram of each word, with its boundaries
          ("^ch", "chu", ..., "nk$"), so "swarm" and "swarming"
          share most of theirs                                        0.4
      A feature's count n counts as 1 + ln n (sublinear), and is added at
      two of the 256 dimensions, each with a sign, all from a hash of the
      feature (the "hashing trick"), so shared words make texts close and
      nothing has to be learned or stored. Words are runs of ASCII letters and
      digits and of non-ASCII characters; everything else (ASCII and
      common Unicode punctuation, spaces) separates them. It knows no
      synonyms: a query finds the chunks that share its words. Fast: about
      50 MB/s of text per core in 1000-character chunks (figure printed by
      test_cm_embed's builtin_throughput).
    openai: any server with OpenAI's `POST {base_url}/embeddings` (OpenAI,
      Ollama, llama.cpp's llama-server, vLLM, LM Studio), over libcurl.
      Texts go in batches of batch_size per request ({"model", "input":
      [...]}); the answer's data items are put back in "index" order. The
      dimension is learned from the first answer and must stay the same
      (a server that changes it is failing). Vectors are L2-normalised
      here too, so a dot product is the cosine for either provider.

    How a call ends (cm_embed_status_t), for the circuit breaker:
      CM_EMBED_UPSTREAM   the upstream failed: cannot connect, a time limit
                          passed, HTTP 5xx, 429, 401, 403, 408, a malformed
                          answer (not JSON, wrong count, a changed
                          dimension): count it against the breaker
      CM_EMBED_REQUEST    the upstream refused the request for its own
                          fault (any other 4xx: a text too long for the
                          model, an unknown model), or a text is not UTF-8:
                          release the permit, do not count it
      CM_EMBED_CANCELLED  the caller's cancelled() said stop: the transfer
                          in progress is aborted within about 10 ms (the
                          upstream sees its connection close)
    err then names the cause and, for an HTTP error, the upstream's own
    message; it never contains the API key.

    Threading: one embedder serves every thread; calls run concurrently
    (each openai call has its own curl handles; DNS answers and TLS
    sessions are shared). */
#ifndef CM_EMBED_H_INCLUDED
#define CM_EMBED_H_INCLUDED

#include "cm_common.h"
#include "cm_config.h"

typedef struct cm_embedder_s cm_embedder_t;

//  The builtin embedder's dimension.
#define CM_EMBED_BUILTIN_DIM 256

typedef enum {
    CM_EMBED_OK = 0,         //  vectors delivered
    CM_EMBED_UPSTREAM = -1,  //  the upstream failed (counts against its breaker)
    CM_EMBED_REQUEST = -2,   //  the request's own fault (does not count)
    CM_EMBED_CANCELLED = -3, //  the caller said stop
} cm_embed_status_t;

//  Settings. cm_embed_config_defaults fills the defaults; programs read
//  them from the environment with CM_EMBED_CONF_ENTRIES (the strings are
//  then the table's: cm_config_free frees them). The embedder copies what
//  it keeps.
typedef struct {
    const char *provider;       //  EMBEDDING_PROVIDER: "builtin" or "openai"
    const char *base_url;       //  EMBEDDING_BASE_URL: openai, with /v1 (NULL: none)
    const char *model;          //  EMBEDDING_MODEL: openai model (NULL: none sent)
    const char *api_key;        //  EMBEDDING_API_KEY: bearer token (NULL: none)
    int64_t batch_size;         //  EMBEDDING_BATCH_SIZE: texts per request
    int64_t timeout_ms;         //  EMBEDDING_TIMEOUT_MS: limit on one request
    int64_t connect_timeout_ms; //  EMBEDDING_CONNECT_TIMEOUT_MS: connection set-up
} cm_embed_config_t;

#define CM_EMBED_DEFAULT_PROVIDER           "builtin"
#define CM_EMBED_DEFAULT_BATCH_SIZE         64
#define CM_EMBED_DEFAULT_TIMEOUT_MS         60000
#define CM_EMBED_DEFAULT_CONNECT_TIMEOUT_MS 10000
//  OpenAI takes at most 2048 inputs per request.
#define CM_EMBED_MAX_BATCH_SIZE 2048

#define CM_EMBED_STR_(x) #x
#define CM_EMBED_STR(x)  CM_EMBED_STR_ (x)

//  The embedder's settings as cm_config table entries: EMBEDDING_PROVIDER,
//  _BASE_URL, _MODEL, _API_KEY, _BATCH_SIZE, _TIMEOUT_MS,
//  _CONNECT_TIMEOUT_MS. type is the settings struct and member its
//  cm_embed_config_t field. After cm_config_load, call
//  cm_embed_config_check for the rules that join settings.
// clang-format off
#define CM_EMBED_CONF_ENTRIES(type, member)                                            \
    {"EMBEDDING_PROVIDER", CM_CONF_STR, CM_EMBED_DEFAULT_PROVIDER, 0, 0,               \
     offsetof (type, member.provider),                                                 \
     "embedder: 'builtin' (local, deterministic, 256 dimensions) or 'openai' (any "    \
     "server with OpenAI's /embeddings: OpenAI, Ollama, llama.cpp, vLLM)"},            \
    {"EMBEDDING_BASE_URL", CM_CONF_STR, NULL, 0, 0,                                    \
     offsetof (type, member.base_url),                                                 \
     "openai: the server's base URL including its version path, e.g. "                \
     "http://127.0.0.1:11434/v1 (required with EMBEDDING_PROVIDER=openai)"},           \
    {"EMBEDDING_MODEL", CM_CONF_STR, NULL, 0, 0,                                       \
     offsetof (type, member.model),                                                    \
     "openai: embedding model, e.g. nomic-embed-text; unset: none sent"},              \
    {"EMBEDDING_API_KEY", CM_CONF_STR, NULL, 0, 0,                                     \
     offsetof (type, member.api_key),                                                  \
     "openai: API key, sent as 'Authorization: Bearer'; unset: none"},                 \
    {"EMBEDDING_BATCH_SIZE", CM_CONF_INT,                                              \
     CM_EMBED_STR (CM_EMBED_DEFAULT_BATCH_SIZE), 1, CM_EMBED_MAX_BATCH_SIZE,           \
     offsetof (type, member.batch_size),                                               \
     "chunks embedded and stored per step (openai: one request)"},                      \
    {"EMBEDDING_TIMEOUT_MS", CM_CONF_INT,                                              \
     CM_EMBED_STR (CM_EMBED_DEFAULT_TIMEOUT_MS), 1, 86400000,                          \
     offsetof (type, member.timeout_ms),                                               \
     "openai: limit on one embeddings request (one batch), connecting included"},      \
    {"EMBEDDING_CONNECT_TIMEOUT_MS", CM_CONF_INT,                                      \
     CM_EMBED_STR (CM_EMBED_DEFAULT_CONNECT_TIMEOUT_MS), 1, 3600000,                   \
     offsetof (type, member.connect_timeout_ms),                                       \
     "openai: limit on connecting to the embedding server"}
// clang-format on

//  Fill config with the defaults (builtin; no URL, model or key).
void cm_embed_config_defaults (cm_embed_config_t *config);
//  Check a configuration: the provider is known; openai has an http(s)
//  EMBEDDING_BASE_URL with a host and no query; the key has no line break;
//  numbers in bounds. Returns 0, or -1 with a message naming the variable.
int cm_embed_config_check (const cm_embed_config_t *config, char *err, size_t errlen);

//  Create an embedder (strings copied), or NULL with the reason in err when
//  config does not pass cm_embed_config_check. Caller owns it.
cm_embedder_t *cm_embedder_new (const cm_embed_config_t *config, char *err,
                                size_t errlen);
//  Destroy; NULL-safe; nulls the pointer.
void cm_embedder_destroy (cm_embedder_t **self_p);

//  "builtin", or the openai model's name ("openai" when none is set): the
//  "model" of an embeddings answer. Borrowed.
const char *cm_embedder_name (cm_embedder_t *self);
//  The provider: "builtin" or "openai". Static.
const char *cm_embedder_provider (cm_embedder_t *self);
//  Numbers per vector: CM_EMBED_BUILTIN_DIM for builtin; for openai 0 until
//  the first answer, then what it said.
size_t cm_embedder_dim (cm_embedder_t *self);

//  Embed count texts (NUL-terminated UTF-8). On CM_EMBED_OK, *vectors_p is
//  a new array of count * *dim_p floats (text i at i * dim), L2-normalised,
//  the caller's to free (NULL when count is 0). Otherwise *vectors_p is
//  NULL and err says why. cancelled (may be NULL) is asked between batches
//  and, during a request, every few milliseconds; arg is its argument.
cm_embed_status_t cm_embed (cm_embedder_t *self, const char *const *texts, size_t count,
                            float **vectors_p, size_t *dim_p, bool (*cancelled) (void *),
                            void *arg, char *err, size_t errlen);

//  The builtin embedding of size bytes of text into vector[dim] (dim >= 1;
//  CM_EMBED_BUILTIN_DIM is what the builtin provider uses), L2-normalised.
//  Pure and thread-safe: no embedder needed.
void cm_embed_builtin (const char *text, size_t size, float *vector, size_t dim);

//  Cosine similarity of two vectors of dim floats (0 when one is zero).
float cm_embed_cosine (const float *a, const float *b, size_t dim);

//  Human name of a status ("ok", "upstream failure", ...). Static.
const char *cm_embed_status_name (cm_embed_status_t status);

#endif
