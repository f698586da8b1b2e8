/*  fuzz_metrics.c: the supervisor's merge of the snapshots instances
    report, and the Prometheus text the gateway makes of it, on any JSON.
    Up to the first NUL is one snapshot, after it a second; a report is
    only known to be a JSON object (cm_metrics_msg). */
#include "fuzz.h"

#include "cm_metrics.h"

#include <string.h>

//  Look at every histogram series the way /api/metrics does.
static void
s_quantiles (const json_t *snapshot)
{
    const json_t *families = json_object_get (snapshot, "families");
    size_t i, j;
    const json_t *family, *series;
    json_array_foreach (families, i, family)
    {
        json_array_foreach (json_object_get (family, "series"), j, series)
        {
            cm_metrics_quantile (series, 0.5);
            cm_metrics_quantile (series, 0.99);
        }
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    const char *nul = memchr (data, 0, size);
    size_t first_size = nul ? (size_t) (nul - (const char *) data) : size;
    json_t *a = json_loadb ((const char *) data, first_size, 0, NULL);
    json_t *b = nul ? json_loadb (nul + 1, size - first_size - 1, 0, NULL) : NULL;
    json_t *aggregate = json_object ();
    const char *const labels[] = {"instance", "chatd-1", NULL};
    if (json_is_object (a)) {
        json_t *relabelled = cm_metrics_relabel (a, labels);
        cm_metrics_merge (aggregate, relabelled);
        json_decref (relabelled);
        cm_metrics_merge (aggregate, a);
    }
    if (json_is_object (b))
        cm_metrics_merge (aggregate, b);
    s_quantiles (aggregate);
    cm_metrics_sum (aggregate, "llmrt_requests_total", NULL);
    const char *const service[] = {"service", "chat", NULL};
    char *text = cm_metrics_prometheus (aggregate, service);
    FUZZ_CHECK (text);
    free (text);
    if (json_is_object (a)) {
        text = cm_metrics_prometheus (a, NULL);
        FUZZ_CHECK (text);
        free (text);
    }
    json_decref (aggregate);
    json_decref (a);
    json_decref (b);
    return 0;
}
