/*  cm_metrics.c: see cm_metrics.h.

    A registry is a list of families (name, help, kind), each a list of
    series (sorted label pairs, value). Values are doubles kept as their bit
    patterns in 64-bit atomics, so an update is a load and a compare-and-swap,
    never a lock: request paths update series on every request. Histogram
    buckets are kept per bucket (not cumulative) and made cumulative by the
    snapshot, whose count is the sum of the buckets, so that the +Inf bucket
    always equals the count as Prometheus requires.

    Everything that reads snapshots (merge, quantile, exposition) treats them
    as input from outside: another process sent them. A malformed family or
    series is skipped, never trusted. */
#include "cm_metrics.h"
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>

const double cm_metrics_latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                             0.05,   0.1,   0.25,   0.5,   1,    2.5,
                                             5,      10,    30,     60};
const size_t cm_metrics_latency_bucket_count =
    sizeof cm_metrics_latency_buckets / sizeof cm_metrics_latency_buckets[0];

typedef struct s_family_s s_family_t;

struct cm_metric_s {
    s_family_t *family;             //  the family it belongs to
    char **labels;                  //  name, value, ... sorted by name, owned
    size_t label_pairs;             //  number of name/value pairs
    atomic_uint_least64_t bits;     //  value (counter, gauge) or sum (histogram)
    double *bounds;                 //  histogram: ascending upper bounds, owned
    size_t bound_count;             //  histogram: entries in bounds
    atomic_uint_least64_t *buckets; //  histogram: per-bucket counts, +Inf last
    cm_metric_t *next;              //  next series of the family
};

struct s_family_s {
    char *name;            //  metric name
    char *help;            //  from the first registration
    cm_metric_kind_t kind; //  counter, gauge or histogram
    cm_metric_t *series;   //  first series, in registration order
    cm_metric_t **tail;    //  where the next series goes
    s_family_t *next;      //  next family of the registry
};

typedef struct s_collector_s {
    cm_metrics_collect_fn *fn;  //  refreshes series
    void *arg;                  //  passed to fn
    struct s_collector_s *next; //  next collector
} s_collector_t;

struct cm_metrics_s {
    pthread_mutex_t lock;      //  guards the lists below (not the values)
    s_family_t *families;      //  first family, in registration order
    s_family_t **tail;         //  where the next family goes
    s_collector_t *collectors; //  run before each snapshot
};

static const char *s_kind_name[] = {"counter", "gauge", "histogram"};

static bool s_valid_name (const char *name);
static bool s_valid_label (const char *name);
static double s_from_bits (uint64_t bits);
static uint64_t s_to_bits (double value);
static json_t *s_number (double value);
static double s_value_of (const json_t *json);

cm_metrics_t *
cm_metrics_new (void)
{
    cm_metrics_t *self = cm_calloc (1, sizeof *self);
    pthread_mutex_init (&self->lock, NULL);
    self->tail = &self->families;
    return self;
}

void
cm_metrics_destroy (cm_metrics_t **self_p)
{
    assert (self_p);
    cm_metrics_t *self = *self_p;
    if (!self)
        return;
    s_family_t *family = self->families;
    while (family) {
        cm_metric_t *series = family->series;
        while (series) {
            cm_metric_t *next = series->next;
            for (size_t i = 0; i < 2 * series->label_pairs; i++)
                free (series->labels[i]);
            free (series->labels);
            free (series->bounds);
            free (series->buckets);
            free (series);
            series = next;
        }
        s_family_t *next = family->next;
        free (family->name);
        free (family->help);
        free (family);
        family = next;
    }
    s_collector_t *collector = self->collectors;
    while (collector) {
        s_collector_t *next = collector->next;
        free (collector);
        collector = next;
    }
    pthread_mutex_destroy (&self->lock);
    free (self);
    *self_p = NULL;
}

