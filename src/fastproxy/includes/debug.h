/* Debug builds (FASTPROXY_DEBUG=1 at build time define FP_DEBUG=1): invariants of
 * the relay's state machine are checked, and a broken one stops the process at
 * once with the reason. In release builds the checks compile to nothing. */
#ifndef FASTPROXY_DEBUG_H
#define FASTPROXY_DEBUG_H
#include <stdio.h>
#include <stdlib.h>

#ifndef FP_DEBUG
#define FP_DEBUG 0
#endif

#define fp_check(cond, what)                                                      \
    do {                                                                          \
        if (FP_DEBUG && !(cond)) {                                                \
            fprintf(stderr, "fastproxy: relay invariant broken: %s\n", (what));   \
            abort();                                                              \
        }                                                                         \
    } while (0)
#endif
