/*  chat_settings.c: see chat_settings.h. */
#include "chat_settings.h"
#include "cm_log.h"
#include "chat_openai.h"

chat_provider_t *
chat_settings_provider (const chat_settings_t *settings, char *err, size_t errlen)
{
    assert (settings && settings->provider);
    if (!strcmp (settings->provider, "builtin"))
        return chat_provider_new_builtin (settings->token_delay_ms);
    if (strcmp (settings->provider, "openai")) {
        snprintf (err, errlen,
                  "LLM_PROVIDER: '%s' is not supported ('builtin' or 'openai')",
                  settings->provider);
        return NULL;
    }
    chat_openai_config_t config = {
        .base_url = settings->base_url,
        .api_key = settings->api_key,
        .model = settings->model,
        .connect_timeout_ms = settings->connect_timeout_ms,
        .first_token_timeout_ms = settings->first_token_timeout_ms,
        .timeout_ms = settings->timeout_ms,
    };
    chat_provider_t *provider = chat_openai_new (&config, err, errlen);
    if (provider) {
        char *endpoint = chat_openai_endpoint (settings->base_url);
        cm_info ("LLM provider openai: POST %s, model %s, limits: connect %lld ms, "
                 "first token %lld ms, total %lld ms",
                 endpoint, settings->model ? settings->model : "(workspace's)",
                 (long long) config.connect_timeout_ms,
                 (long long) config.first_token_timeout_ms,
                 (long long) config.timeout_ms);
        free (endpoint);
    }
    return provider;
}
