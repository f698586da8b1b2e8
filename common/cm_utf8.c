/*  cm_utf8.c: see cm_utf8.h. */
#include "cm_utf8.h"
#include "cm_common.h"
#include <stdint.h>
#include <string.h>

size_t
cm_utf8_char (const unsigned char *p, size_t n)
{
    if (n == 0)
        return 0;
    if (p[0] < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07;
    } else
        return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

bool
cm_utf8_valid (const char *data, size_t size)
{
    const unsigned char *p = (const unsigned char *) data;
    for (size_t at = 0; at < size;) {
        size_t len = cm_utf8_char (p + at, size - at);
        if (!len)
            return false;
        at += len;
    }
    return true;
}

char *
cm_utf8_fix (char *text)
{
    unsigned char *p = (unsigned char *) text;
    size_t left = strlen (text);
    while (left) {
        size_t len = cm_utf8_char (p, left);
        if (!len) {
            *p = '?';
            len = 1;
        }
        p += len;
        left -= len;
    }
    return text;
}

char *
cm_utf8_dup (const char *text)
{
    return cm_utf8_fix (cm_strdup (text));
}
