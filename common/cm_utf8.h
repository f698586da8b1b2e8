/*  cm_utf8.h: UTF-8 as JSON (jansson) accepts it: no overlong forms, no
    surrogates, nothing above U+10FFFF. Text from outside (a header, a path
    segment, a file) or cut at a byte count ("%.200s") may not be; a JSON
    string built from it would fail, and with it the reply. One definition
    for every program. */
#ifndef CM_UTF8_H_INCLUDED
#define CM_UTF8_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

//  Bytes of the valid character at p (at most n bytes there), 0 if invalid.
size_t cm_utf8_char (const unsigned char *p, size_t n);
//  Is data[0..size) valid UTF-8?
bool cm_utf8_valid (const char *data, size_t size);
//  Make a NUL-terminated text valid in place: every byte that does not
//  start a valid character (a character cut in two, binary) becomes '?'.
//  Returns text.
char *cm_utf8_fix (char *text);
//  A fixed copy of text (the caller frees it).
char *cm_utf8_dup (const char *text);

#endif