//  Lock held. The labels of a registration, checked and sorted by name, as
//  a new array of 2 * pairs strings.
static char **
s_labels_sorted (const char *const *labels, cm_metric_kind_t kind, size_t *pairs_p)
{
    size_t pairs = 0;
    while (labels && labels[2 * pairs]) {
        assert (labels[2 * pairs + 1]);
        pairs++;
    }
    char **sorted = cm_calloc (2 * pairs + 1, sizeof *sorted);
    for (size_t i = 0; i < pairs; i++) {
        const char *name = labels[2 * i];
        assert (s_valid_label (name));
        assert (kind != CM_METRIC_HISTOGRAM || strcmp (name, "le"));
        //  Insertion sort: label lists are short.
        size_t at = i;
        while (at > 0 && strcmp (sorted[2 * (at - 1)], name) > 0) {
            sorted[2 * at] = sorted[2 * (at - 1)];
            sorted[2 * at + 1] = sorted[2 * (at - 1) + 1];
            at--;
        }
        assert (at == 0 || strcmp (sorted[2 * (at - 1)], name));
        sorted[2 * at] = cm_strdup (name);
        sorted[2 * at + 1] = cm_strdup (labels[2 * i + 1]);
    }
    *pairs_p = pairs;
    return sorted;
}

static cm_metric_t *
s_register (cm_metrics_t *self, cm_metric_kind_t kind, const char *name, const char *help,
            const char *const *labels, const double *bounds, size_t count)
{
    assert (self && name);
    assert (s_valid_name (name));
    pthread_mutex_lock (&self->lock);
    s_family_t *family = self->families;
    while (family && strcmp (family->name, name))
        family = family->next;
    if (family)
        //  One name, one kind: anything else is a bug in the caller.
        assert (family->kind == kind);
    else {
        family = cm_calloc (1, sizeof *family);
        family->name = cm_strdup (name);
        family->help = cm_strdup (help && *help ? help : name);
        family->kind = kind;
        family->tail = &family->series;
        *self->tail = family;
        self->tail = &family->next;
    }
    size_t pairs;
    char **sorted = s_labels_sorted (labels, kind, &pairs);
    cm_metric_t *series = family->series;
    for (; series; series = series->next) {
        if (series->label_pairs != pairs)
            continue;
        size_t i = 0;
        while (i < 2 * pairs && !strcmp (series->labels[i], sorted[i]))
            i++;
        if (i == 2 * pairs)
            break;
    }
    if (series) {
        for (size_t i = 0; i < 2 * pairs; i++)
            free (sorted[i]);
        free (sorted);
        if (kind == CM_METRIC_HISTOGRAM) {
            assert (series->bound_count == count);
            assert (memcmp (series->bounds, bounds, count * sizeof *bounds) == 0);
        }
    } else {
        series = cm_calloc (1, sizeof *series);
        series->family = family;
        series->labels = sorted;
        series->label_pairs = pairs;
        atomic_init (&series->bits, s_to_bits (0));
        if (kind == CM_METRIC_HISTOGRAM) {
            assert (bounds || count == 0);
            for (size_t i = 0; i < count; i++) {
                assert (isfinite (bounds[i]));
                assert (i == 0 || bounds[i - 1] < bounds[i]);
            }
            series->bounds = cm_calloc (count, sizeof *series->bounds);
            if (count)
                memcpy (series->bounds, bounds, count * sizeof *bounds);
            series->bound_count = count;
            series->buckets = cm_calloc (count + 1, sizeof *series->buckets);
            for (size_t i = 0; i <= count; i++)
                atomic_init (&series->buckets[i], 0);
        }
        *family->tail = series;
        family->tail = &series->next;
    }
    pthread_mutex_unlock (&self->lock);
    return series;
}

cm_metric_t *
cm_metrics_counter (cm_metrics_t *self, const char *name, const char *help,
                    const char *const *labels)
{
    return s_register (self, CM_METRIC_COUNTER, name, help, labels, NULL, 0);
}

cm_metric_t *
cm_metrics_gauge (cm_metrics_t *self, const char *name, const char *help,
                  const char *const *labels)
{
    return s_register (self, CM_METRIC_GAUGE, name, help, labels, NULL, 0);
}

cm_metric_t *
cm_metrics_histogram (cm_metrics_t *self, const char *name, const char *help,
                      const char *const *labels, const double *bounds, size_t count)
{
    return s_register (self, CM_METRIC_HISTOGRAM, name, help, labels, bounds, count);
}

//  Add to a double held as bits, lock-free.
static void
s_atomic_add (atomic_uint_least64_t *bits, double value)
{
    uint64_t old = atomic_load (bits);
    while (
        !atomic_compare_exchange_weak (bits, &old, s_to_bits (s_from_bits (old) + value)))
        ;
}

