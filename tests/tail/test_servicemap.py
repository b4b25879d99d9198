"""tail/servicemap.py: the summary as a Graphviz service map, rendered by Debian's real `dot`."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tail import cli as tail
from tail import pairs, summary
from tail.servicemap import GREY, ORANGE, PURPLE, RED, edge_label, render_dot, render_svg
from tcpscope.v1 import events_pb2 as pb
from tests.tail.test_summary import API, DB, T0, WEB, both, lifecycle

SVG = "{http://www.w3.org/2000/svg}"


def _rows() -> list[pairs.PairSummary]:
    s = summary.Summarizer()
    start = T0
    for i in range(4):  # web -> api: 4 ok, 2 of them reset by the server
        kw: dict[str, Any] = {"ending": pb.RESET_SENT, "reason": "NOT_SPECIFIED"} if i < 2 else {}
        c_kw: dict[str, Any] = {"ending": pb.RESET_RECEIVED, "errno": 104} if i < 2 else {}
        s.add_all(both(WEB, API, 40000 + i, 9000, start + i * 10**9, c_kw=c_kw, s_kw=kw))
    s.add_all(both(API, DB, 41000, 5432, start))  # api -> db: clean
    # web -> db: one timeout, nothing else
    s.add(lifecycle(pb.ACTIVE, WEB, DB, 42000, 5432, start, ending=pb.ERROR, errno=110, last_state=pb.SYN_SENT))
    return summary.select(s.pairs())


def _edges(dot: str) -> dict[tuple[str, str], str]:
    return {(m[0], m[1]): m[2] for m in re.findall(r'  "([^"]+)" -> "([^"]+)" \[(.*)\];', dot)}


def test_edges_carry_connections_and_problems_and_resets_stand_out() -> None:
    rows = _rows()
    dot = render_dot(rows)
    edges = _edges(dot)
    assert set(edges) == {("shop/web-1", "shop/api-1"), ("shop/api-1", "data/db-1"), ("shop/web-1", "data/db-1")}
    reset = edges[("shop/web-1", "shop/api-1")]
    assert 'label="4 conns :9000\\n2 server resets"' in reset
    assert f'color="{RED}"' in reset and 'penwidth="3"' in reset
    assert 'label="1 conns :5432"' in edges[("shop/api-1", "data/db-1")]
    assert f'color="{GREY}"' in edges[("shop/api-1", "data/db-1")]
    timeout = edges[("shop/web-1", "data/db-1")]
    assert 'label="0 conns :5432\\n1 timeouts"' in timeout and f'color="{ORANGE}"' in timeout
    # one box per namespace
    assert dot.count("subgraph") == 2 and 'label="data"' in dot and 'label="shop"' in dot
    by_pair = {(r.client.label(), r.server.label()): r for r in rows}
    assert edge_label(by_pair[("shop/web-1", "shop/api-1")]) == "4 conns :9000\n2 server resets"


def test_names_are_quoted() -> None:
    row = pairs.PairSummary(pairs.Party("", 'we"ird\\x', "EXTERNAL"), pairs.Party("ns", "svc", "POD"))
    dot = render_dot([row])
    assert '"we\\"ird\\\\x" -> "ns/svc"' in dot


def test_dot_renders_to_svg_with_real_graphviz() -> None:
    assert shutil.which("dot"), "Graphviz is missing: apt-get install graphviz (scripts/setup.sh installs it)"
    svg = render_svg(render_dot(_rows()))
    root = ET.fromstring(svg)
    titles = {t.text for g in root.iter(f"{SVG}g") if g.get("class") == "edge" for t in g.iter(f"{SVG}title")}
    assert titles == {"shop/web-1->shop/api-1", "shop/api-1->data/db-1", "shop/web-1->data/db-1"}
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"4 conns :9000", "2 server resets", "1 timeouts", "web-1", "api-1", "db-1"} <= texts
    with pytest.raises(RuntimeError):
        render_svg("digraph {", dot_binary=shutil.which("dot"))


def test_summary_report_renders_dot_and_tail_accepts_it_only_with_summary() -> None:
    report = summary.Report(summary.Summarizer())
    for ev in both(WEB, API, 40000, 9000, T0):
        report.summarizer.add(ev)
    dot = report.render("dot", summary.SummaryOptions())
    assert dot.startswith('digraph "tcpscope"') and '"shop/web-1" -> "shop/api-1"' in dot
    o = tail.parse_args(["--kafka-bootstrap", "k:9092", "--summary", "--format", "dot"], env={})
    assert o.format == "dot" and o.summary is not None
    err = io.StringIO()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(err):
        tail.parse_args(["--kafka-bootstrap", "k:9092", "--format", "dot"], env={})
    assert "--format dot draws the service map of --summary" in err.getvalue()


def _party(ns: str, name: str) -> pairs.Party:
    return pairs.Party(ns, name, "POD")


def _mix() -> list[pairs.PairSummary]:
    """The simulator's built-in mix as a summary has it (sim/tcpscope_sim/plan.py), and a host's ends."""
    out = []

    def pair(c: pairs.Party, s: pairs.Party, port: int, **counts: int) -> None:
        row = pairs.PairSummary(c, s, server_ports={port})
        for k, v in counts.items():
            setattr(row, k, v)
        out.append(row)

    front1, front2, cart = _party("shop", "frontend-1"), _party("shop", "frontend-2"), _party("shop", "cart-1")
    checkout, redis, reports = _party("shop", "checkout-1"), _party("data", "redis-1"), _party("batch", "reports-1")
    pair(front1, cart, 9000, connections=73, client_resets=5, network_resets=13)
    pair(front2, checkout, 5051, connections=20, refused=8)
    pair(cart, redis, 6379, connections=120, retransmits=4)
    pair(reports, redis, 6379, connections=40)
    pair(front1, checkout, 5050, connections=30, server_resets=3)
    pair(reports, checkout, 5050, timeouts=12)
    pair(cart, reports, 9100, connections=12, retransmits=12)
    return out


def _label_crossings(svg: bytes) -> list[str]:
    """Edge label lines that an edge's path runs through (text boxes estimated from the font size)."""
    root = ET.fromstring(svg)
    boxes: list[tuple[str, float, float, float, float]] = []
    points: list[tuple[float, float]] = []
    for g in (g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"):
        for t in g.iter(f"{SVG}text"):
            x, y, size = float(t.get("x", 0)), float(t.get("y", 0)), float(t.get("font-size", 10))
            w = len(t.text or "") * size * 0.5
            boxes.append((t.text or "", x - w / 2, x + w / 2, y - size * 0.7, y + size * 0.15))
        for path in g.iter(f"{SVG}path"):
            nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", path.get("d", ""))]
            pts = list(zip(nums[::2], nums[1::2], strict=False))
            for i in range(0, len(pts) - 3, 3):  # cubic Bezier segments: M p0 C p1 p2 p3 p4 p5 p6 ...
                p0, p1, p2, p3 = pts[i : i + 4]
                for k in range(41):
                    u = k / 40
                    b = ((1 - u) ** 3, 3 * (1 - u) ** 2 * u, 3 * (1 - u) * u**2, u**3)
                    ctrl = (p0, p1, p2, p3)
                    x = sum(w * p[0] for w, p in zip(b, ctrl, strict=True))
                    y = sum(w * p[1] for w, p in zip(b, ctrl, strict=True))
                    points.append((x, y))
    return sorted({text for text, x0, x1, y0, y1 in boxes for px, py in points if x0 <= px <= x1 and y0 <= py <= y1})


def test_network_resets_have_their_own_edge_and_no_label_sits_on_an_edge() -> None:
    rows = _mix()
    dot = render_dot(rows)
    reset_edges = re.findall(r'  "shop/frontend-1" -> "shop/cart-1" \[(.*)\];', dot)
    assert len(reset_edges) == 2  # the pair's edge, and one for what the network reset
    assert 'label="73 conns :9000\\n5 client resets"' in reset_edges[0] and f'color="{RED}"' in reset_edges[0]
    assert 'label="13 network resets"' in reset_edges[1] and f'color="{PURPLE}"' in reset_edges[1]
    assert "dashed" in reset_edges[1]
    svg = render_svg(dot)
    texts = {t.text for t in ET.fromstring(svg).iter(f"{SVG}text")}
    assert {"13 network resets", "8 refused", "12 timeouts", "12 with retransmits"} <= texts
    assert _label_crossings(svg) == []
    # the check can fail: without newrank, dot lays the namespace boxes out with labels on edges
    assert _label_crossings(render_svg(dot.replace(' newrank="true";', ""))) != []


def test_host_mode_keeps_process_names_and_one_node_per_server() -> None:
    """Without Kubernetes every end is 127.0.0.1: named by process, and each server by its port."""
    s = summary.Summarizer()
    host = "127.0.0.1"
    for i, (comm, server, port) in enumerate(
        (("curl", "nginx", 8080), ("python3", "nginx", 8443), ("curl", "redis-server", 6379))
    ):
        c = lifecycle(pb.ACTIVE, WEB, API, 40000 + i, port, T0 + i * 10**6)
        srv = lifecycle(pb.PASSIVE, API, WEB, port, 40000 + i, T0 + i * 10**6)
        for e, who in ((c, comm), (srv, server)):
            for ep in (e.local, e.remote):
                ip, p = host, ep.port
                ep.Clear()
                ep.ip, ep.port = ip, p
            e.process.comm = who
        s.add_all([c, srv])
    dot = render_dot(summary.select(s.pairs()))
    nodes = re.findall(r'^\s+"([^"]+)" \[label="([^"]*)"', dot, re.M)
    assert sorted(nodes) == [
        ("curl@127.0.0.1", "curl\\n127.0.0.1"),
        ("nginx@127.0.0.1:8080", "nginx\\n127.0.0.1:8080"),
        ("nginx@127.0.0.1:8443", "nginx\\n127.0.0.1:8443"),
        ("python3@127.0.0.1", "python3\\n127.0.0.1"),
        ("redis-server@127.0.0.1:6379", "redis-server\\n127.0.0.1:6379"),
    ]  # each declared once
    assert set(_edges(dot)) == {
        ("curl@127.0.0.1", "nginx@127.0.0.1:8080"),
        ("python3@127.0.0.1", "nginx@127.0.0.1:8443"),
        ("curl@127.0.0.1", "redis-server@127.0.0.1:6379"),
    }
    root = ET.fromstring(render_svg(dot))
    assert {t.text for t in root.iter(f"{SVG}text")} >= {"curl", "python3", "nginx", "redis-server", "127.0.0.1:8443"}


def test_a_connection_through_a_service_says_via_which() -> None:
    from tail import summary
    from tests.support.natmix import mix

    s = summary.Summarizer()
    s.add_all(mix(True))
    dot = render_dot(summary.select(s.pairs()))
    assert "via shop/api-svc:80" in dot
    # the row whose server is the Service itself (refused, timed out) does not repeat it
    assert dot.count("via shop/api-svc:80") == 1
