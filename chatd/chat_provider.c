/*  chat_provider.c: see chat_provider.h. */
#include "chat_provider.h"
#include <time.h>

//  Longest excerpt of the user's message the builtin quotes, in characters.
#define S_EXCERPT_CHARS 120

struct chat_provider_s {
    const chat_provider_ops_t *ops; //  the provider's functions
    void *state;                    //  the provider's own data (owned)
};

typedef struct {
    int64_t token_delay_ms; //  pause before each streamed token
} s_builtin_t;

static const chat_provider_ops_t s_builtin_ops;

chat_provider_t *
chat_provider_new (const chat_provider_ops_t *ops, void *state)
{
    assert (ops && ops->name && ops->complete && ops->stream);
    chat_provider_t *self = cm_calloc (1, sizeof *self);
    self->ops = ops;
    self->state = state;
    return self;
}

chat_provider_t *
chat_provider_new_builtin (int64_t token_delay_ms)
{
    assert (token_delay_ms >= 0);
    s_builtin_t *state = cm_calloc (1, sizeof *state);
    state->token_delay_ms = token_delay_ms;
    return chat_provider_new (&s_builtin_ops, state);
}

void
chat_provider_destroy (chat_provider_t **self_p)
{
    assert (self_p);
    chat_provider_t *self = *self_p;
    if (!self)
        return;
    if (self->ops->destroy)
        self->ops->destroy (self->state);
    free (self);
    *self_p = NULL;
}

const char *
chat_provider_name (chat_provider_t *self)
{
    assert (self);
    return self->ops->name;
}

chat_provider_result_t
chat_provider_complete (chat_provider_t *self, const chat_request_t *request,
                        char **text_p, chat_metrics_t *metrics, char *err, size_t errlen)
{
    assert (self && request && text_p && metrics);
    memset (metrics, 0, sizeof *metrics);
    *text_p = NULL;
    chat_provider_result_t result =
        self->ops->complete (self->state, request, text_p, metrics, err, errlen);
    //  A whole completion is DONE with text, or did not happen (STOPPED only
    //  when the request's cancelled hook said so).
    assert (result == CHAT_PROVIDER_DONE ? *text_p != NULL : *text_p == NULL);
    return result;
}

chat_provider_result_t
chat_provider_stream (chat_provider_t *self, const chat_request_t *request,
                      chat_token_fn *on_token, void *arg, chat_metrics_t *metrics,
                      char *err, size_t errlen)
{
    assert (self && request && on_token && metrics);
    memset (metrics, 0, sizeof *metrics);
    return self->ops->stream (self->state, request, on_token, arg, metrics, err, errlen);
}