void
cm_metric_add (cm_metric_t *self, double value)
{
    assert (self);
    assert (self->family->kind != CM_METRIC_HISTOGRAM);
    assert (self->family->kind != CM_METRIC_COUNTER || !(value < 0));
    s_atomic_add (&self->bits, value);
}

void
cm_metric_set (cm_metric_t *self, double value)
{
    assert (self);
    assert (self->family->kind != CM_METRIC_HISTOGRAM);
    atomic_store (&self->bits, s_to_bits (value));
}

void
cm_metric_observe (cm_metric_t *self, double value)
{
    assert (self);
    assert (self->family->kind == CM_METRIC_HISTOGRAM);
    if (isnan (value))
        return; //  would poison the sum for good
    //  First bucket whose upper bound is >= value (le: "less or equal").
    size_t low = 0, high = self->bound_count;
    while (low < high) {
        size_t mid = (low + high) / 2;
        if (self->bounds[mid] >= value)
            high = mid;
        else
            low = mid + 1;
    }
    atomic_fetch_add (&self->buckets[low], 1);
    s_atomic_add (&self->bits, value);
}

double
cm_metric_value (cm_metric_t *self)
{
    assert (self);
    return s_from_bits (atomic_load (&self->bits));
}

void
cm_metrics_collector (cm_metrics_t *self, cm_metrics_collect_fn *fn, void *arg)
{
    assert (self && fn);
    s_collector_t *collector = cm_calloc (1, sizeof *collector);
    collector->fn = fn;
    collector->arg = arg;
    pthread_mutex_lock (&self->lock);
    s_collector_t **link = &self->collectors;
    while (*link)
        link = &(*link)->next;
    *link = collector;
    pthread_mutex_unlock (&self->lock);
}

bool
cm_metrics_collector_remove (cm_metrics_t *self, cm_metrics_collect_fn *fn, void *arg)
{
    assert (self && fn);
    bool found = false;
    pthread_mutex_lock (&self->lock);
    for (s_collector_t **link = &self->collectors; *link; link = &(*link)->next)
        if ((*link)->fn == fn && (*link)->arg == arg) {
            s_collector_t *collector = *link;
            *link = collector->next;
            free (collector);
            found = true;
            break;
        }
    pthread_mutex_unlock (&self->lock);
    return found;
}

json_t *
cm_metrics_snapshot (cm_metrics_t *self)
{
    assert (self);
    //  Collectors register and set series, which takes the lock: run them
    //  on a copy of the list, unlocked.
    pthread_mutex_lock (&self->lock);
    size_t count = 0;
    for (s_collector_t *c = self->collectors; c; c = c->next)
        count++;
    s_collector_t *copy = cm_calloc (count, sizeof *copy);
    count = 0;
    for (s_collector_t *c = self->collectors; c; c = c->next)
        copy[count++] = *c;
    pthread_mutex_unlock (&self->lock);
    for (size_t i = 0; i < count; i++)
        copy[i].fn (self, copy[i].arg);
    free (copy);

    json_t *families = json_array ();
    pthread_mutex_lock (&self->lock);
    for (s_family_t *family = self->families; family; family = family->next) {
        json_t *list = json_array ();
        for (cm_metric_t *s = family->series; s; s = s->next) {
            json_t *labels = json_object ();
            for (size_t i = 0; i < s->label_pairs; i++)
                json_object_set_new (labels, s->labels[2 * i],
                                     json_string (s->labels[2 * i + 1]));
            json_t *series = json_pack ("{s:o}", "labels", labels);
            double value = s_from_bits (atomic_load (&s->bits));
            if (family->kind == CM_METRIC_HISTOGRAM) {
                json_t *bounds = json_array ();
                json_t *buckets = json_array ();
                uint64_t cumulative = 0;
                for (size_t i = 0; i <= s->bound_count; i++) {
                    if (i < s->bound_count)
                        json_array_append_new (bounds, json_real (s->bounds[i]));
                    cumulative += atomic_load (&s->buckets[i]);
                    json_array_append_new (buckets,
                                           json_integer ((json_int_t) cumulative));
                }
                json_object_set_new (series, "bounds", bounds);
                json_object_set_new (series, "buckets", buckets);
                json_object_set_new (series, "sum", s_number (value));
                json_object_set_new (series, "count",
                                     json_integer ((json_int_t) cumulative));
            } else
                json_object_set_new (series, "value", s_number (value));
            json_array_append_new (list, series);
        }
        json_array_append_new (families,
                               json_pack ("{s:s, s:s, s:s, s:o}", "name", family->name,
                                          "help", family->help, "type",
                                          s_kind_name[family->kind], "series", list));
    }
    pthread_mutex_unlock (&self->lock);
    return json_pack ("{s:o}", "families", families);
}

