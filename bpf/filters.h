/* The in-kernel filters: ports (PORT_MATCH), network namespace (FILTER_NETNS) and cgroup subtree
 * (FILTER_CGROUP_ID/LEVEL), all set by the plan before load. */
#ifndef TCPSCOPE_FILTERS_H
#define TCPSCOPE_FILTERS_H

#include "kread.h"

#ifdef FILTER_CGROUP_ID
/* Is the socket's cgroup FILTER_CGROUP_ID or below it? The ancestor at the root's level must be
 * the root. cgroup.ancestors[] (pointers) since 6.1 (commit 7f203bc89eb6), ancestor_ids[] (ids)
 * before. */
static __always_inline int cgroup_in_subtree(const void *cgrp)
{
    if (!cgrp)
        return 0;
    int level = (int)read_u32((const char *)cgrp + OFF_CGROUP_LEVEL);
    if (level < FILTER_CGROUP_LEVEL)
        return 0;
#ifdef CGROUP_ANCESTOR_IDS
    return read_u64((const char *)cgrp + OFF_CGROUP_ANCESTORS + 8 * FILTER_CGROUP_LEVEL) == FILTER_CGROUP_ID;
#else
    const void *anc =
        (const void *)read_u64((const char *)cgrp + OFF_CGROUP_ANCESTORS + 8 * FILTER_CGROUP_LEVEL);
    return cgroup_id_of(anc) == FILTER_CGROUP_ID;
#endif
}
#endif

/* The in-kernel filters. `full` says sk is a full socket (not a request or timewait sock), whose
 * cgroup can be read; a NULL sk (e.g. a RST for a closed port) passes only the port filter. */
static __always_inline int sock_passes(const void *sk, int full, __u16 sport, __u16 dport)
{
#ifdef PORT_MATCH
    if (!(PORT_MATCH(sport) || PORT_MATCH(dport)))
        return 0;
#endif
#ifdef FILTER_NETNS
    if (!sk || sock_netns(sk) != FILTER_NETNS)
        return 0;
#endif
#ifdef FILTER_CGROUP_ID
    if (!sk || !full || !cgroup_in_subtree(sock_cgroup(sk)))
        return 0;
#endif
    return 1;
}

#endif
