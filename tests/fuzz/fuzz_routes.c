/*  fuzz_routes.c: the gateway's route table on any method and path (the
    first byte picks a method, the rest up to a NUL is the path). */
#include "fuzz.h"

#include "gw_routes.h"

#include <string.h>

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    static const char *methods[] = {"GET",   "POST", "PUT",     "DELETE",
                                    "PATCH", "HEAD", "OPTIONS", ""};
    if (size < 1)
        return 0;
    const char *method = methods[data[0] % 8];
    char *path = malloc (size);
    memcpy (path, data + 1, size - 1);
    path[size - 1] = '\0';
    const gw_route_t *route = NULL;
    char allow[64];
    allow[0] = '\0';
    gw_route_result_t result =
        gw_routes_lookup (method, path, &route, allow, sizeof allow);
    if (result == GW_ROUTE_FOUND) {
        //  HEAD takes the GET route.
        FUZZ_CHECK (route &&
                    !strcmp (route->method, strcmp (method, "HEAD") ? method : "GET"));
        FUZZ_CHECK (!strncmp (path, "/api/", 5));
    } else if (result == GW_ROUTE_BAD_METHOD) {
        FUZZ_CHECK (allow[0] && !strstr (allow, method[0] ? method : "-"));
    } else
        FUZZ_CHECK (result == GW_ROUTE_NOT_FOUND);
    free (path);
    return 0;
}
