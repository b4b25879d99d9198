"""A Graphviz service map of the summary's pairs: `tcpscope-tail --summary --format dot`.

Pure text generation: summary rows in, one DOT digraph out (render it with `dot -Tsvg`). Ends are
nodes, grouped in one box per namespace; each (client, server) pair is an edge labelled with its
connections, the Service it went through (`via ns/svc:port`, docs/services.md) and every problem
the summary counts. Pairs with resets the client or server sent, or refusals, stand out in red and
thick; pairs whose only problems are timeouts or failed connects in orange; clean pairs are grey.
Connections the network reset (a RST neither end sent: tail/resetcause.py) get an edge of their own
beside the pair's, dashed purple, labelled `N network resets`: they are no fault of either end.

Without Kubernetes every end is an address of the host, often 127.0.0.1: a node is then named by its
process and, for a server, its port (`nginx` over `127.0.0.1:8080`), one node per server port.
Labels sit beside their edges: Graphviz reserves room for edge labels in its layout, which it can
do across the namespace boxes only with `newrank=true`, and a label stays at its edge's middle
(`labelfloat=false`); a test renders a map with real `dot` and checks that no edge crosses a label.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from tail.pairs import PairSummary, Party

RED = "#d62728"
ORANGE = "#ff7f0e"
GREY = "#7f7f7f"
PURPLE = "#9467bd"  # network resets

_PROBLEMS: tuple[tuple[str, str], ...] = (
    ("client_resets", "client resets"),
    ("server_resets", "server resets"),
    ("refused", "refused"),
    ("timeouts", "timeouts"),
    ("failed", "failed"),
    ("retransmits", "with retransmits"),
)


def _quote(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def edge_label(r: PairSummary) -> str:
    """`N conns` (`:port`), then one line per non-zero problem counter (network resets: their own edge)."""
    ports = ",".join(str(p) for p in sorted(r.server_ports))
    lines = [f"{r.connections} conns" + (f" :{ports}" if ports else "")]
    if r.via is not None and r.via.name != r.server.name:  # through a Service (or a node port)
        lines.append(f"via {r.via.label()}:{r.via.port}")
    lines += [f"{getattr(r, attr)} {name}" for attr, name in _PROBLEMS if getattr(r, attr)]
    return "\n".join(lines)


def edge_style(r: PairSummary) -> dict[str, str]:
    if r.client_resets or r.server_resets or r.refused:
        return {"color": RED, "fontcolor": RED, "penwidth": "3", "style": "bold"}
    if r.timeouts or r.failed:
        return {"color": ORANGE, "fontcolor": ORANGE, "penwidth": "2"}
    return {"color": GREY, "fontcolor": "#333333", "penwidth": "1"}


def _attrs(d: dict[str, str]) -> str:
    return ", ".join(f"{k}={_quote(v)}" for k, v in d.items())


def node_id(p: Party) -> str:
    """The DOT node name of an end: its label, and a port where the same label names several servers."""
    return p.label() + (f":{p.port}" if p.port else "")


def node_label(p: Party) -> str:
    """What the node shows: a pod's (workload's) name; an end no pod owns, its process over its address."""
    where = p.name + (f":{p.port}" if p.port else "")
    return f"{p.process}\n{where}" if p.process else where


def render_dot(rows: Sequence[PairSummary], title: str = "tcpscope service map") -> str:
    """One digraph of the rows (each pair an edge; each end a node, in its namespace's box)."""
    parties: dict[Party, None] = {}
    for r in rows:
        parties.setdefault(r.client, None)
        parties.setdefault(r.server, None)
    by_ns: dict[str, list[Party]] = {}
    for p in parties:
        by_ns.setdefault(p.namespace, []).append(p)
    out = [
        f"digraph {_quote('tcpscope')} {{",
        f'  label={_quote(title)}; labelloc="t"; rankdir="LR"; fontname="Helvetica";',
        '  nodesep="0.8"; ranksep="2.0"; newrank="true";',
        '  node [shape="box", style="rounded,filled", fillcolor="#f4f6f8", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize="10", labelfloat="false"];',
    ]
    for i, (ns, members) in enumerate(sorted(by_ns.items())):
        indent = "  "
        if ns:
            out.append(f"  subgraph {_quote(f'cluster_{i}')} {{")
            out.append(f'    label={_quote(ns)}; style="rounded,dashed"; color="#999999";')
            indent = "    "
        for p in sorted(members, key=node_id):
            extra = {} if p.kind not in ("EXTERNAL", "UNRESOLVED", "NODE") else {"fillcolor": "#fff7e6"}
            attrs = {"label": node_label(p), "tooltip": p.kind, **extra}
            out.append(f"{indent}{_quote(node_id(p))} [{_attrs(attrs)}];")
        if ns:
            out.append("  }")
    for r in rows:
        ends = f"{_quote(node_id(r.client))} -> {_quote(node_id(r.server))}"
        out.append(f"  {ends} [{_attrs({'label': edge_label(r), **edge_style(r)})}];")
        if r.network_resets:
            net = {"label": f"{r.network_resets} network resets", "color": PURPLE, "fontcolor": PURPLE}
            out.append(f"  {ends} [{_attrs({**net, 'penwidth': '2', 'style': 'dashed'})}];")
    out.append("}")
    return "\n".join(out) + "\n"


def render_svg(dot_text: str, dot_binary: str | None = None, timeout_s: float = 60) -> bytes:
    """Graphviz's SVG of a DOT text (Debian's `graphviz`); raises RuntimeError without `dot`."""
    exe = dot_binary or shutil.which("dot")
    if not exe:
        raise RuntimeError("Graphviz 'dot' is not installed (apt-get install graphviz)")
    r = subprocess.run([exe, "-Tsvg"], input=dot_text.encode(), capture_output=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"dot failed: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout
