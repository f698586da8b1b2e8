/*  cm_embed.c: see cm_embed.h.

    The builtin embedder counts its features in a small open-addressing
    table per call (so a word's count can be damped: 1 + ln n), then folds
    them into the vector. The openai provider runs each request as one
    curl easy handle under its own curl_multi, polled every S_POLL_MS, so
    the calling thread sees cancellation and the time limit between reads;
    libcurl's progress callback can go a second without a call while the
    upstream is silent, too late for a caller that left. */
#include "cm_embed.h"
#include "cm_http.h"
#include "cm_log.h"
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>

//  Longest wait inside curl before we look at cancellation and the clock.
#define S_POLL_MS 10
//  Largest answer we read (2048 texts of 3072 dimensions is ~130 MB).
#define S_MAX_BODY (256u << 20)
//  The upstream's own error message is shown up to this many bytes.
#define S_UPSTREAM_MESSAGE 160

//  Builtin: the weights of the feature kinds, and the longest word (bytes)
//  that gets its own features (a longer one is cut there).
#define S_WEIGHT_WORD    1.0f
#define S_WEIGHT_BIGRAM  0.25f
#define S_WEIGHT_TRIGRAM 0.4f
#define S_MAX_WORD       64
//  Builtin: the feature table of a short text is on the stack (16 KB);
//  the first one of a long text has at most S_MAX_START_SLOTS (then grows).
#define S_STACK_SLOTS     1024
#define S_MAX_START_SLOTS (1u << 16)
//  Builtin: each feature is added at this many (dimension, sign) places.
//  With one, a feature that collides with another collides whole; two
//  halve that noise's tail (on the search corpus, over 8 hash seeds, the
//  right document came first for 98% of queries instead of 94%).
#define S_PLACES 2

struct cm_embedder_s {
    bool builtin;               //  the builtin provider (else openai)
    char *name;                 //  "builtin", the model, or "openai"
    char *endpoint;             //  openai: {base_url}/embeddings
    char *model;                //  openai: model sent, or NULL
    char *auth;                 //  openai: "Authorization: Bearer <key>", or NULL
    size_t batch_size;          //  openai: texts per request
    int64_t timeout_ms;         //  openai: limit on one request
    int64_t connect_timeout_ms; //  openai: limit on connecting
    pthread_mutex_t lock;       //  guards dim
    size_t dim;                 //  numbers per vector (openai: 0 until known)
    cm_http_share_t *share;     //  openai: DNS cache and TLS sessions
};

//  One request to the openai provider in progress.
typedef struct {
    cm_embedder_t *self;            //  the embedder (borrowed)
    CURL *curl;                     //  the transfer
    char curl_err[CURL_ERROR_SIZE]; //  libcurl's message for a failed transfer
    char *body;                     //  the answer (NUL-terminated)
    size_t body_size;               //  bytes in body
    bool body_cut;                  //  more came than S_MAX_BODY
    bool ended;                     //  status decided by us, not by curl's outcome
    cm_embed_status_t status;       //  how it ended
    char *err;                      //  the caller's message buffer
    size_t errlen;                  //  its size
} s_call_t;

static cm_embed_status_t s_embed_batch (cm_embedder_t *self, const char *const *texts,
                                        size_t count, float **vectors_p, size_t *dim_p,
                                        bool (*cancelled) (void *), void *arg, char *err,
                                        size_t errlen);
static void s_normalise (float *vector, size_t dim);

void
cm_embed_config_defaults (cm_embed_config_t *config)
{
    assert (config);
    memset (config, 0, sizeof *config);
    config->provider = CM_EMBED_DEFAULT_PROVIDER;
    config->batch_size = CM_EMBED_DEFAULT_BATCH_SIZE;
    config->timeout_ms = CM_EMBED_DEFAULT_TIMEOUT_MS;
    config->connect_timeout_ms = CM_EMBED_DEFAULT_CONNECT_TIMEOUT_MS;
}

