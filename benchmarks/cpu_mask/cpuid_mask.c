/* Make this CPU look like an older one to every library in the process, at native speed, so that
 * PyTorch, oneDNN and ONNX Runtime (which has no switch of its own) all pick the kernels they would
 * pick on such a machine. $CPUID_MASK_LEVEL (read once, at load) says which:
 *   avx2         AVX2 + FMA, no AVX-512, no VNNI, no bf16, no AMX (AMD Zen 2/3, Intel Haswell-Skylake client)
 *   avx512       AVX-512 F/CD/DQ/BW/VL, no VNNI, no bf16, no AMX (Intel Skylake-SP)
 *   avx512_vnni  the same plus AVX512_VNNI (Intel Cascade Lake)
 * Features the real CPU lacks are never added, only taken away.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, on CPUs and hypervisors that offer it:
 * "cpuid_fault" in /proc/cpuinfo) turns each CPUID instruction into a SIGSEGV. Our handler runs the
 * real CPUID, clears the feature bits above AVX2 and writes the answer into the faulting thread's
 * registers. Other SIGSEGVs go to whatever handler the program installed (sigaction and signal are
 * wrapped so that nobody replaces ours, e.g. Python's faulthandler).
 *
 * Limits: code that ran before this library's constructor (the dynamic loader's and glibc's own CPU
 * detection) saw the real CPU: the wrapper script sets GLIBC_TUNABLES for glibc. Instructions still
 * execute if a program uses them without asking CPUID. The setting is per thread, inherited by
 * threads and forked children, and reset by execve (LD_PRELOAD re-applies it in the new program).
 *
 * Build: gcc -O2 -shared -fPIC -o cpuid_mask.so cpuid_mask.c -ldl
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static sigaction_fn real_sigaction;
static struct sigaction program_handler; /* what the program thinks is its SIGSEGV handler */

static long set_cpuid_enabled(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, (unsigned long)enabled); }

static void native_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    set_cpuid_enabled(1);
    __asm__ volatile("cpuid" : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3]) : "a"(leaf), "c"(subleaf));
    set_cpuid_enabled(0);
}

enum level { AVX2, AVX512, AVX512_VNNI };
static enum level mask_level = AVX2;

/* The answer the chosen older CPU would give (bit numbers: Intel SDM vol. 2A, CPUID). */
static void masked_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
    native_cpuid(leaf, subleaf, out);
    if (leaf == 7 && subleaf == 0) {
        /* EBX: AVX512 IFMA, PF, ER; and at avx2 also F, DQ, CD, BW, VL */
        out[1] &= ~(BIT(21) | BIT(26) | BIT(27));
        if (mask_level == AVX2) out[1] &= ~(BIT(16) | BIT(17) | BIT(28) | BIT(30) | BIT(31));
        /* ECX: AVX512_VBMI, VBMI2, BITALG, VPOPCNTDQ; VNNI unless avx512_vnni */
        out[2] &= ~(BIT(1) | BIT(6) | BIT(12) | BIT(14));
        if (mask_level != AVX512_VNNI) out[2] &= ~BIT(11);
        /* EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8 */
        out[3] &= ~(BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25));
    } else if (leaf == 7 && subleaf == 1) {
        /* AVX-VNNI, AVX512_BF16, AMX-FP16, AVX-IFMA, ... and AVX-VNNI-INT8/16, AVX10, AMX-COMPLEX */
        out[0] = 0;
        out[3] = 0;
    } else if (leaf == 0xD && subleaf == 0) {
        /* XSAVE state components the OS may enable: AMX tiles (17-18); at avx2 also opmask/ZMM (5-7) */
        out[0] &= ~(BIT(17) | BIT(18));
        if (mask_level == AVX2) out[0] &= ~(BIT(5) | BIT(6) | BIT(7));
    } else if (leaf == 0x1D || leaf == 0x1E || leaf == 0x24) {
        /* AMX tile and TMUL information, AVX10 information */
        out[0] = out[1] = out[2] = out[3] = 0;
    }
}

static void forward_to_program(int signum, siginfo_t *info, void *context) {
    if (program_handler.sa_flags & SA_SIGINFO) {
        if (program_handler.sa_sigaction) {
            program_handler.sa_sigaction(signum, info, context);
            return;
        }
    } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
        program_handler.sa_handler(signum);
        return;
    }
    /* No handler of the program's: die the default way when the instruction faults again. */
    struct sigaction fallback;
    memset(&fallback, 0, sizeof fallback);
    fallback.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &fallback, NULL);
}

static void on_segv(int signum, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    const unsigned char *ip = (const unsigned char *)uc->uc_mcontext.gregs[REG_RIP];
    if (ip && ip[0] == 0x0F && ip[1] == 0xA2) {
        uint32_t out[4];
        masked_cpuid((uint32_t)uc->uc_mcontext.gregs[REG_RAX], (uint32_t)uc->uc_mcontext.gregs[REG_RCX], out);
        uc->uc_mcontext.gregs[REG_RAX] = out[0];
        uc->uc_mcontext.gregs[REG_RBX] = out[1];
        uc->uc_mcontext.gregs[REG_RCX] = out[2];
        uc->uc_mcontext.gregs[REG_RDX] = out[3];
        uc->uc_mcontext.gregs[REG_RIP] += 2;
        return;
    }
    forward_to_program(signum, info, context);
}

int sigaction(int signum, const struct sigaction *act, struct sigaction *oldact) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (signum != SIGSEGV) return real_sigaction(signum, act, oldact);
    if (oldact) *oldact = program_handler;
    if (act) program_handler = *act;
    return 0;
}

sighandler_t signal(int signum, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    sigemptyset(&act.sa_mask);
    act.sa_flags = SA_RESTART;
    if (sigaction(signum, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void install(void) {
    const char *level = getenv("CPUID_MASK_LEVEL");
    if (!level || !*level || strcmp(level, "avx2") == 0) {
        mask_level = AVX2;
    } else if (strcmp(level, "avx512") == 0) {
        mask_level = AVX512;
    } else if (strcmp(level, "avx512_vnni") == 0) {
        mask_level = AVX512_VNNI;
    } else {
        static const char message[] = "cpuid_mask: CPUID_MASK_LEVEL must be avx2, avx512 or avx512_vnni\n";
        if (write(2, message, sizeof message - 1) < 0) { /* nothing more to do */ }
        _exit(2);
    }
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    memset(&program_handler, 0, sizeof program_handler);
    program_handler.sa_handler = SIG_DFL;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_segv;
    sigemptyset(&ours.sa_mask);
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    if (real_sigaction(SIGSEGV, &ours, NULL) != 0 || set_cpuid_enabled(0) != 0) {
        /* Never let a run that was meant to be AVX2-only pass silently as the real CPU. */
        static const char message[] =
            "cpuid_mask: CPUID faulting is not available here (no cpuid_fault in /proc/cpuinfo?); refusing to run unmasked\n";
        if (write(2, message, sizeof message - 1) < 0) { /* nothing more to do */ }
        _exit(97);
    }
}
