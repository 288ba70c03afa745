// A program that only exits: no libc, no dynamic loader. Its cost per exec is the kernel's
// exec and exit alone, to compare with a glibc program's start-up.
//
//   cc -O2 -nostdlib -static -o /tmp/exit0 benches/wrk/exit0.c
//   perf stat -r 500 /tmp/exit0
void _start(void) { __asm__ volatile("mov $60, %eax\n\txor %edi, %edi\n\tsyscall"); }
