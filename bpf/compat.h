/* Reading tracepoint records whose fields differ between kernels.
 *
 * The plan defines HAS_<NAME>_<FIELD> as 1 for each field the running kernel's record of tracepoint
 * <name> has (agent/kernel/cgen.py, from the tracefs format file), and nothing for a field it lacks.
 * An entry point must not even name a field its record lacks, so "the field, or a fallback" is a
 * choice for the preprocessor. IF_HAS makes that choice inside an expression, so each entry point
 * needs no #ifdef block per field. */
#ifndef TCPSCOPE_COMPAT_H
#define TCPSCOPE_COMPAT_H

#include "tuples.h"

/* IF_HAS(HAS_X, yes, no) expands to `yes` when HAS_X is defined as 1 and to `no` otherwise; the other
 * one is dropped before compiling. The trick of IS_ENABLED in Linux's include/linux/kconfig.h:
 * IF_HAS first expands HAS_X, then pastes it to __IF_HAS_. A defined HAS_X gives __IF_HAS_1, which
 * expands to "0," and so shifts `yes` into the second argument of __IF_HAS_SECOND. An undefined one
 * gives __IF_HAS_HAS_X, one token that expands to nothing else, and `no` is the second argument. */
#define __IF_HAS_1 0,
#define __IF_HAS_SECOND(ignored, val, ...) val
#define __IF_HAS_PICK(one_or_junk, yes, no) __IF_HAS_SECOND(one_or_junk yes, no)
#define __IF_HAS_PASTE(flag, yes, no) __IF_HAS_PICK(__IF_HAS_##flag, yes, no)
#define IF_HAS(flag, yes, no) __IF_HAS_PASTE(flag, yes, no)

/* The address family of a record with the classic tuple fields: its own `family` field where it has
 * one (tcp:* records since 5.12, commit 3dd344ea84e1 "net: tracepoint: exposing sk_family in all
 * tcp:tracepoints"; sock:inet_sock_set_state always), else guessed from saddr_v6 (bpf/tuples.h,
 * guess_family()). NAME is the tracepoint's name in capitals, as in HAS_TP_<NAME>. */
#define RECORD_FAMILY(a, NAME) IF_HAS(HAS_##NAME##_FAMILY, (a)->family, guess_family((a)->saddr_v6))

/* Fill struct tuple t from a record with the classic layout (bpf/tuples.h, tuple_classic()):
 * host-order sport/dport, IPv4 saddr/daddr, IPv6 or v4-mapped saddr_v6/daddr_v6. */
#define RECORD_TUPLE(t, a, NAME) \
    tuple_classic(&(t), RECORD_FAMILY(a, NAME), (a)->sport, (a)->dport, (a)->saddr, (a)->daddr, \
                  (a)->saddr_v6, (a)->daddr_v6)

#endif
