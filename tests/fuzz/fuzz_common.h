/*
 * fuzz_common: helpers shared by the libFuzzer harnesses in tests/fuzz/.  A harness states the properties
 * a parser promises (bounds, round trips, refusals) and aborts through FUZZ_CHECK when one does not hold,
 * so that libFuzzer records the input as a crash just as it does for a sanitizer report.
 */
#ifndef PGLANE_FUZZ_COMMON_H
#define PGLANE_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Aborts with the broken property, its file and line: libFuzzer saves the input that got here. */
#define FUZZ_CHECK(cond, ...)                                                                          \
	do {                                                                                           \
		if (!(cond)) {                                                                         \
			fprintf(stderr, "%s:%d: property violated: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                                  \
			fputc('\n', stderr);                                                           \
			abort();                                                                       \
		}                                                                                      \
	} while (0)

/*
 * FUZZ_SKIPPED("tag"): true when FUZZ_SKIP (a comma-separated list in the environment) names tag.  Some
 * properties carry a tag, so that one can be left unenforced (fuzz.mk's default skips "log-controls") or
 * fuzzing can go on past a known bug until its fix lands:
 *   make fuzz FUZZ_SKIP=log-controls,startup-terminator
 */
static inline bool FUZZ_SKIPPED(const char *tag)
{
	static const char *skip;
	static bool read;
	size_t n = strlen(tag);

	if (!read) {
		skip = getenv("FUZZ_SKIP");
		read = true;
	}
	for (const char *p = skip; p && *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len == n && memcmp(p, tag, n) == 0)
			return true;
		p = end ? end + 1 : p + len;
	}
	return false;
}

/* FUZZ_NOTE(...): a line on stderr when FUZZ_VERBOSE is set, to see how far a replayed input gets. */
#define FUZZ_NOTE(...)                                   \
	do {                                             \
		if (getenv("FUZZ_VERBOSE")) {            \
			fprintf(stderr, "fuzz: " __VA_ARGS__); \
			fputc('\n', stderr);            \
		}                                        \
	} while (0)

/* A heap copy of exactly n bytes, so that AddressSanitizer sees any read past the input's end. */
static inline uint8_t *fuzz_dup(const uint8_t *data, size_t n)
{
	uint8_t *p = malloc(n ? n : 1);

	if (p == NULL)
		abort();
	if (n)
		memcpy(p, data, n);
	return p;
}

/* The bytes up to the first NUL (or all of them) as a NUL-terminated heap string, sized exactly. */
static inline char *fuzz_cstr(const uint8_t *data, size_t n)
{
	const uint8_t *nul = memchr(data, 0, n);
	size_t len = nul ? (size_t)(nul - data) : n;
	char *s = malloc(len + 1);

	if (s == NULL)
		abort();
	memcpy(s, data, len);
	s[len] = '\0';
	return s;
}

/* True when s[0..len) is well-formed UTF-8 (shortest forms, no surrogates, at most U+10FFFF). */
static inline bool fuzz_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;

	for (size_t i = 0; i < len;) {
		unsigned char c = s[i];
		size_t n;
		unsigned char lo = 0x80, hi = 0xBF;

		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xC2 && c <= 0xDF) {
			n = 2;
		} else if (c >= 0xE0 && c <= 0xEF) {
			n = 3;
			if (c == 0xE0)
				lo = 0xA0;
			if (c == 0xED)
				hi = 0x9F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			n = 4;
			if (c == 0xF0)
				lo = 0x90;
			if (c == 0xF4)
				hi = 0x8F;
		} else {
			return false;
		}
		if (i + n > len || s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k < n; k++)
			if ((s[i + k] & 0xC0) != 0x80)
				return false;
		i += n;
	}
	return true;
}

/* True when s holds no control character (what would let a value forge or split a log line). */
static inline bool fuzz_no_controls(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7F)
			return false;
	return true;
}

#endif