//  --- reading snapshots ----------------------------------------------------

//  The family of this name in a snapshot's "families" array, or NULL.
static json_t *
s_family_find (const json_t *families, const char *name)
{
    size_t i;
    json_t *family;
    json_array_foreach (families, i, family)
    {
        const char *n = json_string_value (json_object_get (family, "name"));
        if (n && !strcmp (n, name))
            return family;
    }
    return NULL;
}

//  A histogram series is usable when bounds are numbers and there is one
//  more cumulative bucket than bounds.
static bool
s_histogram_ok (const json_t *series)
{
    json_t *bounds = json_object_get (series, "bounds");
    json_t *buckets = json_object_get (series, "buckets");
    if (!json_is_array (bounds) || !json_is_array (buckets) ||
        json_array_size (buckets) != json_array_size (bounds) + 1)
        return false;
    for (size_t i = 0; i < json_array_size (buckets); i++) {
        if (!json_is_number (json_array_get (buckets, i)))
            return false;
        if (i < json_array_size (bounds) && !json_is_number (json_array_get (bounds, i)))
            return false;
    }
    return true;
}

//  Does a series' labels object hold every name/value pair of labels?
static bool
s_labels_include (const json_t *have, const char *const *labels)
{
    for (size_t i = 0; labels && labels[i] && labels[i + 1]; i += 2) {
        const char *value = json_string_value (json_object_get (have, labels[i]));
        if (!value || strcmp (value, labels[i + 1]))
            return false;
    }
    return true;
}

void
cm_metrics_merge (json_t *aggregate, const json_t *snapshot)
{
    assert (json_is_object (aggregate));
    json_t *into = json_object_get (aggregate, "families");
    if (!json_is_array (into)) {
        into = json_array ();
        json_object_set_new (aggregate, "families", into);
    }
    json_int_t conflicts = 0;
    size_t i;
    json_t *family;
    json_array_foreach (json_object_get (snapshot, "families"), i, family)
    {
        const char *name = json_string_value (json_object_get (family, "name"));
        const char *type = json_string_value (json_object_get (family, "type"));
        json_t *series = json_object_get (family, "series");
        if (!name || !type || !json_is_array (series))
            continue;
        bool histogram = !strcmp (type, "histogram");
        json_t *target = s_family_find (into, name);
        if (!target) {
            const char *help = json_string_value (json_object_get (family, "help"));
            target = json_pack ("{s:s, s:s, s:s, s:[]}", "name", name, "help",
                                help ? help : name, "type", type, "series");
            json_array_append_new (into, target);
        } else {
            const char *have = json_string_value (json_object_get (target, "type"));
            if (!have || strcmp (have, type)) {
                conflicts += (json_int_t) json_array_size (series);
                continue;
            }
        }
        json_t *target_series = json_object_get (target, "series");
        size_t j;
        json_t *one;
        json_array_foreach (series, j, one)
        {
            json_t *labels = json_object_get (one, "labels");
            if (!json_is_object (labels))
                continue;
            if (histogram && !s_histogram_ok (one))
                continue;
            json_t *match = NULL;
            size_t k;
            json_t *other;
            json_array_foreach (target_series, k, other)
            {
                if (json_equal (json_object_get (other, "labels"), labels)) {
                    match = other;
                    break;
                }
            }
            if (!match) {
                json_array_append_new (target_series, json_deep_copy (one));
                continue;
            }
            if (!histogram) {
                double sum = s_value_of (json_object_get (match, "value")) +
                             s_value_of (json_object_get (one, "value"));
                json_object_set_new (match, "value", s_number (sum));
                continue;
            }
            json_t *bounds = json_object_get (match, "bounds");
            if (!json_equal (bounds, json_object_get (one, "bounds"))) {
                //  The aggregate keeps the bounds it saw first.
                conflicts++;
                continue;
            }
            json_t *have = json_object_get (match, "buckets");
            json_t *add = json_object_get (one, "buckets");
            for (size_t b = 0; b < json_array_size (have); b++)
                json_array_set_new (have, b,
                                    s_number (s_value_of (json_array_get (have, b)) +
                                              s_value_of (json_array_get (add, b))));
            json_object_set_new (match, "sum",
                                 s_number (s_value_of (json_object_get (match, "sum")) +
                                           s_value_of (json_object_get (one, "sum"))));
            json_object_set_new (match, "count",
                                 s_number (s_value_of (json_object_get (match, "count")) +
                                           s_value_of (json_object_get (one, "count"))));
        }
    }
    if (conflicts) {
        json_t *have = json_object_get (aggregate, "merge_conflicts");
        json_object_set_new (aggregate, "merge_conflicts",
                             json_integer (json_integer_value (have) + conflicts));
    }
}

