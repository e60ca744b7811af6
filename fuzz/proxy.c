/* libFuzzer entry point for the PROXY header parser (relay/proxyproto.pxi), built
 * with AddressSanitizer: libFuzzer hands over exactly size bytes, so any read past
 * them is reported. Besides memory safety it checks the parser's contract. */
#include <stdint.h>
#include <stdlib.h>
#include "parsers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t need = 0;
    int rc = fuzz_proxy_parse(data, size, &need);
    if (rc > 0 && (size_t)rc > size)
        abort(); /* a header longer than the bytes it was read from */
    if (rc > 0 && (size_t)rc > fuzz_pp_max())
        abort();
    if (rc == 0 && (need <= size || need > fuzz_pp_max()))
        abort(); /* waiting for bytes that are there, or for more than is ever read */
    return 0;
}
