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
from tail.servicemap import GREY, ORANGE, RED, edge_label, render_dot, render_svg
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


def test_a_connection_through_a_service_says_via_which() -> None:
    from tail import summary
    from tests.support.natmix import mix

    s = summary.Summarizer()
    s.add_all(mix(True))
    dot = render_dot(summary.select(s.pairs()))
    assert "via shop/api-svc:80" in dot
    # the row whose server is the Service itself (refused, timed out) does not repeat it
    assert dot.count("via shop/api-svc:80") == 1
