/* Reference for bench/exits.py: the smallest C KVM loop that runs a flat
 * real-mode image at 0 (4 KiB of RAM) and answers every port and MMIO exit, as
 * a VMM with no framework would: writes are kept in a sink, reads answer 0x5a.
 *
 *   kvm_loop IMAGE                      every access exits
 *   kvm_loop IMAGE pio PORT             writes to PORT are coalesced (KVM_CAP_COALESCED_PIO)
 *   kvm_loop IMAGE mmio ADDR            writes to the 8 bytes at ADDR are coalesced
 *
 * With a coalesced zone the ring is drained (each entry counted as an access)
 * before every exit is handled, as vmcore does. Prints "<accesses> <ns>" for the
 * run to HLT. */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

static volatile uint64_t sink;

int main(int argc, char **argv) {
    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: %s IMAGE [pio PORT | mmio ADDR]\n", argv[0]);
        return 2;
    }
    const char *path = getenv("VMCORE_KVM_PATH") ? getenv("VMCORE_KVM_PATH") : "/dev/kvm";
    int kvm = open(path, O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("open kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    size_t size = 0x1000;
    uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    FILE *f = fopen(argv[1], "rb");
    if (!f) die("image");
    if (fread(mem, 1, size, f) == 0) die("image is empty");
    fclose(f);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (uint64_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

    struct kvm_coalesced_mmio_ring *ring = NULL;
    unsigned ring_max = 0;
    int page = 0; /* where the ring sits in the vcpu mapping, in pages */
    if (argc == 4) {
        page = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_COALESCED_MMIO);
        if (page <= 0) { fprintf(stderr, "no coalesced MMIO\n"); return 1; }
        struct kvm_coalesced_mmio_zone zone = {.addr = strtoull(argv[3], NULL, 0), .size = 8};
        if (strcmp(argv[2], "pio") == 0) { zone.pio = 1; zone.size = 1; }
        if (ioctl(vm, KVM_REGISTER_COALESCED_MMIO, &zone) < 0) die("KVM_REGISTER_COALESCED_MMIO");
        ring_max = (getpagesize() - sizeof(struct kvm_coalesced_mmio_ring)) / sizeof(struct kvm_coalesced_mmio);
    }

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    if (page) ring = (void *)((uint8_t *)run + (size_t)page * getpagesize());
    struct kvm_sregs sregs;
    ioctl(vcpu, KVM_GET_SREGS, &sregs);
    sregs.cs.base = 0; sregs.cs.selector = 0;
    sregs.ds.base = 0; sregs.ds.selector = 0;
    ioctl(vcpu, KVM_SET_SREGS, &sregs);
    struct kvm_regs regs = {.rip = 0, .rflags = 2};
    ioctl(vcpu, KVM_SET_REGS, &regs);

    uint64_t accesses = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (ring) {
            while (ring->first != ring->last) {
                struct kvm_coalesced_mmio *e = &ring->coalesced_mmio[ring->first];
                memcpy((void *)&sink, e->data, e->len);
                __sync_synchronize();
                ring->first = (ring->first + 1) % ring_max;
                accesses++;
            }
        }
        if (run->exit_reason == KVM_EXIT_IO) {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_OUT) sink = *data;
            else *data = 0x5a;
            accesses++;
        } else if (run->exit_reason == KVM_EXIT_MMIO) {
            if (run->mmio.is_write) memcpy((void *)&sink, run->mmio.data, run->mmio.len);
            else memset(run->mmio.data, 0x5a, run->mmio.len);
            accesses++;
        } else if (run->exit_reason == KVM_EXIT_HLT) {
            break;
        } else {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("%llu %lld\n", (unsigned long long)accesses, ns);
    return 0;
}
