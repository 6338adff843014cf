/*
 * kernel-fpu: in-kernel FP/SIMD use. Hashes a buffer with SHA-256 through
 * AF_ALG N times; the kernel picks its fastest sha256, which runs between
 * kernel_fpu_begin() and kernel_fpu_end() on x86_64 (the SSSE3/AVX/AVX2
 * code of sha256-ssse3.ko) and between kernel_neon_begin() and
 * kernel_neon_end() on arm64 (the NEON/crypto-extension code of
 * sha2-ce.ko). Each digest is checked against the known SHA-256 of the
 * input, and the caller's own registers are checked across every read().
 *
 * usage: kernel-fpu [N]    (default 50 hashes)
 * prints: kernel-fpu: hashes=N ok=N mismatches=0 driver=NAME
 */
#include <linux/if_alg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fpcheck.h"

#ifndef AF_ALG
#define AF_ALG 38
#endif

/* SHA-256 of 4096 bytes of 0x61 ('a'), computed independently. */
static const uint8_t expected[32] = {
    0xc9, 0x3e, 0xee, 0x2d, 0x0d, 0xb0, 0x2f, 0x10, 0xac, 0xc7, 0x46, 0x0d, 0x95, 0x76, 0xe1, 0x22,
    0xdc, 0xf8, 0xcd, 0x53, 0xc4, 0xbf, 0x8d, 0xfc, 0xae, 0x1b, 0x3e, 0x74, 0xeb, 0xcf, 0xff, 0x5a,
};

static void driver_name(char *out, size_t len)
{
    /* The driver serving "sha256" at the highest priority, from /proc/crypto. */
    FILE *f = fopen("/proc/crypto", "r");
    char line[256], name[64] = "", driver[64] = "";
    int best = -1, prio;

    snprintf(out, len, "unknown");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "name : %63s", name) == 1)
            continue;
        if (sscanf(line, "driver : %63s", driver) == 1)
            continue;
        if (sscanf(line, "priority : %d", &prio) == 1 && !strcmp(name, "sha256") && prio > best) {
            best = prio;
            snprintf(out, len, "%s", driver);
        }
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 0) : 50;
    struct sockaddr_alg sa = { .salg_family = AF_ALG, .salg_type = "hash", .salg_name = "sha256" };
    static uint8_t buf[4096];
    uint8_t digest[32];
    struct fp_file in, out;
    long ok = 0, mismatches = 0;
    char driver[64];

    memset(buf, 'a', sizeof(buf));
    int tfm = socket(AF_ALG, SOCK_SEQPACKET, 0);
    if (tfm < 0 || bind(tfm, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("kernel-fpu: AF_ALG sha256");
        return 1;
    }
    fp_pattern(&in, 5);
    for (long i = 0; i < n; i++) {
        int op = accept(tfm, NULL, 0);
        if (op < 0 || write(op, buf, sizeof(buf)) != (ssize_t)sizeof(buf)) {
            perror("kernel-fpu: hash");
            return 1;
        }
        long got = syscall3_checked(SYS_read, op, (long)digest, sizeof(digest), &in, &out);
        if (!fp_equal(&in, &out))
            mismatches++;
        if (got == (long)sizeof(digest) && !memcmp(digest, expected, sizeof(digest)))
            ok++;
        close(op);
    }
    driver_name(driver, sizeof(driver));
    printf("kernel-fpu: hashes=%ld ok=%ld mismatches=%ld driver=%s\n", n, ok, mismatches, driver);
    return (ok == n && mismatches == 0) ? 0 : 1;
}
