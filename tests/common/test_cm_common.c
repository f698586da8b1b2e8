/*  test_cm_common.c: the small helpers every module uses (cm_common). */
#include <criterion/criterion.h>
#include "cm_common.h"
#include <ctype.h>
#include <string.h>

//  36 characters, dashes at 8/13/18/23, lower-case hex elsewhere, version
//  4, RFC 4122 variant; and never the same twice in 10,000.
Test (cm_common, uuid_is_version_4_text_and_unique)
{
    enum { COUNT = 10000 };
    static char ids[COUNT][CM_UUID_SIZE];
    for (int n = 0; n < COUNT; n++) {
        char *id = ids[n];
        cm_uuid (id);
        cr_assert_eq (strlen (id), 36, "%s", id);
        for (int i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                cr_assert_eq (id[i], '-', "%s", id);
            else
                cr_assert (isxdigit ((unsigned char) id[i]) &&
                               !isupper ((unsigned char) id[i]),
                           "%s", id);
        }
        cr_assert_eq (id[14], '4', "%s", id);
        cr_assert (strchr ("89ab", id[19]), "%s", id);
    }
    qsort (ids, COUNT, CM_UUID_SIZE, (int (*) (const void *, const void *)) strcmp);
    for (int n = 1; n < COUNT; n++)
        cr_assert_str_neq (ids[n - 1], ids[n]);
}
