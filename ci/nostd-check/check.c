/* Runs the no_std build of the fast path from C: a frame parses and its
   flow hash is the same both ways round; a bypass data path forwards it;
   offloaded, the next copy crosses the software eSwitch alone. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

uint64_t chaingate_flow_hash(const uint8_t frame[128], size_t len);
uint32_t chaingate_bypass(const uint8_t frame[128], size_t len);
uint32_t chaingate_offload(const uint8_t frame[128], size_t len);

static const uint8_t ip_header[20] = {
    0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2};

static void frame(uint8_t out[128], int reverse) {
    memset(out, 0, 128);
    out[12] = 0x08; /* IPv4 */
    memcpy(out + 14, ip_header, 20);
    if (reverse) { /* swap addresses */
        memcpy(out + 14 + 12, ip_header + 16, 4);
        memcpy(out + 14 + 16, ip_header + 12, 4);
    }
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2) sum += (out[14 + i] << 8) | out[15 + i];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    out[24] = (uint8_t)(~sum >> 8);
    out[25] = (uint8_t)~sum;
    uint8_t *tcp = out + 34; /* ports 1234 -> 80, data offset 5, SYN */
    tcp[0] = 0x04; tcp[1] = 0xd2; tcp[2] = 0; tcp[3] = 80; tcp[12] = 0x50; tcp[13] = 0x02;
    if (reverse) { tcp[0] = 0; tcp[1] = 80; tcp[2] = 0x04; tcp[3] = 0xd2; }
}

int main(void) {
    uint8_t there[128], back[128];
    frame(there, 0);
    frame(back, 1);
    uint64_t h1 = chaingate_flow_hash(there, 54), h2 = chaingate_flow_hash(back, 54);
    if (h1 == 0 || h1 != h2) {
        fprintf(stderr, "flow hash: %llx vs %llx\n", (unsigned long long)h1, (unsigned long long)h2);
        return 1;
    }
    if (chaingate_flow_hash(there, 20) != 0) {
        fprintf(stderr, "a truncated frame must not parse\n");
        return 1;
    }
    if (chaingate_bypass(there, 54) != 1) {
        fprintf(stderr, "the bypass data path did not forward the frame\n");
        return 1;
    }
    uint32_t rules = chaingate_offload(there, 54);
    if (rules == 0) {
        fprintf(stderr, "the offloaded session did not leave the eSwitch by itself\n");
        return 1;
    }
    printf("no_std fast path from C: flow hash %016llx both ways, bypass forwards, "
           "%u rules offloaded\n", (unsigned long long)h1, rules);
    return 0;
}
