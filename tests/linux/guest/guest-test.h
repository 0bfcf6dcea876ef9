/*
 * Shared by the two files of rhax-guest-test (rhax-guest-test.c: output, CPUID, MSRs, main;
 * platform.c: MMIO, timer, rep movs, RAM). See rhax-guest-test.c for what it is.
 */
#ifndef RHAX_GUEST_TEST_H
#define RHAX_GUEST_TEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* One result line "rhax-guest-test: NAME pass|fail DETAIL", counted for the verdict. */
void result(const char *name, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* An "rhax-guest-test: info ..." line, not counted. */
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void test_mmio(void);
void test_timer(void);
void test_rep_movs(void);
void test_mem(long want_mib, long touch_mib);
void test_mmio_movs(void);

/* The TSC, after earlier loads complete (in Bochs it counts emulated instructions). */
static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

#endif
