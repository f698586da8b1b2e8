/*  chat_settings.h: the LLM provider's settings (LLM_*), read the same way
    by every program that calls a model: chatd for chats, agentd for
    llmInstruction steps. One table fragment, one factory. */
#ifndef CHAT_SETTINGS_H_INCLUDED
#define CHAT_SETTINGS_H_INCLUDED

#include "cm_common.h"
#include "cm_config.h"
#include "chat_provider.h"

typedef struct {
    char *provider;                 //  LLM_PROVIDER: builtin | openai
    int64_t token_delay_ms;         //  builtin: pause before each streamed token
    char *base_url;                 //  openai: the server's base URL, with /v1
    char *api_key;                  //  openai: bearer token (NULL: none)
    char *model;                    //  openai: model when the workspace names none
    int64_t connect_timeout_ms;     //  openai: connection set-up limit
    int64_t first_token_timeout_ms; //  openai: call start to first token
    int64_t timeout_ms;             //  openai: whole call limit
} chat_settings_t;

//  The settings as cm_config table entries into the chat_settings_t member
//  `member` of `type` (cm_config_free frees the strings).
// clang-format off
#define CHAT_SETTINGS_CONF_ENTRIES(type, member)                                         \
    {"LLM_PROVIDER", CM_CONF_STR, "builtin", 0, 0, offsetof (type, member.provider),    \
     "LLM provider: 'builtin' (the offline responder) or 'openai' (any "                \
     "OpenAI-compatible server: OpenAI, Ollama, llama.cpp, vLLM)"},                     \
    {"LLM_BASE_URL", CM_CONF_STR, NULL, 0, 0, offsetof (type, member.base_url),         \
     "openai: the server's base URL including its version path, e.g. "                  \
     "http://127.0.0.1:11434/v1 (required with LLM_PROVIDER=openai)"},                  \
    {"LLM_API_KEY", CM_CONF_STR, NULL, 0, 0, offsetof (type, member.api_key),           \
     "openai: API key, sent as 'Authorization: Bearer'; unset: none"},                  \
    {"LLM_MODEL", CM_CONF_STR, NULL, 0, 0, offsetof (type, member.model),               \
     "openai: model when the workspace has no chatModel; unset: none sent"},            \
    {"LLM_CONNECT_TIMEOUT_MS", CM_CONF_INT, "10000", 1, 3600000,                        \
     offsetof (type, member.connect_timeout_ms),                                        \
     "openai: limit on connecting to the server (then the call fails)"},                \
    {"LLM_FIRST_TOKEN_TIMEOUT_MS", CM_CONF_INT, "60000", 1, 86400000,                   \
     offsetof (type, member.first_token_timeout_ms),                                    \
     "openai: limit from the call's start to the first token"},                         \
    {"LLM_TIMEOUT_MS", CM_CONF_INT, "300000", 1, 86400000,                              \
     offsetof (type, member.timeout_ms),                                                \
     "openai: limit on a whole call (the request's deadline, REQUEST_TIMEOUT_MS, also " \
     "ends it)"},                                                                       \
    {"BUILTIN_LLM_TOKEN_DELAY_MS", CM_CONF_INT, "0", 0, 60000,                          \
     offsetof (type, member.token_delay_ms),                                            \
     "builtin provider: pause before each streamed token (non-streaming chat never "    \
     "waits)"}
// clang-format on

//  The provider the settings name, logged; NULL with a message naming the
//  variable (an unknown LLM_PROVIDER, a missing or bad LLM_BASE_URL).
chat_provider_t *chat_settings_provider (const chat_settings_t *settings, char *err,
                                         size_t errlen);

#endif
