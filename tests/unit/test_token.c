/*
 * test_token: the per-timeline password.  Known answers were computed independently with Python:
 *   "pgl_" + base64.urlsafe_b64encode(hmac.new(secret, b"pglane-token-v1\0" + app + b"\0" + key,
 *                                              hashlib.sha256).digest()).rstrip("=")
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "auth/token.h"

static const struct {
	const char *secret, *app, *timeline_key, *token;
} known[] = {
    {"s3cr3t", "myapp", "production", "pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf930"},
    {"s3cr3t", "myapp", "branch:feature/x", "pgl_UXoqjDZBD-8vCJv8bo0jhKD4mAHewCTqmPh-gMZIv0w"},
    {"", "a", "preview", "pgl_7mNiDJdYbAuBBJG9R0nxM8Hq61yz8deQzhlqGYbSYgk"},
};

static void test_known_answers(void **state)
{
	for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
		char tok[AUTH_TOKEN_LEN + 1];

		assert_true(
		    auth_token_derive(known[i].secret, known[i].app, known[i].timeline_key, tok, sizeof tok));
		assert_string_equal(tok, known[i].token);
	}
}

static void test_format(void **state)
{
	char tok[AUTH_TOKEN_LEN + 1];

	assert_true(auth_token_derive("secret", "app", "production", tok, sizeof tok));
	assert_int_equal(strlen(tok), AUTH_TOKEN_LEN);
	assert_memory_equal(tok, "pgl_", 4);
	assert_int_equal(strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"),
	                 AUTH_TOKEN_LEN);
}

static void test_deterministic(void **state)
{
	char a[AUTH_TOKEN_LEN + 1], b[AUTH_TOKEN_LEN + 1];

	assert_true(auth_token_derive("secret", "app", "branch:main", a, sizeof a));
	assert_true(auth_token_derive("secret", "app", "branch:main", b, sizeof b));
	assert_string_equal(a, b);
}

/* Changing any one input changes the token, including moving bytes across the NUL separators. */
static void test_inputs_matter(void **state)
{
	static const struct {
		const char *secret, *app, *timeline_key;
	} cases[] = {
	    {"secret", "app", "production"},  {"secret", "app", "preview"},
	    {"secret", "app2", "production"}, {"secret2", "app", "production"},
	    {"secret", "ap", "pproduction"},  {"secret", "app", "branch:x"},
	    {"secret", "app", "branch:y"},
	};
	char toks[sizeof cases / sizeof cases[0]][AUTH_TOKEN_LEN + 1];

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_true(auth_token_derive(cases[i].secret, cases[i].app, cases[i].timeline_key, toks[i],
		                              sizeof toks[i]));
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(toks[i], toks[j]);
	}
}

static void test_small_buffer(void **state)
{
	char tok[AUTH_TOKEN_LEN];

	assert_false(auth_token_derive("secret", "app", "production", tok, sizeof tok));
}

static void test_equal(void **state)
{
	static const struct {
		const char *presented, *expected;
		bool equal;
	} cases[] = {
	    {"pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf930",
	     "pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf930", true},
	    {"pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf931",
	     "pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf930", false},
	    {"pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf93",
	     "pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf930", false},
	    {"pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf9300",
	     "pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf930", false},
	    {"", "pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf930", false},
	    {NULL, "pgl_6bz8BW8qF5If9zawsfbrKhCj9ZhAL4xkKx-bMLkf930", false},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		assert_int_equal(auth_token_equal(cases[i].presented, cases[i].expected), cases[i].equal);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_known_answers), cmocka_unit_test(test_format),
	    cmocka_unit_test(test_deterministic), cmocka_unit_test(test_inputs_matter),
	    cmocka_unit_test(test_small_buffer),  cmocka_unit_test(test_equal),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
