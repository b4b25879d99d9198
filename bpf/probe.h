/* tcp:tcp_probe (congestion window, srtt): off by default, one in PROBE_SAMPLE per CPU. */
#ifndef TCPSCOPE_PROBE_H
#define TCPSCOPE_PROBE_H

#include "events.h"
#include "maps.h"
#include "emit.h"

#ifdef ENABLE_PROBE
static __always_inline int probe_sampled(void)
{
    int zero = 0;
    __u64 *c = probe_count.lookup(&zero);
    if (!c)
        return 0;
    *c += 1;
    return (*c % PROBE_SAMPLE) == 0;
}

static __always_inline int handle_probe(void *ctx, const void *sk, const struct tuple *t, __u32 cwnd,
                                        __u32 srtt_us, __u32 snd_wnd, __u32 data_len)
{
    struct tcpscope_event *ev = begin_event(EV_PROBE, sk, sk != 0, t);
    if (!ev)
        return 0;
    ev->snd_cwnd = cwnd;
    ev->srtt_us = srtt_us;
    ev->snd_wnd = snd_wnd;
    ev->data_len = data_len;
    submit(ctx, ev);
    return 0;
}
#endif

#endif