int
cm_embed_config_check (const cm_embed_config_t *config, char *err, size_t errlen)
{
    assert (config);
    const char *provider = config->provider ? config->provider : "";
    if (strcmp (provider, "builtin") && strcmp (provider, "openai")) {
        snprintf (err, errlen,
                  "EMBEDDING_PROVIDER: '%s' is not supported ('builtin' or 'openai')",
                  provider);
        return -1;
    }
    if (!strcmp (provider, "builtin"))
        return 0; //  the openai settings do not matter
    if (cm_http_check_base_url (config->base_url, "EMBEDDING_BASE_URL",
                                "EMBEDDING_PROVIDER=openai", err, errlen))
        return -1;
    if (config->api_key && strpbrk (config->api_key, "\r\n")) {
        snprintf (err, errlen, "EMBEDDING_API_KEY: contains a line break");
        return -1;
    }
    if (config->model && strpbrk (config->model, "\r\n")) {
        snprintf (err, errlen, "EMBEDDING_MODEL: contains a line break");
        return -1;
    }
    if (config->batch_size < 1 || config->batch_size > CM_EMBED_MAX_BATCH_SIZE) {
        snprintf (err, errlen, "EMBEDDING_BATCH_SIZE: must be 1..%d",
                  CM_EMBED_MAX_BATCH_SIZE);
        return -1;
    }
    if (config->timeout_ms <= 0 || config->connect_timeout_ms <= 0) {
        snprintf (err, errlen, "%s: must be positive",
                  config->timeout_ms <= 0 ? "EMBEDDING_TIMEOUT_MS"
                                          : "EMBEDDING_CONNECT_TIMEOUT_MS");
        return -1;
    }
    return 0;
}

cm_embedder_t *
cm_embedder_new (const cm_embed_config_t *config, char *err, size_t errlen)
{
    assert (config);
    if (cm_embed_config_check (config, err, errlen))
        return NULL;
    cm_embedder_t *self = cm_calloc (1, sizeof *self);
    pthread_mutex_init (&self->lock, NULL);
    if (!strcmp (config->provider, "builtin")) {
        self->builtin = true;
        self->name = cm_strdup ("builtin");
        self->dim = CM_EMBED_BUILTIN_DIM;
        return self;
    }
    self->share = cm_http_share_new ();
    if (!self->share) {
        snprintf (err, errlen, "libcurl could not be initialised");
        pthread_mutex_destroy (&self->lock);
        free (self);
        return NULL;
    }
    self->endpoint = cm_http_endpoint (config->base_url, "/embeddings");
    if (config->model && *config->model)
        self->model = cm_strdup (config->model);
    self->name = cm_strdup (self->model ? self->model : "openai");
    self->auth = cm_http_bearer (config->api_key);
    self->batch_size = (size_t) config->batch_size;
    self->timeout_ms = config->timeout_ms;
    self->connect_timeout_ms = config->connect_timeout_ms;
    return self;
}

void
cm_embedder_destroy (cm_embedder_t **self_p)
{
    assert (self_p);
    cm_embedder_t *self = *self_p;
    if (!self)
        return;
    cm_http_share_destroy (&self->share);
    pthread_mutex_destroy (&self->lock);
    free (self->name);
    free (self->endpoint);
    free (self->model);
    free (self->auth);
    free (self);
    *self_p = NULL;
}

const char *
cm_embedder_name (cm_embedder_t *self)
{
    assert (self);
    return self->name;
}

const char *
cm_embedder_provider (cm_embedder_t *self)
{
    assert (self);
    return self->builtin ? "builtin" : "openai";
}

size_t
cm_embedder_dim (cm_embedder_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->lock);
    size_t dim = self->dim;
    pthread_mutex_unlock (&self->lock);
    return dim;
}