static bool
s_blank (char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

size_t
chat_provider_token_length (const char *text)
{
    assert (text);
    size_t n = 0;
    while (text[n] && !s_blank (text[n]))
        n++;
    while (text[n] && s_blank (text[n]))
        n++;
    return n;
}

int64_t
chat_provider_count_tokens (const char *text)
{
    assert (text);
    //  One pass, as many as chat_provider_token_length would step through:
    //  a token starts at the first byte and wherever a blank is followed by
    //  a non-blank. (Every prompt's history is counted on every turn: the
    //  two-pass form was 5% of a builtin chat turn's CPU.)
    if (!*text)
        return 0;
    int64_t count = 1;
    bool blank = s_blank (*text);
    for (const char *p = text + 1; *p; p++) {
        bool now = s_blank (*p);
        count += blank && !now;
        blank = now;
    }
    return count;
}

//  --- the builtin offline responder ----------------------------------------------

static double
s_seconds (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void
s_finish_metrics (chat_metrics_t *metrics, const chat_request_t *request,
                  int64_t produced, double started)
{
    metrics->prompt_tokens = 0;
    for (size_t i = 0; i < request->count; i++)
        if (request->messages[i].content)
            metrics->prompt_tokens +=
                chat_provider_count_tokens (request->messages[i].content);
    metrics->completion_tokens = produced;
    metrics->total_tokens = metrics->prompt_tokens + produced;
    metrics->duration = s_seconds () - started;
    if (metrics->duration < 0)
        metrics->duration = 0;
    metrics->output_tps =
        metrics->duration > 0 ? (double) produced / metrics->duration : 0;
}

//  The builtin's whole answer: a function of the messages alone.
static char *
s_builtin_text (const chat_request_t *request)
{
    //  The last user message is the one to answer; the others are history.
    const char *message = "";
    size_t users = 0;
    for (size_t i = 0; i < request->count; i++)
        if (request->messages[i].role == CHAT_ROLE_USER && request->messages[i].content) {
            message = request->messages[i].content;
            users++;
        }
    size_t earlier = users ? users - 1 : 0;

    //  Describe the message: words, characters, a fingerprint (FNV-1a).
    size_t words = 0, chars = 0;
    uint32_t hash = 2166136261u;
    bool in_word = false;
    for (const unsigned char *p = (const unsigned char *) message; *p; p++) {
        if ((*p & 0xC0) != 0x80)
            chars++;
        bool blank = s_blank ((char) *p);
        if (!blank && !in_word)
            words++;
        in_word = !blank;
        hash = (hash ^ *p) * 16777619u;
    }

    //  An excerpt on one line, blanks collapsed, cut between characters.
    size_t size = strlen (message);
    char *excerpt = cm_malloc (size + 4);
    size_t len = 0, kept = 0;
    bool cut = false, space = false;
    for (const char *p = message; *p; p++) {
        if (s_blank (*p)) {
            space = len > 0;
            continue;
        }
        if ((*p & 0xC0) != 0x80) {
            if (kept == S_EXCERPT_CHARS) {
                cut = true;
                break;
            }
            kept++;
        }
        if (space)
            excerpt[len++] = ' ';
        space = false;
        excerpt[len++] = *p;
    }
    if (cut)
        memcpy (excerpt + len, "\xE2\x80\xA6", 3), len += 3; //  "..." as one character
    excerpt[len] = 0;

    const char *format =
        "This is llmrt's built-in offline responder: no language model was called, so "
        "this is not a real answer. You wrote %zu %s and %zu %s: \"%s\". Fingerprint "
        "%08x; "
        "%zu earlier %s in this conversation.";
    int need = snprintf (NULL, 0, format, words, words == 1 ? "word" : "words", chars,
                         chars == 1 ? "character" : "characters", excerpt, hash, earlier,
                         earlier == 1 ? "turn" : "turns");
    char *text = cm_malloc ((size_t) need + 1);
    snprintf (text, (size_t) need + 1, format, words, words == 1 ? "word" : "words",
              chars, chars == 1 ? "character" : "characters", excerpt, hash, earlier,
              earlier == 1 ? "turn" : "turns");
    free (excerpt);
    return text;
}

//  The builtin never fails.
static chat_provider_result_t
s_builtin_complete (void *state, const chat_request_t *request, char **text_p,
                    chat_metrics_t *metrics, char *err, size_t errlen)
{
    (void) state, (void) err, (void) errlen;
    double started = s_seconds ();
    *text_p = s_builtin_text (request);
    s_finish_metrics (metrics, request, chat_provider_count_tokens (*text_p), started);
    return CHAT_PROVIDER_DONE;
}

static chat_provider_result_t
s_builtin_stream (void *state, const chat_request_t *request, chat_token_fn *on_token,
                  void *arg, chat_metrics_t *metrics, char *err, size_t errlen)
{
    (void) err, (void) errlen;
    s_builtin_t *self = (s_builtin_t *) state;
    double started = s_seconds ();
    char *text = s_builtin_text (request);
    chat_provider_result_t result = CHAT_PROVIDER_DONE;
    int64_t produced = 0;
    const char *p = text;
    size_t n;
    while ((n = chat_provider_token_length (p)) > 0) {
        if (self->token_delay_ms > 0) {
            struct timespec pause = {(time_t) (self->token_delay_ms / 1000),
                                     (long) (self->token_delay_ms % 1000) * 1000000L};
            while (nanosleep (&pause, &pause) == -1)
                ;
        }
        //  A token the callback refuses was not delivered: not counted.
        if (on_token (p, n, arg) == CHAT_TOKEN_STOP) {
            result = CHAT_PROVIDER_STOPPED;
            break;
        }
        produced++;
        p += n;
    }
    s_finish_metrics (metrics, request, produced, started);
    free (text);
    return result;
}

static void
s_builtin_destroy (void *state)
{
    free (state);
}

static const chat_provider_ops_t s_builtin_ops = {
    "builtin",
    s_builtin_complete,
    s_builtin_stream,
    s_builtin_destroy,
};
