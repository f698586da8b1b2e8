/*  test_cm_form.c: a parsed form as one msgpack message: round trips,
    binary data, a big part, and input that must be refused. */
#include <criterion/criterion.h>
#include <msgpack.h>
#include "cm_form.h"

static cm_form_t *
s_round_trip (cm_form_t *form)
{
    char *data = NULL;
    size_t size = 0;
    cm_form_encode (form, &data, &size);
    char err[256] = "";
    cm_form_t *copy = cm_form_decode (data, size, err, sizeof err);
    cr_assert (copy, "decode refused its own encoding: %s", err);
    free (data);
    return copy;
}

Test (cm_form, walkthrough)
{
    //  What the gateway builds from an upload: a file in two pieces (the
    //  post processor's), and two plain fields.
    cm_form_t *form = cm_form_new ();
    cm_form_add (form, "file", "notes.txt", "text/plain", "hello ", 6);
    cm_form_add (form, "file", NULL, NULL, "world", 5);
    cm_form_add (form, "addToWorkspaces", NULL, NULL, "docs,hr", 7);
    cm_form_add (form, "metadata", NULL, NULL, "{\"title\":\"T\"}", 13);
    cr_assert_eq (cm_form_count (form), 3);
    cr_assert_eq (cm_form_data_size (form), 31);

    //  What ingestd gets back.
    cm_form_t *copy = s_round_trip (form);
    cr_assert_eq (cm_form_count (copy), 3);
    const cm_form_part_t *file = cm_form_get (copy, "file");
    cr_assert (file);
    cr_assert_str_eq (file->filename, "notes.txt");
    cr_assert_str_eq (file->content_type, "text/plain");
    cr_assert_eq (file->size, 11);
    cr_assert_str_eq (file->data, "hello world");
    const cm_form_part_t *slugs = cm_form_get (copy, "addToWorkspaces");
    cr_assert_null (slugs->filename);
    cr_assert_null (slugs->content_type);
    cr_assert_str_eq (slugs->data, "docs,hr");
    cr_assert_str_eq (cm_form_at (copy, 2)->name, "metadata");
    cr_assert_null (cm_form_get (copy, "nothing"));
    cm_form_destroy (&copy);
    cm_form_destroy (&form);
    cr_assert_null (form);
    cm_form_destroy (&form); //  NULL-safe
}

Test (cm_form, repeated_field_stays_two_parts)
{
    cm_form_t *form = cm_form_new ();
    cm_form_add_part (form, "file", "a.txt", NULL, "A", 1);
    cm_form_add_part (form, "file", "b.txt", NULL, "B", 1);
    cm_form_t *copy = s_round_trip (form);
    cr_assert_eq (cm_form_count (copy), 2);
    cr_assert_str_eq (cm_form_at (copy, 0)->filename, "a.txt");
    cr_assert_str_eq (cm_form_at (copy, 1)->data, "B");
    cm_form_destroy (&copy);
    cm_form_destroy (&form);
}

Test (cm_form, empty_form_and_empty_part)
{
    cm_form_t *form = cm_form_new ();
    cm_form_t *copy = s_round_trip (form);
    cr_assert_eq (cm_form_count (copy), 0);
    cm_form_destroy (&copy);
    cm_form_add (form, "file", "empty.txt", NULL, NULL, 0);
    copy = s_round_trip (form);
    cr_assert_eq (cm_form_get (copy, "file")->size, 0);
    cr_assert_str_eq (cm_form_get (copy, "file")->data, "");
    cm_form_destroy (&copy);
    cm_form_destroy (&form);
}

//  msgpack-c gives an empty string or bin a NULL pointer when no longer
//  one came before it in the buffer (see test_cm_msg).
Test (cm_form, empty_name_first_in_the_buffer)
{
    //  [1, [["", nil, nil, <bin of 0 bytes>]]]
    char err[256] = "";
    cm_form_t *form =
        cm_form_decode ("\x92\x01\x91\x94\xa0\xc0\xc0\xc4\x00", 9, err, sizeof err);
    cr_assert_not_null (form, "%s", err);
    cr_assert_eq (cm_form_count (form), 1);
    cr_assert_str_eq (cm_form_at (form, 0)->name, "");
    cr_assert_null (cm_form_at (form, 0)->filename);
    cr_assert_eq (cm_form_at (form, 0)->size, 0);
    cm_form_destroy (&form);
}

