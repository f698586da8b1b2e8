/*  chat_openai.h: the "openai" LLM provider: any OpenAI-compatible server
    (OpenAI, Ollama, llama.cpp's llama-server, vLLM, LM Studio...).

    Every call, streaming or not, is one `POST {base_url}/chat/completions`
    with `stream: true` (and `stream_options.include_usage`), over libcurl.
    The server-sent events are parsed as they arrive (chat_sse): each
    `choices[0].delta.content` is handed to the token callback at once,
    `[DONE]` ends the answer, `usage` gives the token counts when the server
    sends it (otherwise they are counted by the builtin's rule). A server
    that ignores `stream` and answers one `chat.completion` JSON is
    understood too. complete() is the same call, collected.

    base_url is what the OpenAI client libraries call base_url: it includes
    the version path, e.g. `http://127.0.0.1:11434/v1` (Ollama),
    `http://127.0.0.1:8080/v1` (llama-server), `http://127.0.0.1:8000/v1`
    (vLLM), `https://api.openai.com/v1`. The model is the request's (the
    workspace's chatModel) or the configured default; the temperature is the
    request's (openAiTemp) or, when it has none, left to the server.

    Time limits, each ending the call as CHAT_PROVIDER_FAILED:
      connect_timeout_ms      TCP (and TLS) connection set up
      first_token_timeout_ms  from the call's start to the first token
      timeout_ms              the whole call
    The transfer runs under curl_multi, polled every few milliseconds, so
    request->cancelled (the client left, the deadline passed) aborts it
    within that time even while the upstream sends nothing: the upstream
    sees its connection closed. That ends the call as CHAT_PROVIDER_STOPPED.

    How a call ends, for the circuit breaker (docs/breaker.md):
      FAILED    cannot connect, a time limit passed, HTTP 5xx, 429, 401,
                403, 408, a malformed or truncated stream, an error event
      REJECTED  any other 4xx (400 "context too long", 404 "model not
                found", 413, 422...): the request's own fault
      STOPPED   request->cancelled said stop, or the token callback did
    The message in err names the cause and, for an HTTP error, the
    upstream's own message; it never contains the API key.

    Threading: one provider serves every handler thread; calls run
    concurrently, each with its own curl handles (DNS answers and TLS
    sessions are shared). */
#ifndef CHAT_OPENAI_H_INCLUDED
#define CHAT_OPENAI_H_INCLUDED

#include "chat_provider.h"

typedef struct {
    const char *base_url;       //  LLM_BASE_URL: http(s)://host[:port]/path, e.g. .../v1
    const char *api_key;        //  LLM_API_KEY, sent as a bearer token (NULL: none)
    const char *model;          //  LLM_MODEL, used when the request names none
                                //  (NULL: the request carries no model)
    int64_t connect_timeout_ms; //  LLM_CONNECT_TIMEOUT_MS (> 0)
    int64_t first_token_timeout_ms; //  LLM_FIRST_TOKEN_TIMEOUT_MS (> 0)
    int64_t timeout_ms;             //  LLM_TIMEOUT_MS (> 0)
} chat_openai_config_t;

//  Check a configuration: 0, or -1 with a message naming the variable
//  (LLM_BASE_URL missing, not http(s), no host, port 0, with a query...;
//  LLM_API_KEY with a line break; LLM_MODEL with a control character).
int chat_openai_config_check (const chat_openai_config_t *config, char *err,
                              size_t errlen);

//  The provider (strings copied), or NULL with the reason in err when the
//  configuration does not pass chat_openai_config_check. Caller owns it.
chat_provider_t *chat_openai_new (const chat_openai_config_t *config, char *err,
                                  size_t errlen);

//  The completions endpoint of a checked base URL: a new string the caller
//  frees ({base_url}/chat/completions, one slash between).
char *chat_openai_endpoint (const char *base_url);

#endif