double
cm_metrics_quantile (const json_t *series, double q)
{
    //  Prometheus's bucketQuantile (promql/quantile.go), step by step.
    if (!series || !s_histogram_ok (series))
        return NAN;
    if (isnan (q))
        return NAN;
    if (q < 0)
        return -INFINITY;
    if (q > 1)
        return INFINITY;
    json_t *bounds = json_object_get (series, "bounds");
    json_t *buckets = json_object_get (series, "buckets");
    size_t n = json_array_size (bounds); //  finite buckets; +Inf is buckets[n]
    if (n == 0)
        return NAN; //  fewer than two buckets
    double observations = s_value_of (json_array_get (buckets, n));
    if (!(observations > 0))
        return NAN;
    double rank = q * observations;
    size_t b = 0;
    while (b < n && s_value_of (json_array_get (buckets, b)) < rank)
        b++;
    if (b == n) //  in the +Inf bucket: the highest finite bound
        return s_value_of (json_array_get (bounds, n - 1));
    double end = s_value_of (json_array_get (bounds, b));
    if (b == 0 && end <= 0)
        return end;
    double start = 0;
    double count = s_value_of (json_array_get (buckets, b));
    if (b > 0) {
        double below = s_value_of (json_array_get (buckets, b - 1));
        start = s_value_of (json_array_get (bounds, b - 1));
        count -= below;
        rank -= below;
    }
    return start + (end - start) * (rank / count);
}

json_t *
cm_metrics_relabel (const json_t *snapshot, const char *const *labels)
{
    json_t *copy = json_deep_copy (snapshot);
    if (!json_is_object (copy)) {
        json_decref (copy);
        return json_pack ("{s:[]}", "families");
    }
    size_t i;
    json_t *family;
    json_array_foreach (json_object_get (copy, "families"), i, family)
    {
        size_t j;
        json_t *series;
        json_array_foreach (json_object_get (family, "series"), j, series)
        {
            //  The added labels first, as they read best: service, instance.
            json_t *old = json_object_get (series, "labels");
            json_t *fresh = json_object ();
            for (size_t k = 0; labels && labels[k] && labels[k + 1]; k += 2)
                json_object_set_new (fresh, labels[k], json_string (labels[k + 1]));
            const char *key;
            json_t *value;
            json_object_foreach (old, key, value)
            {
                if (!json_object_get (fresh, key))
                    json_object_set (fresh, key, value);
            }
            json_object_set_new (series, "labels", fresh);
        }
    }
    return copy;
}

const json_t *
cm_metrics_series (const json_t *snapshot, const char *name, const char *const *labels)
{
    assert (name);
    json_t *family = s_family_find (json_object_get (snapshot, "families"), name);
    size_t pairs = 0;
    while (labels && labels[2 * pairs] && labels[2 * pairs + 1])
        pairs++;
    size_t i;
    json_t *series;
    json_array_foreach (json_object_get (family, "series"), i, series)
    {
        json_t *have = json_object_get (series, "labels");
        if (json_object_size (have) == pairs && s_labels_include (have, labels))
            return series;
    }
    return NULL;
}

