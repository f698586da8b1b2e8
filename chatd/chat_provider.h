/*  chat_provider.h: the LLM provider interface of chatd, and its builtin.

    A provider turns a list of messages into a completion, either all at
    once (complete) or token by token (stream), and reports token metrics in
    the shape upstream AnythingLLM returns: prompt_tokens,
    completion_tokens, total_tokens, outputTps, duration (seconds).
    Providers are a vtable (chat_provider_ops_t) behind one opaque handle:
    "builtin" (here) and "openai", any OpenAI-compatible server over
    libcurl (chat_openai.h).

    "builtin" is llmrt's offline responder. It calls no model; it answers
    with a short text that says so, echoing and describing the user's last
    message. It is deterministic (the same messages always give the same
    text and token counts), which is what tests and benchmarks need.
    Streaming waits token_delay_ms before each token
    (BUILTIN_LLM_TOKEN_DELAY_MS) to imitate a model's pace; complete never
    waits, so a benchmark of the non-streaming route measures the runtime,
    not a sleep.

    Threading: one provider is shared by every handler thread; its calls may
    run concurrently (the builtin keeps no mutable state). */
#ifndef CHAT_PROVIDER_H_INCLUDED
#define CHAT_PROVIDER_H_INCLUDED

#include "cm_common.h"

typedef struct chat_provider_s chat_provider_t;

typedef enum { CHAT_ROLE_SYSTEM, CHAT_ROLE_USER, CHAT_ROLE_ASSISTANT } chat_role_t;

//  One message of the conversation (borrowed strings).
typedef struct {
    chat_role_t role;
    const char *content;
} chat_message_t;

//  Polled by providers that wait on a network, every few milliseconds, so
//  that a client that left (or a passed deadline) ends the call even while
//  the upstream sends nothing. True: stop now.
typedef bool (chat_cancelled_fn) (void *arg);

//  What to complete.
typedef struct {
    const chat_message_t *messages; //  system prompt, history, the user's message last
    size_t count;                   //  number of messages
    const char *model;              //  workspace's chatModel; NULL: provider default
    double temperature;             //  < 0: provider default
    chat_cancelled_fn *cancelled;   //  NULL: the call is never cancelled from outside
    void *cancel_arg;               //  argument of cancelled
} chat_request_t;

//  Upstream's performance metrics of one completion.
typedef struct {
    int64_t prompt_tokens;     //  tokens read
    int64_t completion_tokens; //  tokens produced (so far, when stopped)
    int64_t total_tokens;      //  the sum
    double duration;           //  seconds from call to last token
    double output_tps;         //  completion_tokens / duration (0 when duration is 0)
} chat_metrics_t;

//  What the token callback wants next.
typedef enum { CHAT_TOKEN_CONTINUE = 0, CHAT_TOKEN_STOP = 1 } chat_token_action_t;

//  Called once per token (token is not NUL-terminated; size bytes, valid
//  UTF-8). Return CHAT_TOKEN_STOP to end the call early (client gone).
typedef chat_token_action_t (chat_token_fn) (const char *token, size_t size, void *arg);

//  How a provider call ended. FAILED and REJECTED differ for the circuit
//  breaker: FAILED counts against the upstream, REJECTED (the request's own
//  fault) does not.
typedef enum {
    CHAT_PROVIDER_DONE = 0,      //  the whole completion was produced
    CHAT_PROVIDER_STOPPED = 1,   //  the callback said stop; metrics cover what was sent
    CHAT_PROVIDER_FAILED = -1,   //  the upstream failed (unreachable, 5xx, timeout, its
                                 //  credentials refused); reason in err
    CHAT_PROVIDER_REJECTED = -2, //  the upstream refused this request for its own
                                 //  fault (a 4xx such as "context too long"); reason
                                 //  in err, fit to show the client
} chat_provider_result_t;

//  The vtable a provider implements. state is the provider's own.
typedef struct {
    const char *name;
    //  The whole completion at once: DONE with *text_p a new string the
    //  caller frees, or FAILED / REJECTED with the reason in err, or
    //  STOPPED when request->cancelled said so (*text_p stays NULL).
    chat_provider_result_t (*complete) (void *state, const chat_request_t *request,
                                        char **text_p, chat_metrics_t *metrics, char *err,
                                        size_t errlen);
    //  Stream the completion, one on_token call per token.
    chat_provider_result_t (*stream) (void *state, const chat_request_t *request,
                                      chat_token_fn *on_token, void *arg,
                                      chat_metrics_t *metrics, char *err, size_t errlen);
    //  Free state (may be NULL).
    void (*destroy) (void *state);
} chat_provider_ops_t;

//  Wrap a vtable and its state (taken over). Caller owns the provider.
chat_provider_t *chat_provider_new (const chat_provider_ops_t *ops, void *state);
//  The builtin offline responder, pausing token_delay_ms before each
//  streamed token.
chat_provider_t *chat_provider_new_builtin (int64_t token_delay_ms);
//  Destroy; NULL-safe; nulls the pointer.
void chat_provider_destroy (chat_provider_t **self_p);

//  Provider name ("builtin"), borrowed.
const char *chat_provider_name (chat_provider_t *self);
//  See chat_provider_ops_t.complete. *text_p is set (NULL unless DONE);
//  metrics is always filled (zeros on failure).
chat_provider_result_t chat_provider_complete (chat_provider_t *self,
                                               const chat_request_t *request,
                                               char **text_p, chat_metrics_t *metrics,
                                               char *err, size_t errlen);
//  See chat_provider_ops_t.stream. metrics is always filled.
chat_provider_result_t chat_provider_stream (chat_provider_t *self,
                                             const chat_request_t *request,
                                             chat_token_fn *on_token, void *arg,
                                             chat_metrics_t *metrics, char *err,
                                             size_t errlen);

//  The builtin's tokenizer, shared so metrics count the same way: the
//  length of the next token at text (a run of non-blanks plus the blanks
//  after it), 0 at the end.
size_t chat_provider_token_length (const char *text);
//  Tokens in text by that rule.
int64_t chat_provider_count_tokens (const char *text);

#endif
