/*  test_cm_utf8.c: the one UTF-8 check, against jansson (what every reply
    must get through) on the cases that matter: characters cut in two,
    overlong forms, surrogates, bytes above U+10FFFF, binary. */
#include <criterion/criterion.h>
#include <jansson.h>
#include "cm_utf8.h"

Test (cm_utf8, walkthrough_fix_makes_any_text_a_json_string)
{
    static const char *bad[] = {
        "caf\xc3",          //  é cut in two at the end
        "\xc3\xa9t\xc3",    //  and after a whole one
        "a\xffz",           //  a byte that is never UTF-8
        "\xc0\xaf",         //  overlong '/'
        "\xe0\x80\xaf",     //  overlong, three bytes
        "\xed\xa0\x80",     //  a surrogate
        "\xf4\x90\x80\x80", //  above U+10FFFF
        "\xe2\x82",         //  € cut after two bytes
        "ok \xf0\x9f\x98",  //  an emoji cut
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_not (cm_utf8_valid (bad[i], strlen (bad[i])), "case %zu", i);
        cr_assert_null (json_string (bad[i]), "jansson agrees: case %zu", i);
        char copy[32];
        snprintf (copy, sizeof copy, "%s", bad[i]);
        size_t len = strlen (copy);
        cm_utf8_fix (copy);
        cr_assert_eq (strlen (copy), len, "in place, the same length");
        cr_assert (cm_utf8_valid (copy, len), "case %zu: %s", i, copy);
        json_t *json = json_string (copy);
        cr_assert_not_null (json, "case %zu", i);
        json_decref (json);
    }
    static const char *good[] = {"",
                                 "plain",
                                 "caf\xc3\xa9",
                                 "\xe2\x82\xac 5",
                                 "\xf0\x9f\x98\x80",
                                 "\xf4\x8f\xbf\xbf"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        cr_assert (cm_utf8_valid (good[i], strlen (good[i])), "case %zu", i);
        char copy[32];
        snprintf (copy, sizeof copy, "%s", good[i]);
        cr_assert_str_eq (cm_utf8_fix (copy), good[i], "valid text is left alone");
    }
    //  A whole character is kept; only the cut one goes.
    char cut[] = "\xc3\xa9\xc3";
    cr_assert_str_eq (cm_utf8_fix (cut), "\xc3\xa9?");
    cr_assert_eq (cm_utf8_char ((const unsigned char *) "\xe2\x82\xac", 2), 0,
                  "a character longer than what is left is not one");
}
