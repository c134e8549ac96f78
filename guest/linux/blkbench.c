/*
 * blkbench: block-device read throughput inside a Linux guest, for bench/virtio.py.
 *
 *   blkbench DEVICE seq MIB        read MIB MiB from the start in 1 MiB reads
 *   blkbench DEVICE rand COUNT     COUNT reads of 4 KiB at random 4 KiB-aligned offsets
 *
 * O_DIRECT, so every read reaches the device (no page cache); timed with CLOCK_MONOTONIC.
 * Prints one line: "blkbench: MODE BYTES bytes in SECONDS s = MBPS MB/s" (MB = 10^6 bytes).
 * Built static (gcc -static -O2) by scripts/fetch-linux into the initramfs.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: blkbench DEVICE seq|rand N\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
        perror("BLKGETSIZE64");
        return 1;
    }
    long n = atol(argv[3]);
    int sequential = strcmp(argv[2], "seq") == 0;
    size_t block = sequential ? 1 << 20 : 4096;
    void *buffer;
    if (posix_memalign(&buffer, 4096, block) != 0)
        return 1;
    uint64_t blocks = size / block, done = 0;
    unsigned int seed = 12345;
    double start = now();
    for (long i = 0; i < n; i++) {
        uint64_t index = sequential ? (uint64_t)i % blocks : (uint64_t)rand_r(&seed) % blocks;
        ssize_t got = pread(fd, buffer, block, (off_t)(index * block));
        if (got != (ssize_t)block) {
            perror("pread");
            return 1;
        }
        done += (uint64_t)got;
    }
    double seconds = now() - start;
    printf("blkbench: %s %llu bytes in %.3f s = %.2f MB/s\n", argv[2], (unsigned long long)done, seconds,
           done / seconds / 1e6);
    return 0;
}