Test (cm_form, binary_data_with_nuls_intact)
{
    unsigned char bytes[256 * 4];
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (unsigned char) (i % 256);
    cm_form_t *form = cm_form_new ();
    //  In uneven pieces, as the network would deliver it.
    size_t at = 0, step = 1;
    while (at < sizeof bytes) {
        size_t n = step < sizeof bytes - at ? step : sizeof bytes - at;
        cm_form_add (form, "file", "blob.bin", "application/octet-stream", bytes + at, n);
        at += n;
        step = step * 3 + 1;
    }
    cm_form_t *copy = s_round_trip (form);
    const cm_form_part_t *file = cm_form_get (copy, "file");
    cr_assert_eq (file->size, sizeof bytes);
    cr_assert_eq (memcmp (file->data, bytes, sizeof bytes), 0);
    cm_form_destroy (&copy);
    cm_form_destroy (&form);
}

Test (cm_form, big_part_of_10_mb)
{
    size_t size = 10 * 1024 * 1024;
    char *big = malloc (size);
    for (size_t i = 0; i < size; i++)
        big[i] = (char) (i * 7 + i / 4096);
    cm_form_t *form = cm_form_new ();
    for (size_t at = 0; at < size; at += 65536)
        cm_form_add (form, "file", "big.bin", NULL, big + at, 65536);
    cm_form_add (form, "metadata", NULL, NULL, "{}", 2);
    cm_form_t *copy = s_round_trip (form);
    const cm_form_part_t *file = cm_form_get (copy, "file");
    cr_assert_eq (file->size, size);
    cr_assert_eq (memcmp (file->data, big, size), 0);
    cr_assert_str_eq (cm_form_get (copy, "metadata")->data, "{}");
    cm_form_destroy (&copy);
    cm_form_destroy (&form);
    free (big);
}

Test (cm_form, truncated_input_refused_at_every_length)
{
    cm_form_t *form = cm_form_new ();
    cm_form_add (form, "file", "a.txt", "text/plain", "some bytes\0more", 15);
    cm_form_add (form, "metadata", NULL, NULL, "{}", 2);
    char *data;
    size_t size;
    cm_form_encode (form, &data, &size);
    char err[256];
    for (size_t cut = 0; cut < size; cut++) {
        //  A copy of exactly cut bytes, so ASan sees any read past the end.
        char *part = malloc (cut ? cut : 1);
        memcpy (part, data, cut);
        cm_form_t *decoded = cm_form_decode (part, cut, err, sizeof err);
        cr_assert_null (decoded, "a form cut to %zu of %zu bytes was accepted", cut,
                        size);
        free (part);
    }
    //  And with a byte too many.
    char *longer = malloc (size + 1);
    memcpy (longer, data, size);
    longer[size] = 0;
    cr_assert_null (cm_form_decode (longer, size + 1, err, sizeof err));
    cr_assert (strstr (err, "trailing"), "%s", err);
    free (longer);
    free (data);
    cm_form_destroy (&form);
}

//  Pack a msgpack value built by the callback into a buffer.
typedef void (s_build_fn) (msgpack_packer *pk);

static cm_form_t *
s_decode_built (s_build_fn *build, char *err, size_t errlen)
{
    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init (&sbuf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sbuf, msgpack_sbuffer_write);
    build (&pk);
    cm_form_t *form = cm_form_decode (sbuf.data, sbuf.size, err, errlen);
    msgpack_sbuffer_destroy (&sbuf);
    return form;
}

static void
s_wrong_version (msgpack_packer *pk)
{
    msgpack_pack_array (pk, 2);
    msgpack_pack_uint8 (pk, 2);
    msgpack_pack_array (pk, 0);
}

static void
s_data_as_str (msgpack_packer *pk)
{
    msgpack_pack_array (pk, 2);
    msgpack_pack_uint8 (pk, 1);
    msgpack_pack_array (pk, 1);
    msgpack_pack_array (pk, 4);
    msgpack_pack_str_with_body (pk, "file", 4);
    msgpack_pack_nil (pk);
    msgpack_pack_nil (pk);
    msgpack_pack_str_with_body (pk, "data", 4);
}