cm_embed_status_t
cm_embed (cm_embedder_t *self, const char *const *texts, size_t count, float **vectors_p,
          size_t *dim_p, bool (*cancelled) (void *), void *arg, char *err, size_t errlen)
{
    assert (self);
    assert (texts || !count);
    assert (vectors_p);
    *vectors_p = NULL;
    if (err && errlen)
        *err = 0;
    if (self->builtin) {
        if (cancelled && cancelled (arg)) {
            if (err && errlen)
                snprintf (err, errlen, "The embedding request was cancelled");
            return CM_EMBED_CANCELLED;
        }
        float *vectors =
            count ? cm_malloc (count * CM_EMBED_BUILTIN_DIM * sizeof (float)) : NULL;
        for (size_t i = 0; i < count; i++) {
            assert (texts[i]);
            cm_embed_builtin (texts[i], strlen (texts[i]),
                              vectors + i * CM_EMBED_BUILTIN_DIM, CM_EMBED_BUILTIN_DIM);
        }
        *vectors_p = vectors;
        if (dim_p)
            *dim_p = CM_EMBED_BUILTIN_DIM;
        return CM_EMBED_OK;
    }
    //  openai: batch by batch; the first answer fixes the dimension.
    float *vectors = NULL;
    size_t dim = cm_embedder_dim (self);
    for (size_t done = 0; done < count;) {
        if (cancelled && cancelled (arg)) {
            if (err && errlen)
                snprintf (err, errlen, "The embedding request was cancelled");
            free (vectors);
            return CM_EMBED_CANCELLED;
        }
        size_t n = count - done < self->batch_size ? count - done : self->batch_size;
        float *batch = NULL;
        size_t batch_dim = 0;
        cm_embed_status_t status = s_embed_batch (
            self, texts + done, n, &batch, &batch_dim, cancelled, arg, err, errlen);
        if (status != CM_EMBED_OK) {
            free (vectors);
            return status;
        }
        if (!vectors) {
            dim = batch_dim;
            vectors = cm_malloc (count * dim * sizeof (float));
        }
        assert (batch_dim == dim); //  s_embed_batch holds every answer to it
        memcpy (vectors + done * dim, batch, n * dim * sizeof (float));
        free (batch);
        done += n;
    }
    *vectors_p = vectors;
    if (dim_p)
        *dim_p = dim;
    return CM_EMBED_OK;
}

float
cm_embed_cosine (const float *a, const float *b, size_t dim)
{
    assert (a && b);
    double dot = 0, na = 0, nb = 0;
    for (size_t i = 0; i < dim; i++) {
        dot += (double) a[i] * b[i];
        na += (double) a[i] * a[i];
        nb += (double) b[i] * b[i];
    }
    if (na <= 0 || nb <= 0)
        return 0;
    return (float) (dot / (sqrt (na) * sqrt (nb)));
}

const char *
cm_embed_status_name (cm_embed_status_t status)
{
    switch (status) {
        case CM_EMBED_OK:
            return "ok";
        case CM_EMBED_UPSTREAM:
            return "upstream failure";
        case CM_EMBED_REQUEST:
            return "request refused";
        case CM_EMBED_CANCELLED:
            return "cancelled";
    }
    return "unknown";
}

//  --- builtin ---------------------------------------------------------------------

//  Feature kinds: mixed into the hash so a word and a 3-gram never share
//  a key, and giving the weight.
typedef enum { S_WORD = 1, S_BIGRAM = 2, S_TRIGRAM = 3 } s_kind_t;

static const float s_weights[] = {0, S_WEIGHT_WORD, S_WEIGHT_BIGRAM, S_WEIGHT_TRIGRAM};

//  A feature's key and how often it came.
typedef struct {
    uint64_t key;   //  hash of the feature (0: empty slot)
    uint32_t count; //  occurrences
    uint32_t kind;  //  s_kind_t
} s_slot_t;

//  The features of one text: an open-addressing table, grown at half full.
typedef struct {
    s_slot_t *slots; //  capacity slots
    size_t capacity; //  a power of two
    size_t used;     //  slots taken
    bool heap;       //  slots is ours to free (it starts on the caller's stack)
} s_features_t;