double
cm_metrics_sum (const json_t *snapshot, const char *name, const char *const *labels)
{
    assert (name);
    json_t *family = s_family_find (json_object_get (snapshot, "families"), name);
    const char *type = json_string_value (json_object_get (family, "type"));
    const char *field = type && !strcmp (type, "histogram") ? "count" : "value";
    double sum = 0;
    size_t i;
    json_t *series;
    json_array_foreach (json_object_get (family, "series"), i, series)
    {
        if (s_labels_include (json_object_get (series, "labels"), labels))
            sum += s_value_of (json_object_get (series, field));
    }
    return sum;
}

//  --- Prometheus text ------------------------------------------------------

typedef struct {
    char *data;      //  text so far
    size_t size;     //  its length
    size_t capacity; //  allocated
} s_text_t;

static void
s_put (s_text_t *text, const char *data, size_t size)
{
    if (text->size + size + 1 > text->capacity) {
        text->capacity = (text->size + size + 1) * 2;
        text->data = cm_realloc (text->data, text->capacity);
    }
    memcpy (text->data + text->size, data, size);
    text->size += size;
    text->data[text->size] = 0;
}

static void
s_puts (s_text_t *text, const char *s)
{
    s_put (text, s, strlen (s));
}

//  HELP text: backslash and newline escaped. Label values also escape '"'.
static void
s_put_escaped (s_text_t *text, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            s_puts (text, "\\\\");
        else if (*s == '\n')
            s_puts (text, "\\n");
        else if (*s == '"' && quote)
            s_puts (text, "\\\"");
        else
            s_put (text, s, 1);
    }
}

//  The shortest text that reads back as the same double: whole numbers
//  as such (20, not 2e+01), others with the fewest significant digits, in
//  exponent form only when very small or very large; +Inf, -Inf, NaN.
static void
s_put_number (s_text_t *text, double value)
{
    char buf[64];
    if (isnan (value))
        snprintf (buf, sizeof buf, "NaN");
    else if (isinf (value))
        snprintf (buf, sizeof buf, value > 0 ? "+Inf" : "-Inf");
    else if (value == floor (value) && fabs (value) < 1e15)
        snprintf (buf, sizeof buf, "%.0f", value == 0 ? 0.0 : value);
    else {
        int digits = 1;
        for (; digits < 17; digits++) {
            snprintf (buf, sizeof buf, "%.*e", digits - 1, value);
            if (strtod (buf, NULL) == value)
                break;
        }
        snprintf (buf, sizeof buf, "%.*e", digits - 1, value);
        int exponent = atoi (strchr (buf, 'e') + 1);
        if (exponent >= -4 && exponent < 15)
            snprintf (buf, sizeof buf, "%.*f",
                      digits - 1 - exponent > 0 ? digits - 1 - exponent : 0, value);
    }
    s_puts (text, buf);
}

static void
s_put_label (s_text_t *text, bool *first, const char *name, const char *value)
{
    s_puts (text, *first ? "{" : ",");
    *first = false;
    s_puts (text, name);
    s_puts (text, "=\"");
    s_put_escaped (text, value, true);
    s_puts (text, "\"");
}

//  One sample line: name suffix {extra, labels, le} value.
static void
s_put_sample (s_text_t *text, const char *name, const char *suffix,
              const char *const *extra, const json_t *labels, const char *le,
              double value)
{
    s_puts (text, name);
    s_puts (text, suffix);
    bool first = true;
    for (size_t i = 0; extra && extra[i] && extra[i + 1]; i += 2)
        if (!json_object_get (labels, extra[i]))
            s_put_label (text, &first, extra[i], extra[i + 1]);
    const char *key;
    json_t *item;
    json_object_foreach ((json_t *) labels, key, item)
    {
        s_put_label (text, &first, key, json_string_value (item));
    }
    if (le)
        s_put_label (text, &first, "le", le);
    if (!first)
        s_puts (text, "}");
    s_puts (text, " ");
    s_put_number (text, value);
    s_puts (text, "\n");
}

//  Labels that can be written: string values, valid names, no "le" on a
//  histogram.
static bool
s_labels_ok (const json_t *labels, bool histogram)
{
    if (!json_is_object (labels))
        return false;
    const char *key;
    json_t *item;
    json_object_foreach ((json_t *) labels, key, item)
    {
        if (!json_is_string (item) || !s_valid_label (key))
            return false;
        if (histogram && !strcmp (key, "le"))
            return false;
    }
    return true;
}