static void
s_nil_name (msgpack_packer *pk)
{
    msgpack_pack_array (pk, 2);
    msgpack_pack_uint8 (pk, 1);
    msgpack_pack_array (pk, 1);
    msgpack_pack_array (pk, 4);
    msgpack_pack_nil (pk);
    msgpack_pack_nil (pk);
    msgpack_pack_nil (pk);
    msgpack_pack_bin_with_body (pk, "x", 1);
}

static void
s_nul_in_name (msgpack_packer *pk)
{
    msgpack_pack_array (pk, 2);
    msgpack_pack_uint8 (pk, 1);
    msgpack_pack_array (pk, 1);
    msgpack_pack_array (pk, 4);
    msgpack_pack_str_with_body (pk, "fi\0le", 5);
    msgpack_pack_nil (pk);
    msgpack_pack_nil (pk);
    msgpack_pack_bin_with_body (pk, "x", 1);
}

static void
s_three_fields (msgpack_packer *pk)
{
    msgpack_pack_array (pk, 2);
    msgpack_pack_uint8 (pk, 1);
    msgpack_pack_array (pk, 1);
    msgpack_pack_array (pk, 3);
    msgpack_pack_str_with_body (pk, "file", 4);
    msgpack_pack_nil (pk);
    msgpack_pack_bin_with_body (pk, "x", 1);
}

static void
s_too_many_parts (msgpack_packer *pk)
{
    msgpack_pack_array (pk, 2);
    msgpack_pack_uint8 (pk, 1);
    msgpack_pack_array (pk, CM_FORM_MAX_PARTS + 1);
    for (int i = 0; i < CM_FORM_MAX_PARTS + 1; i++) {
        msgpack_pack_array (pk, 4);
        msgpack_pack_str_with_body (pk, "f", 1);
        msgpack_pack_nil (pk);
        msgpack_pack_nil (pk);
        msgpack_pack_bin_with_body (pk, "", 0);
    }
}

Test (cm_form, wrong_shapes_refused)
{
    char err[256];
    s_build_fn *builds[] = {s_wrong_version, s_data_as_str,  s_nil_name,
                            s_nul_in_name,   s_three_fields, s_too_many_parts};
    for (size_t i = 0; i < sizeof builds / sizeof *builds; i++) {
        err[0] = 0;
        cm_form_t *form = s_decode_built (builds[i], err, sizeof err);
        cr_assert_null (form, "shape %zu was accepted", i);
        cr_assert (*err, "shape %zu was refused without a reason", i);
    }
}

Test (cm_form, hostile_lengths_refused_without_allocating)
{
    char err[256];
    //  [1, array32 of 4 billion parts] in 11 bytes.
    const unsigned char huge_array[] = {0x92, 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff};
    cr_assert_null (cm_form_decode (huge_array, sizeof huge_array, err, sizeof err));
    //  One part whose bin claims 4 GB.
    const unsigned char huge_bin[] = {0x92, 0x01, 0x91, 0x94, 0xa1, 'f',  0xc0,
                                      0xc0, 0xc6, 0xff, 0xff, 0xff, 0xff, 'x'};
    cr_assert_null (cm_form_decode (huge_bin, sizeof huge_bin, err, sizeof err));
}

Test (cm_form, garbage_never_crashes)
{
    //  Random bytes, and random bytes after a valid prefix, many times.
    unsigned int seed = 12345;
    char err[256];
    unsigned char buffer[512];
    int accepted = 0;
    for (int round = 0; round < 20000; round++) {
        size_t size = (size_t) (rand_r (&seed) % sizeof buffer);
        for (size_t i = 0; i < size; i++)
            buffer[i] = (unsigned char) rand_r (&seed);
        if (round % 2 && size >= 3) {
            buffer[0] = 0x92;
            buffer[1] = 0x01;
            buffer[2] = (unsigned char) (0x90 | (rand_r (&seed) % 3));
        }
        unsigned char *copy = malloc (size ? size : 1);
        memcpy (copy, buffer, size);
        cm_form_t *form = cm_form_decode (copy, size, err, sizeof err);
        if (form)
            accepted++;
        cm_form_destroy (&form);
        free (copy);
    }
    //  Nothing to assert on the count beyond no crash and no leak; a
    //  random buffer is a form only by a rare accident.
    cr_assert_lt (accepted, 20000);
}