//  splitmix64's finaliser: a cheap, good mix of 64 bits.
static inline uint64_t
s_mix (uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t
s_hash_bytes (const unsigned char *data, size_t size)
{
    uint64_t hash = 14695981039346656037ull; //  FNV-1a
    for (size_t i = 0; i < size; i++)
        hash = (hash ^ data[i]) * 1099511628211ull;
    return hash;
}

static void
s_features_add (s_features_t *features, uint64_t key, s_kind_t kind)
{
    key = s_mix (key ^ ((uint64_t) kind << 60)) | 1; //  never 0 (empty)
    if (features->used * 2 >= features->capacity) {
        s_slot_t *old = features->slots;
        size_t old_capacity = features->capacity;
        features->capacity *= 2;
        features->slots = cm_calloc (features->capacity, sizeof (s_slot_t));
        size_t mask = features->capacity - 1;
        for (size_t i = 0; i < old_capacity; i++)
            if (old[i].key) {
                size_t at = old[i].key & mask;
                while (features->slots[at].key)
                    at = (at + 1) & mask;
                features->slots[at] = old[i];
            }
        if (features->heap)
            free (old);
        features->heap = true;
    }
    size_t mask = features->capacity - 1;
    size_t at = key & mask;
    while (features->slots[at].key && features->slots[at].key != key)
        at = (at + 1) & mask;
    if (!features->slots[at].key) {
        features->slots[at].key = key;
        features->slots[at].kind = kind;
        features->used++;
    }
    features->slots[at].count++;
}

//  Stop words: frequent English words that say nothing about a topic.
//  Their hashes live in a small table made once.
static const char *s_stop_words[] = {
    "a",      "about", "above",   "after", "again", "all",     "also",   "am",
    "an",     "and",   "any",     "are",   "as",    "at",      "be",     "been",
    "before", "being", "both",    "but",   "by",    "can",     "could",  "did",
    "do",     "does",  "doing",   "dont",  "down",  "during",  "each",   "few",
    "for",    "from",  "further", "had",   "has",   "have",    "having", "he",
    "her",    "here",  "hers",    "him",   "his",   "how",     "i",      "if",
    "in",     "into",  "is",      "isnt",  "it",    "its",     "just",   "me",
    "more",   "most",  "my",      "no",    "nor",   "not",     "now",    "of",
    "off",    "on",    "once",    "only",  "or",    "other",   "our",    "ours",
    "out",    "over",  "own",     "same",  "she",   "should",  "so",     "some",
    "such",   "than",  "that",    "the",   "their", "theirs",  "them",   "then",
    "there",  "these", "they",    "this",  "those", "through", "to",     "too",
    "under",  "until", "up",      "us",    "very",  "was",     "we",     "were",
    "what",   "when",  "where",   "which", "while", "who",     "whom",   "why",
    "will",   "with",  "would",   "you",   "your",  "yours",   "s",      "t",
    "many",   "much",  "may",     "might", "must",  "shall",
};
#define S_STOP_SLOTS 512
static uint64_t s_stop_table[S_STOP_SLOTS];
static pthread_once_t s_stop_once = PTHREAD_ONCE_INIT;

static void
s_stop_init (void)
{
    for (size_t i = 0; i < sizeof s_stop_words / sizeof *s_stop_words; i++) {
        const char *word = s_stop_words[i];
        uint64_t hash = s_hash_bytes ((const unsigned char *) word, strlen (word)) | 1;
        size_t at = hash & (S_STOP_SLOTS - 1);
        while (s_stop_table[at] && s_stop_table[at] != hash)
            at = (at + 1) & (S_STOP_SLOTS - 1);
        s_stop_table[at] = hash;
    }
}

static inline bool
s_is_stop (uint64_t hash)
{
    hash |= 1;
    size_t at = hash & (S_STOP_SLOTS - 1);
    while (s_stop_table[at]) {
        if (s_stop_table[at] == hash)
            return true;
        at = (at + 1) & (S_STOP_SLOTS - 1);
    }
    return false;
}

//  Byte classes for the scanner.
enum { S_SEP = 0, S_WORDCH = 1, S_APOS = 2, S_HIGH = 3 };
static const unsigned char s_class[256] = {
    ['0' ... '9'] = S_WORDCH, ['A' ... 'Z'] = S_WORDCH, ['a' ... 'z'] = S_WORDCH,
    ['\''] = S_APOS,          [0x80 ... 0xFF] = S_HIGH,
};

//  How a non-ASCII character at p (len bytes left, lead byte >= 0x80)
//  counts: as punctuation or space (S_SEP), as an apostrophe (S_APOS), or
//  as part of a word (S_WORDCH); *skip is its length in bytes.
static inline int
s_high_class (const unsigned char *p, size_t left, size_t *skip)
{
    unsigned char c = p[0];
    if (c == 0xC2 && left >= 2) { //  U+0080..U+00BF: NBSP, «», ¿, ©, °...
        *skip = 2;
        return S_SEP;
    }
    if (c == 0xC3 && left >= 2 && (p[1] == 0x97 || p[1] == 0xB7)) { //  × ÷
        *skip = 2;
        return S_SEP;
    }
    if (c == 0xE2 && left >= 3 && (p[1] == 0x80 || p[1] == 0x81)) {
        *skip = 3; //  U+2000..U+207F: spaces, dashes, quotes, bullets...
        return p[1] == 0x80 && (p[2] == 0x98 || p[2] == 0x99) ? S_APOS : S_SEP;
    }
    if (c == 0xE3 && left >= 3 && p[1] == 0x80) { //  U+3000..U+303F: CJK punctuation
        *skip = 3;
        return S_SEP;
    }
    *skip = 1; //  a byte of a letter (or of anything else): part of the word
    return S_WORDCH;
}

//  Take a plural 's' off (Harman's S-stemmer): -ies > -y, -es > -e, -s > -
//  (not -ss, -us, -aes, -ees, -oes, -eies, -aies); words of 4+ bytes.
static size_t
s_stem (unsigned char *word, size_t size)
{
    if (size < 4 || word[size - 1] != 's')
        return size;
    unsigned char a = word[size - 3], b = word[size - 2];
    if (a == 'i' && b == 'e' && word[size - 4] != 'e' && word[size - 4] != 'a') {
        word[size - 3] = 'y';
        return size - 2;
    }
    if (b == 'e' && (a == 'a' || a == 'e' || a == 'o'))
        return size;
    if (b == 'u' || b == 's')
        return size;
    return size - 1;
}

//  One word's features; prev is the hash of the word before (0: none).
static uint64_t
s_word (s_features_t *features, unsigned char *word, size_t size, uint64_t prev)
{
    uint64_t hash = s_hash_bytes (word, size);
    if (s_is_stop (hash))
        return prev; //  invisible: the words around it make a bigram
    size = s_stem (word, size);
    hash = s_hash_bytes (word, size);
    s_features_add (features, hash, S_WORD);
    if (prev)
        s_features_add (features, prev * 31 + hash, S_BIGRAM);
    //  3-grams of "^word$": ^ and $ as the bytes 1 and 2.
    uint32_t window = 1;
    for (size_t i = 0; i <= size; i++) {
        window = ((window << 8) | (i < size ? word[i] : 2)) & 0xFFFFFF;
        if (i >= 1)
            s_features_add (features, window, S_TRIGRAM);
    }
    return hash;
}

void
cm_embed_builtin (const char *text, size_t size, float *vector, size_t dim)
{
    assert (text || !size);
    assert (vector && dim >= 1);
    pthread_once (&s_stop_once, s_stop_init);
    memset (vector, 0, dim * sizeof (float));
    //  A text has at most about one feature per byte: size the table for
    //  that at once (half full), on the stack for a short text, so it
    //  rarely grows.
    s_slot_t initial[S_STACK_SLOTS];
    size_t capacity = 64;
    while (capacity < 2 * size && capacity < S_MAX_START_SLOTS)
        capacity *= 2;
    s_features_t features = {initial, capacity, 0, false};
    if (capacity > S_STACK_SLOTS) {
        features.slots = cm_calloc (capacity, sizeof (s_slot_t));
        features.heap = true;
    } else
        memset (initial, 0, capacity * sizeof (s_slot_t));

    const unsigned char *p = (const unsigned char *) text;
    const unsigned char *end = p + size;
    unsigned char word[S_MAX_WORD];
    size_t length = 0;    //  bytes in word
    bool in_word = false; //  inside a word (its bytes past S_MAX_WORD are dropped)
    uint64_t prev = 0;    //  the last word's hash, for bigrams
    while (p < end) {
        unsigned char c = *p;
        int kind = s_class[c];
        size_t skip = 1;
        if (kind == S_HIGH)
            kind = s_high_class (p, (size_t) (end - p), &skip);
        if (kind == S_WORDCH) {
            in_word = true;
            for (size_t i = 0; i < skip; i++, p++) {
                unsigned char b = *p;
                if (b >= 'A' && b <= 'Z')
                    b += 32;
                else if (i == 1 && c == 0xC3 && b >= 0x80 && b <= 0x9E)
                    b += 0x20; //  Latin-1 capitals: À..Þ to à..þ
                if (length < S_MAX_WORD)
                    word[length++] = b;
            }
            continue;
        }
        p += skip;
        if (kind == S_APOS && in_word)
            continue; //  "don't" is "dont"
        if (in_word) {
            prev = s_word (&features, word, length, prev);
            length = 0;
            in_word = false;
        }
    }
    if (in_word)
        s_word (&features, word, length, prev);

    //  Fold into the vector: each place's dimension and sign from a fresh
    //  mix of the key (whose low bits placed it in the table).
    for (size_t i = 0; i < features.capacity; i++) {
        const s_slot_t *slot = &features.slots[i];
        if (!slot->key)
            continue;
        float value = s_weights[slot->kind] *
                      (slot->count == 1 ? 1.0f : 1.0f + logf ((float) slot->count));
        uint64_t h = slot->key;
        for (int k = 0; k < S_PLACES; k++) {
            h = s_mix (h + 0x9e3779b97f4a7c15ull);
            size_t at = (size_t) (((h >> 32) * (uint64_t) dim) >> 32);
            vector[at] += (h & 1) ? value : -value;
        }
    }
    if (features.heap)
        free (features.slots);
    s_normalise (vector, dim);
}

static void
s_normalise (float *vector, size_t dim)
{
    double sum = 0;
    for (size_t i = 0; i < dim; i++)
        sum += (double) vector[i] * vector[i];
    if (sum <= 0)
        return;
    float scale = (float) (1.0 / sqrt (sum));
    for (size_t i = 0; i < dim; i++)
        vector[i] *= scale;
}

//  --- openai ----------------------------------------------------------------------

static void s_end (s_call_t *call, cm_embed_status_t status, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

//  Decide how the request ends, with the message.
static void
s_end (s_call_t *call, cm_embed_status_t status, const char *format, ...)
{
    if (call->ended)
        return;
    call->ended = true;
    call->status = status;
    if (format && call->err && call->errlen) {
        va_list args;
        va_start (args, format);
        vsnprintf (call->err, call->errlen, format, args);
        va_end (args);
    }
}

//  Copy text into out for a message: one line, at most S_UPSTREAM_MESSAGE
//  bytes, control bytes as spaces, cut at a character boundary.
static void
s_clean (const char *text, size_t size, char *out, size_t outlen)
{
    size_t limit = outlen ? outlen - 1 : 0;
    if (limit > S_UPSTREAM_MESSAGE)
        limit = S_UPSTREAM_MESSAGE;
    if (size > limit) {
        size = limit;
        while (size && ((unsigned char) text[size] & 0xC0) == 0x80)
            size--; //  not inside a UTF-8 character
    }
    for (size_t i = 0; i < size; i++)
        out[i] = (unsigned char) text[i] < 0x20 ? ' ' : text[i];
    if (outlen)
        out[size] = 0;
}

//  The upstream's message in an error body: error.message, error (a
//  string), message, or the start of the body.
static void
s_body_message (s_call_t *call, char *out, size_t outlen)
{
    json_t *body = call->body ? json_loadb (call->body, call->body_size, 0, NULL) : NULL;
    json_t *error = json_object_get (body, "error");
    json_t *message = json_is_object (error)   ? json_object_get (error, "message")
                      : json_is_string (error) ? error
                                               : json_object_get (body, "message");
    if (json_is_string (message))
        s_clean (json_string_value (message), json_string_length (message), out, outlen);
    else if (call->body_size)
        s_clean (call->body, call->body_size, out, outlen);
    else
        snprintf (out, outlen, "(no message)");
    json_decref (body);
}

static size_t
s_on_data (char *data, size_t size, size_t nmemb, void *arg)
{
    s_call_t *call = (s_call_t *) arg;
    size_t n = size * nmemb;
    if (call->body_size + n > S_MAX_BODY) {
        call->body_cut = true;
        return 0; //  abort: no embeddings answer is this long
    }
    call->body = cm_realloc (call->body, call->body_size + n + 1);
    memcpy (call->body + call->body_size, data, n);
    call->body_size += n;
    call->body[call->body_size] = 0;
    return n;
}

//  A non-2xx answer: classify by status for the breaker.
static void
s_conclude_http_error (s_call_t *call, long status)
{
    char message[S_UPSTREAM_MESSAGE + 8];
    s_body_message (call, message, sizeof message);
    char text[S_UPSTREAM_MESSAGE + 160];
    cm_http_fault_t fault =
        cm_http_describe_status (status, message, "The embedding provider",
                                 "EMBEDDING_API_KEY", text, sizeof text);
    s_end (call, fault == CM_HTTP_REQUEST ? CM_EMBED_REQUEST : CM_EMBED_UPSTREAM, "%s",
           text);
}

//  A 2xx answer: count vectors of one dimension, put in index order.
static void
s_conclude_json (s_call_t *call, size_t count, float **vectors_p, size_t *dim_p)
{
    cm_embedder_t *self = call->self;
    json_t *body = json_loadb (call->body ? call->body : "", call->body_size, 0, NULL);
    json_t *data = json_object_get (body, "data");
    json_t *error = json_object_get (body, "error");
    float *vectors = NULL;
    bool *seen = NULL;
    if (error && !json_is_null (error)) {
        char message[S_UPSTREAM_MESSAGE + 8];
        s_body_message (call, message, sizeof message);
        s_end (call, CM_EMBED_UPSTREAM, "The embedding provider reported an error: %s",
               message);
        goto cleanup;
    }
    if (!json_is_array (data) || json_array_size (data) != count) {
        s_end (call, CM_EMBED_UPSTREAM,
               "The embedding provider sent a malformed answer: %s",
               !body                   ? "not JSON"
               : !json_is_array (data) ? "no data array"
                                       : "not one embedding per input");
        goto cleanup;
    }
    size_t dim =
        json_array_size (json_object_get (json_array_get (data, 0), "embedding"));
    if (!dim) {
        s_end (call, CM_EMBED_UPSTREAM,
               "The embedding provider sent a malformed answer: an empty embedding");
        goto cleanup;
    }
    pthread_mutex_lock (&self->lock);
    size_t known = self->dim;
    if (!known)
        self->dim = dim;
    pthread_mutex_unlock (&self->lock);
    if (known && known != dim) {
        s_end (call, CM_EMBED_UPSTREAM,
               "The embedding provider changed its dimension from %zu to %zu (another "
               "model behind EMBEDDING_BASE_URL?)",
               known, dim);
        goto cleanup;
    }
    vectors = cm_malloc (count * dim * sizeof (float));
    seen = cm_calloc (count, sizeof (bool));
    for (size_t i = 0; i < count; i++) {
        json_t *item = json_array_get (data, i);
        json_t *index = json_object_get (item, "index");
        json_t *embedding = json_object_get (item, "embedding");
        //  Without an index, the position says it (some servers omit it).
        json_int_t at = index
                            ? (json_is_integer (index) ? json_integer_value (index) : -1)
                            : (json_int_t) i;
        if (at < 0 || (size_t) at >= count || seen[at]) {
            s_end (call, CM_EMBED_UPSTREAM,
                   "The embedding provider sent a malformed answer: a bad or repeated "
                   "index");
            goto cleanup;
        }
        seen[at] = true;
        if (!json_is_array (embedding) || json_array_size (embedding) != dim) {
            s_end (call, CM_EMBED_UPSTREAM,
                   "The embedding provider sent a malformed answer: embeddings of "
                   "different lengths (%zu and %zu)",
                   dim, json_array_size (embedding));
            goto cleanup;
        }
        float *vector = vectors + (size_t) at * dim;
        for (size_t j = 0; j < dim; j++) {
            json_t *number = json_array_get (embedding, j);
            if (!json_is_number (number)) {
                s_end (call, CM_EMBED_UPSTREAM,
                       "The embedding provider sent a malformed answer: an embedding "
                       "holds something other than numbers");
                goto cleanup;
            }
            vector[j] = (float) json_number_value (number);
        }
        s_normalise (vector, dim);
    }
    *vectors_p = vectors;
    *dim_p = dim;
    vectors = NULL;
    s_end (call, CM_EMBED_OK, NULL);
cleanup:
    free (vectors);
    free (seen);
    json_decref (body);
}

//  The transfer ended by itself with code: what did it bring?
static void
s_conclude (s_call_t *call, CURLcode code, size_t count, float **vectors_p, size_t *dim_p)
{
    if (code == CURLE_WRITE_ERROR && call->body_cut) {
        s_end (call, CM_EMBED_UPSTREAM,
               "The embedding provider sent a malformed answer: longer than %u bytes",
               S_MAX_BODY);
        return;
    }
    if (code != CURLE_OK) {
        char text[CURL_ERROR_SIZE + 256];
        cm_http_describe_failure (call->curl, code, call->curl_err,
                                  "The embedding provider",
                                  call->self->connect_timeout_ms,
                                  "EMBEDDING_CONNECT_TIMEOUT_MS", text, sizeof text);
        s_end (call, CM_EMBED_UPSTREAM, "%s", text);
        return;
    }
    long status = 0;
    curl_easy_getinfo (call->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || status >= 300)
        s_conclude_http_error (call, status);
    else
        s_conclude_json (call, count, vectors_p, dim_p);
}

//  What s_poll needs to know between reads.
typedef struct {
    s_call_t *call;             //  the request
    bool (*cancelled) (void *); //  the caller's cancel callback, or NULL
    void *arg;                  //  its argument
    int64_t started;            //  when the transfer started (cm_clock_mono_ms)
} s_watch_t;

//  Between reads: has the caller left, or the time limit passed?
static int
s_poll (void *arg)
{
    s_watch_t *watch = (s_watch_t *) arg;
    s_call_t *call = watch->call;
    if (watch->cancelled && watch->cancelled (watch->arg)) {
        s_end (call, CM_EMBED_CANCELLED, "The embedding request was cancelled");
        return 1;
    }
    if (cm_clock_mono_ms () - watch->started >= call->self->timeout_ms) {
        s_end (call, CM_EMBED_UPSTREAM,
               "The embedding provider did not answer within %lld ms "
               "(EMBEDDING_TIMEOUT_MS)",
               (long long) call->self->timeout_ms);
        return 1;
    }
    return 0;
}

//  Run the transfer to its end, watching cancellation and the time limit.
static CURLcode
s_perform (s_call_t *call, bool (*cancelled) (void *), void *arg)
{
    s_watch_t watch = {call, cancelled, arg, cm_clock_mono_ms ()};
    cm_http_outcome_t outcome;
    if (cm_http_perform (call->curl, S_POLL_MS, s_poll, &watch, &outcome) < 0)
        s_end (call, CM_EMBED_UPSTREAM, "libcurl failed: %s",
               curl_multi_strerror (outcome.multi));
    return outcome.code;
}

//  One request: count texts, one answer.
static cm_embed_status_t
s_embed_batch (cm_embedder_t *self, const char *const *texts, size_t count,
               float **vectors_p, size_t *dim_p, bool (*cancelled) (void *), void *arg,
               char *err, size_t errlen)
{
    s_call_t call = {.self = self, .err = err, .errlen = errlen};
    json_t *input = json_array ();
    for (size_t i = 0; i < count; i++) {
        assert (texts[i]);
        json_t *item = json_string (texts[i]);
        if (!item) {
            json_decref (input);
            s_end (&call, CM_EMBED_REQUEST, "Text %zu to embed is not valid UTF-8", i);
            return call.status;
        }
        json_array_append_new (input, item);
    }
    json_t *request = json_pack ("{s:o}", "input", input);
    if (self->model)
        json_object_set_new (request, "model", json_string (self->model));
    char *body = json_dumps (request, JSON_COMPACT);
    json_decref (request);

    struct curl_slist *headers = cm_http_json_headers (NULL, self->auth);
    CURL *curl = call.curl = cm_http_post_new (&(cm_http_post_t){
        .url = self->endpoint,
        .headers = headers,
        .body = body,
        .user_agent = "llmrt/" LLMRT_VERSION,
        .on_data = s_on_data,
        .arg = &call,
        .curl_err = call.curl_err,
        .connect_timeout_ms = self->connect_timeout_ms,
        .share = self->share,
    });

    CURLcode code = s_perform (&call, cancelled, arg);
    if (!call.ended)
        s_conclude (&call, code, count, vectors_p, dim_p);
    if (call.status == CM_EMBED_UPSTREAM || call.status == CM_EMBED_REQUEST)
        cm_debug ("embeddings %s: %s", self->endpoint, err ? err : "");
    curl_easy_cleanup (curl);
    curl_slist_free_all (headers);
    free (call.body);
    free (body);
    return call.status;
}
