/* Reference for bench/exits.py: the smallest C KVM loop that runs a flat
 * real-mode image at 0 and answers every port exit, as a VMM with no
 * framework would. Prints "<exits> <nanoseconds>" for the run to HLT. */
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

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s IMAGE\n", argv[0]); return 2; }
    const char *path = getenv("VMCORE_KVM_PATH") ? getenv("VMCORE_KVM_PATH") : "/dev/kvm";
    int kvm = open(path, O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("open kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    size_t size = 0x1000;
    uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    FILE *f = fopen(argv[1], "rb");
    if (!f) die("image");
    fread(mem, 1, size, f);
    fclose(f);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (uint64_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct kvm_sregs sregs;
    ioctl(vcpu, KVM_GET_SREGS, &sregs);
    sregs.cs.base = 0; sregs.cs.selector = 0;
    ioctl(vcpu, KVM_SET_SREGS, &sregs);
    struct kvm_regs regs = {.rip = 0, .rflags = 2};
    ioctl(vcpu, KVM_SET_REGS, &regs);

    volatile uint32_t sink = 0;
    uint64_t exits = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_IO) {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_OUT) sink = *data;
            else *data = 0x5a;
            exits++;
        } else if (run->exit_reason == KVM_EXIT_HLT) {
            break;
        } else {
            fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("%llu %lld\n", (unsigned long long)exits, ns);
    (void)sink;
    return 0;
}
