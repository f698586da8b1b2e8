/*  fuzz.h: what every fuzz target in tests/fuzz shares.

    A target defines LLVMFuzzerTestOneInput and checks the properties it
    can (a decoder's re-encoding is stable, a parser's output stays inside
    its input) with FUZZ_CHECK, which aborts, so that both libFuzzer and
    the corpus replay (replay.c, run by ctest) see a failure. Built with
    clang and -DLLMRT_FUZZ=ON the same source links libFuzzer instead of
    replay.c (scripts/fuzz.sh). */
#ifndef FUZZ_H_INCLUDED
#define FUZZ_H_INCLUDED

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf (stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
            abort ();                                                                    \
        }                                                                                \
    } while (0)

#endif