char *
cm_metrics_prometheus (const json_t *snapshot, const char *const *extra_labels)
{
    for (size_t i = 0; extra_labels && extra_labels[i]; i += 2)
        assert (extra_labels[i + 1] && s_valid_label (extra_labels[i]));
    s_text_t text = {0};
    s_puts (&text, "");
    json_t *written = json_object (); //  names of the families written
    size_t i;
    json_t *family;
    json_array_foreach (json_object_get (snapshot, "families"), i, family)
    {
        const char *name = json_string_value (json_object_get (family, "name"));
        const char *type = json_string_value (json_object_get (family, "type"));
        const char *help = json_string_value (json_object_get (family, "help"));
        json_t *series = json_object_get (family, "series");
        if (!name || !type || !s_valid_name (name) || !json_is_array (series))
            continue;
        if (strcmp (type, "counter") && strcmp (type, "gauge") &&
            strcmp (type, "histogram"))
            continue;
        //  A family named twice would give two TYPE lines: keep the first.
        if (json_object_get (written, name))
            continue;
        bool histogram = !strcmp (type, "histogram");
        s_text_t samples = {0};
        size_t j;
        json_t *one;
        json_array_foreach (series, j, one)
        {
            json_t *labels = json_object_get (one, "labels");
            if (!s_labels_ok (labels, histogram))
                continue;
            if (!histogram) {
                s_put_sample (&samples, name, "", extra_labels, labels, NULL,
                              s_value_of (json_object_get (one, "value")));
                continue;
            }
            if (!s_histogram_ok (one))
                continue;
            json_t *bounds = json_object_get (one, "bounds");
            json_t *buckets = json_object_get (one, "buckets");
            size_t n = json_array_size (bounds);
            for (size_t b = 0; b <= n; b++) {
                s_text_t le = {0};
                if (b < n)
                    s_put_number (&le, s_value_of (json_array_get (bounds, b)));
                else
                    s_puts (&le, "+Inf");
                s_put_sample (&samples, name, "_bucket", extra_labels, labels, le.data,
                              s_value_of (json_array_get (buckets, b)));
                free (le.data);
            }
            s_put_sample (&samples, name, "_sum", extra_labels, labels, NULL,
                          s_value_of (json_object_get (one, "sum")));
            //  The count is the +Inf bucket, whatever the field says.
            s_put_sample (&samples, name, "_count", extra_labels, labels, NULL,
                          s_value_of (json_array_get (buckets, n)));
        }
        if (samples.size) {
            json_object_set_new (written, name, json_true ());
            s_puts (&text, "# HELP ");
            s_puts (&text, name);
            s_puts (&text, " ");
            s_put_escaped (&text, help && *help ? help : name, false);
            s_puts (&text, "\n# TYPE ");
            s_puts (&text, name);
            s_puts (&text, " ");
            s_puts (&text, type);
            s_puts (&text, "\n");
            s_put (&text, samples.data, samples.size);
        }
        free (samples.data);
    }
    json_decref (written);
    return text.data;
}

//  --- helpers --------------------------------------------------------------

//  [a-zA-Z_:][a-zA-Z0-9_:]*
static bool
s_valid_name (const char *name)
{
    if (!name || !*name || (*name >= '0' && *name <= '9'))
        return false;
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
              (*c >= '0' && *c <= '9') || *c == '_' || *c == ':'))
            return false;
    return true;
}

//  [a-zA-Z_][a-zA-Z0-9_]*, and not "__..." (reserved by Prometheus).
static bool
s_valid_label (const char *name)
{
    if (!s_valid_name (name) || strchr (name, ':') || !strncmp (name, "__", 2))
        return false;
    return true;
}

static double
s_from_bits (uint64_t bits)
{
    double value;
    memcpy (&value, &bits, sizeof value);
    return value;
}

static uint64_t
s_to_bits (double value)
{
    uint64_t bits;
    memcpy (&bits, &value, sizeof bits);
    return bits;
}

//  JSON for a value: an integer when it is one (counts read better), a
//  real otherwise, null for NaN and infinities (JSON has no such numbers).
static json_t *
s_number (double value)
{
    if (!isfinite (value))
        return json_null ();
    if (value == floor (value) && fabs (value) < 9007199254740992.0)
        return json_integer ((json_int_t) value);
    return json_real (value);
}

static double
s_value_of (const json_t *json)
{
    return json_is_number (json) ? json_number_value (json) : NAN;
}
