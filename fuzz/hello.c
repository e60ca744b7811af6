/* libFuzzer entry point for the ClientHello parser (relay/sni.pxi), built with
 * AddressSanitizer. The reassembly buffer is malloc'd at exactly SNI_MAX bytes, as
 * the relay's, so ASan sees any write or read past it too. Besides memory safety it
 * checks the parser's contract. */
#include <stdint.h>
#include <stdlib.h>
#include "parsers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t max = fuzz_sni_max(), name_len = 0, want = 0;
    uint8_t *hello = malloc(max), *name = NULL;
    int rc = fuzz_sni_parse(data, size, hello, &name, &name_len, &want);
    if (rc == 1 && (name < hello || name_len == 0 || name_len > 255 ||
                    name + name_len > hello + max))
        abort(); /* a server name outside the reassembled hello */
    if (rc == 0 && (want > max || (want <= size && size < max)))
        abort(); /* waiting for bytes that are there, or for more than is ever read */
    free(hello);
    return 0;
}
