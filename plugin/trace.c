/*
 * trace.c: the trace writer.
 *
 * Per-vCPU buffers of fixed-size records, written as self-checking blocks
 * with one write(2) each on an O_APPEND descriptor, so the exec path takes
 * no lock and a trace cut short stays readable up to its last whole block.
 * docs/trace-format.md describes every byte; ftr-format.h defines them.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ftr-crc32c.h"
#include "fputrace.h"

/*
 * Write iov whole, retrying a short write from where it stopped: a block
 * goes out in one writev(2), its header and payload without a copy.
 */
static bool trace_writev_all(struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t done = writev(cfg.fd, iov, n);

        if (done < 0 && errno == EINTR) {
            continue;
        }
        if (done <= 0) {
            __atomic_fetch_add(&write_errors, 1, __ATOMIC_RELAXED);
            return false;
        }
        while (n > 0 && (size_t)done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return true;
}

static bool trace_write_all(const void *buf, size_t len)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };

    return trace_writev_all(&iov, 1);
}

/*
 * One block, one writev(2): with O_APPEND the kernel places it whole at the
 * end of the file, so vCPU threads need no lock between them.
 */
static void trace_write_block(uint16_t type, uint16_t vcpu, const void *payload,
                              uint32_t count, uint32_t payload_size)
{
    struct ftr_block_header hdr = {
        .magic = FTR_BLOCK_MAGIC,
        .type = type,
        .vcpu = vcpu,
        .count = count,
        .payload_size = payload_size,
        .crc32 = ftr_crc32c(payload, payload_size),
    };
    struct iovec iov[2] = {
        { .iov_base = &hdr, .iov_len = sizeof(hdr) },
        { .iov_base = (void *)payload, .iov_len = payload_size },
    };

    /* Its own checksum lets a reader tell a damaged header from a block. */
    hdr.header_crc32 = ftr_crc32c(&hdr, offsetof(struct ftr_block_header, header_crc32));
    if (trace_writev_all(iov, 2)) {
        __atomic_fetch_add(&blocks_written, 1, __ATOMIC_RELAXED);
    }
}

static void header_put_string(GByteArray *out, const char *s)
{
    uint16_t len = s ? strlen(s) : 0;

    g_byte_array_append(out, (const guint8 *)&len, sizeof(len));
    if (len) {
        g_byte_array_append(out, (const guint8 *)s, len);
    }
}

/* The header's features and arch; the footer repeats them. */
static uint64_t trace_features(void)
{
    return FTR_FEAT_MEM_HASH | FTR_FEAT_REGS_HASH |
           (cfg.current_addr ? FTR_FEAT_TASKS : 0) |
           (cfg.boundaries ? FTR_FEAT_BOUNDARIES : 0) |
           (cfg.n_probes ? FTR_FEAT_PROBES : 0) |
           (cfg.icount ? FTR_FEAT_ICOUNT : 0) |
           (cfg.boundaries && cfg.boundary_state && arch->boundary_state ?
            FTR_FEAT_BOUNDARY_STATE : 0);
}

bool trace_write_header(uint32_t api_version)
{
    g_autoptr(GByteArray) out = g_byte_array_new();
    struct ftr_file_header fh = {
        .version = FTR_VERSION,
        .min_reader_version = FTR_MIN_READER_VERSION,
        .features = trace_features(),
        .arch = arch->ftr_arch,
        .event_size = sizeof(struct ftr_event),
        .task_size = sizeof(struct ftr_task),
        .plugin_api = api_version,
    };
    uint32_t header_crc;

    memcpy(fh.magic, FTR_MAGIC, sizeof(fh.magic));
    g_byte_array_append(out, (const guint8 *)&fh, sizeof(fh));
    header_put_string(out, cfg.qemu_id);
    header_put_string(out, cfg.kernel_id);
    header_put_string(out, cfg.args);
    /* Pad to 8 so that blocks are aligned in the file. */
    while (out->len % 8) {
        g_byte_array_append(out, (const guint8 *)"", 1);
    }
    fh.header_size = out->len;
    memcpy(out->data + offsetof(struct ftr_file_header, header_size), &fh.header_size,
           sizeof(fh.header_size));
    /* Over the whole header, this field still zero. */
    header_crc = ftr_crc32c(out->data, out->len);
    memcpy(out->data + offsetof(struct ftr_file_header, header_crc32), &header_crc,
           sizeof(header_crc));
    return trace_write_all(out->data, out->len);
}

/*
 * How the run ended: the name the recorder wrote into the end= file before
 * it stopped QEMU. With no such word QEMU ended on its own (EXITED): a
 * failure, a crash, or a machine that powered itself off, which no one has
 * said was the end of its work.
 */
static uint32_t trace_run_end(void)
{
    static const struct {
        const char *name;
        uint32_t end;
    } ends[] = {
#define FTR_END_ENTRY(name, number) { #name, number },
        FTR_ENDS(FTR_END_ENTRY)
#undef FTR_END_ENTRY
    };
    g_autofree char *word = NULL;

    if (!cfg.end_path || !g_file_get_contents(cfg.end_path, &word, NULL, NULL)) {
        return FTR_END_EXITED;
    }
    g_strstrip(word);
    for (size_t i = 0; i < G_N_ELEMENTS(ends); i++) {
        if (!strcmp(word, ends[i].name)) {
            return ends[i].end;
        }
    }
    fprintf(stderr,
            "fputrace: %s: '%s' is no run end the trace knows: recorded as EXITED\n",
            cfg.end_path, word);
    return FTR_END_EXITED;
}

/* The footer block, which counts the blocks before it, and says how the run ended. */
void trace_write_footer(struct ftr_footer *footer)
{
    footer->blocks_total = __atomic_load_n(&blocks_written, __ATOMIC_RELAXED);
    footer->write_errors = __atomic_load_n(&write_errors, __ATOMIC_RELAXED);
    footer->end = trace_run_end();
    footer->arch = arch->ftr_arch;
    footer->features = trace_features();
    trace_write_block(FTR_BLOCK_FOOTER, 0, footer, 1, sizeof(*footer));
}

void vcpu_flush_events(struct vcpu_state *vs, unsigned int vcpu_index)
{
    if (vs->n_events) {
        trace_write_block(FTR_BLOCK_EVENTS, vcpu_index, vs->events, vs->n_events,
                          vs->n_events * sizeof(struct ftr_event));
        vs->n_events = 0;
    }
}

void vcpu_flush_tasks(struct vcpu_state *vs, unsigned int vcpu_index)
{
    if (vs->n_tasks) {
        trace_write_block(FTR_BLOCK_TASKS, vcpu_index, vs->tasks, vs->n_tasks,
                          vs->n_tasks * sizeof(struct ftr_task));
        vs->n_tasks = 0;
    }
}

/*
 * Task announcements go out before the events that name them: a reader that
 * stops at the last whole block then never sees an event with an unknown task
 * that the trace could have told it about.
 */
void vcpu_commit_event(struct vcpu_state *vs, unsigned int vcpu_index,
                       const struct ftr_event *ev)
{
    vs->events[vs->n_events++] = *ev;
    vs->events_by_kind[ev->kind]++;
    if (vs->n_events == cfg.block_events) {
        vcpu_flush_tasks(vs, vcpu_index);
        vcpu_flush_events(vs, vcpu_index);
    }
}
