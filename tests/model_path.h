/* model_path.h -- where the unit tests look for the real model.
 * $SKV_MODEL if set, else models/SmolLM2-135M-Instruct.Q4_1.gguf under the
 * current directory (make check runs from the top of the tree).  NULL when
 * absent: the model tests are then not run and reported as skipped. */
#ifndef SKV_TEST_MODEL_PATH_H
#define SKV_TEST_MODEL_PATH_H
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *test_model_path(void)
{
    const char *p = getenv("SKV_MODEL");
    if (p && *p)
        return access(p, R_OK) == 0 ? p : NULL;
    p = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    return access(p, R_OK) == 0 ? p : NULL;
}

/* Print the skip line that scripts/run-unit-tests counts. */
static void report_skip(const char *suite, int n_tests)
{
    printf("SKIP: model absent: %d %s tests not run (run scripts/fetch-model)\n", n_tests, suite);
}
#endif
