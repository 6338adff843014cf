/*
 * Prints the trace format as plugin/ftr-format.h defines it, as JSON, for
 * tests/test_format_abi.py to compare with the Python mirror. Everything is
 * printed by expanding the header's own lists, so an entry added there is
 * printed without a change here; and the content hashes of known images,
 * computed by plugin/ftr-hash.h, the plugin's own functions.
 */
#include <stddef.h>
#include <stdio.h>

#include "ftr-format.h"
#include "ftr-hash.h"

static int first;

static void open_object(const char *name)
{
    printf("%s\"%s\": {", first ? ",\n " : "{", name);
    first = 0;
}

static void close_object(void)
{
    printf("}");
    first = 1;
}

static void item(const char *name, long long value)
{
    printf("%s\"%s\": %lld", first++ ? ", " : "", name, value);
}

static void field(const char *name, size_t offset, size_t size)
{
    printf("%s\"%s\": [%zu, %zu]", first++ ? ", " : "", name, offset, size);
}

#define FIELD_OF(st, type, name, dim) \
    field(#name, offsetof(struct st, name), sizeof(((struct st *)0)->name));
#define EVENT_FIELD(type, name, dim) FIELD_OF(ftr_event, type, name, dim)
#define TASK_FIELD(type, name, dim) FIELD_OF(ftr_task, type, name, dim)
#define BLOCK_FIELD(type, name, dim) FIELD_OF(ftr_block_header, type, name, dim)
#define FILE_FIELD(type, name, dim) FIELD_OF(ftr_file_header, type, name, dim)
#define FOOTER_FIELD(type, name, dim) FIELD_OF(ftr_footer, type, name, dim)
#define FEATURE(name, bit) item(#name, FTR_FEAT_##name);
#define ARCH(name, number) item(#name, FTR_ARCH_##name);
#define BLOCK(name, number) item(#name, FTR_BLOCK_##name);
#define KIND(name, number, role) item(#name, FTR_KIND_##name);
#define KIND_ROLE(name, number, role) \
    printf("%s\"%s\": \"%s\"", first++ ? ", " : "", #name, #role);
#define PROBE(name, number) item(#name, FTR_PROBE_##name);
#define FLAG(name, value) item(#name, FTR_FLAG_##name);
#define TASK_FLAG(name, value) item(#name, FTR_TASK_FLAG_##name);
#define ADDR_SIZE(name, number) item(#name, FTR_ADDR_##name);
#define END(name, number) item(#name, FTR_END_##name);

int main(void)
{
    uint8_t image[1024] = { 0 };
    uint64_t image_hash = 0;

    open_object("numbers");
    item("version", FTR_VERSION);
    item("min_reader", FTR_MIN_READER_VERSION);
    item("block_magic", FTR_BLOCK_MAGIC);
    item("kind_max", FTR_KIND_MAX);
    item("probe_max", FTR_PROBE_MAX);
    item("addr_size_shift", FTR_FLAG_ADDR_SIZE_SHIFT);
    close_object();
    printf(",\n \"magic\": \"%s\"", FTR_MAGIC);
    open_object("sizes");
    item("event", sizeof(struct ftr_event));
    item("task", sizeof(struct ftr_task));
    item("block", sizeof(struct ftr_block_header));
    item("file_header", sizeof(struct ftr_file_header));
    item("footer", sizeof(struct ftr_footer));
    close_object();
    open_object("event");
    FTR_EVENT_FIELDS(EVENT_FIELD)
    close_object();
    open_object("task");
    FTR_TASK_FIELDS(TASK_FIELD)
    close_object();
    open_object("block_header");
    FTR_BLOCK_HEADER_FIELDS(BLOCK_FIELD)
    close_object();
    open_object("file_header");
    FTR_FILE_HEADER_FIELDS(FILE_FIELD)
    close_object();
    open_object("footer");
    FTR_FOOTER_FIELDS(FOOTER_FIELD)
    close_object();
    open_object("features");
    FTR_FEATURES(FEATURE)
    close_object();
    open_object("arches");
    FTR_ARCHES(ARCH)
    close_object();
    open_object("blocks");
    FTR_BLOCK_TYPES(BLOCK)
    close_object();
    open_object("kinds");
    FTR_KINDS(KIND)
    close_object();
    open_object("kind_roles");
    FTR_KINDS(KIND_ROLE)
    close_object();
    open_object("probes");
    FTR_PROBES(PROBE)
    close_object();
    open_object("flags");
    FTR_FLAGS(FLAG)
    close_object();
    open_object("addr_sizes");
    FTR_ADDR_SIZES(ADDR_SIZE)
    close_object();
    open_object("task_flags");
    FTR_TASK_FLAGS(TASK_FLAG)
    close_object();
    open_object("ends");
    FTR_ENDS(END)
    close_object();

    /*
     * Hashes of known images (decimal strings: JSON numbers lose 64-bit
     * precision): the AVX upper halves in their init state, as the compiled
     * pass uses it, and a 1 KiB XSAVE image of bytes i * 7 + 1, hashed word
     * by word as the plugin hashes what a save stored.
     */
    for (unsigned i = 0; i < sizeof(image); i++) {
        image[i] = (uint8_t)(i * 7 + 1);
    }
    for (uint32_t w = 0; w < sizeof(image) / 8; w++) {
        uint64_t v = 0;

        for (int b = 7; b >= 0; b--) {
            v = v << 8 | image[8 * w + b];
        }
        image_hash += ftr_hash_word(w, v, ftr_xsave_word_content(w));
    }
    printf(",\n \"hashes\": {\"avx_init\": \"%llu\", \"xsave_image_1k\": \"%llu\"}}\n",
           (unsigned long long)ftr_xsave_zero_hash(FTR_XSAVE_AVX_START, FTR_XSAVE_AVX_END),
           (unsigned long long)image_hash);
    return 0;
}
