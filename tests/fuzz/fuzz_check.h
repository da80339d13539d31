/* What the fuzz targets assert beyond "no crash": CHECK(cond) aborts (libFuzzer then saves the
 * input) with the file, line, condition and the last tessera error. */
#ifndef TSR_TESTS_FUZZ_CHECK_H
#define TSR_TESTS_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "common/status.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK(%s) failed (last error: %s)\n", __FILE__, __LINE__,      \
                    #cond, tsr_last_error());                                                      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
