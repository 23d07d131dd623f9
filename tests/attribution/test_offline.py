import json

import numpy as np
import pytest
from click.testing import CliRunner

from greenmaas.attribution.offline import attribute_trace, curve_from_trace, load_spans
from greenmaas.sources.replay import TraceData
from greenmaas_cli.attribute import attribute

TRACE = """t,device,energy_j,power_w
0,gpu:0,1000,100
1,gpu:0,1100,100
2,gpu:0,1200,100
3,gpu:0,1300,100
0,gpu:1,,50
3,gpu:1,,50
"""

SPANS = """id,start,end,devices,weight,model,request_id,tenant
a,0,2,gpu:0,1,m1,r1,acme
b,1,3,gpu:0;gpu:1,3,m2,r2,
"""


@pytest.fixture
def files(tmp_path):
    t = tmp_path / "trace.csv"
    s = tmp_path / "spans.csv"
    t.write_text(TRACE)
    s.write_text(SPANS)
    return t, s


def run(*args):
    return CliRunner().invoke(attribute, [str(a) for a in args])


def test_time_policy_json(files):
    t, s = files
    r = run("--trace", t, "--spans", s)
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    got = {x["id"]: x for x in out["spans"]}
    assert got["a"]["energy_j"] == pytest.approx(150.0)
    assert got["b"]["by_device"] == {"gpu:0": pytest.approx(150.0), "gpu:1": pytest.approx(100.0)}
    assert out["total_j"] == {"gpu:0": pytest.approx(300.0), "gpu:1": pytest.approx(150.0)}
    assert out["idle_j"]["gpu:1"] == pytest.approx(50.0)
    for dev, total in out["total_j"].items():
        spans_j = sum(x["by_device"].get(dev, 0.0) for x in out["spans"])
        assert spans_j + out["idle_j"][dev] == pytest.approx(total, rel=1e-9)


def test_weighted_policy_csv(files):
    t, s = files
    r = run("--trace", t, "--spans", s, "--policy", "weighted", "--format", "csv")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("id,model,request_id,tenant,energy_j")
    a = lines[1].split(",")
    assert a[0] == "a" and float(a[4]) == pytest.approx(125.0)
    assert lines[-2].startswith("(idle)") and lines[-1].startswith("(total)")


@pytest.mark.parametrize(
    "trace,spans,needle",
    [
        (TRACE, "id,start,devices\na,0,gpu:0\n", "spans.csv, line 1: missing column end"),
        (TRACE, "id,start,end,devices\na,2,1,gpu:0\n", "spans.csv, line 2: end 1 is before start 2"),
        (TRACE, "id,start,end,devices\na,0,1,gpu:9\n", "spans.csv, line 2: unknown device 'gpu:9'"),
        (TRACE, "id,start,end,devices\na,nan,1,gpu:0\n", "spans.csv, line 2: start is not a finite number"),
        (TRACE, "id,start,end,devices,weight\na,0,1,gpu:0,-1\n", "spans.csv, line 2: weight is negative"),
        ("t,device,energy_j\n0,gpu:0,1\n2,gpu:0,2\n1,gpu:0,3\n", SPANS, "trace.csv, line 4: time 1 goes backwards"),
        ("t,device,power_w\n0,gpu:0,5\n1,gpu:0,-5\n", SPANS, "trace.csv, line 3: power_w is negative"),
        ("t,device,power_w\n0,gpu:0,nan\n", SPANS, "trace.csv, line 2: power_w is not a finite number"),
        ("t,energy_j\n0,1\n", SPANS, "trace.csv, line 1: missing column device"),
    ],
)
def test_malformed_input_exits_2_with_one_line(tmp_path, trace, spans, needle):
    t = tmp_path / "trace.csv"
    s = tmp_path / "spans.csv"
    t.write_text(trace)
    s.write_text(spans)
    r = run("--trace", t, "--spans", s)
    assert r.exit_code == 2
    msg = r.output.strip()
    assert needle in msg
    assert len(msg.splitlines()) == 1
    assert "Traceback" not in msg


def test_missing_file_exits_2(tmp_path):
    r = run("--trace", tmp_path / "nope.csv", "--spans", tmp_path / "nope2.csv")
    assert r.exit_code == 2


def test_counter_reset_in_trace():
    td = TraceData(np.array([0.0, 1.0, 2.0, 3.0]), np.array([500.0, 600.0, 50.0, 150.0]), np.full(4, np.nan))
    ts, es = curve_from_trace(td)
    assert es[-1] - es[0] == pytest.approx(250.0)


def test_load_spans_defaults(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("id,start,end,devices\nx,0,1,gpu:0\n")
    t = load_spans(p)
    assert t.weight.tolist() == [1.0]
    assert t.model == [None]


def test_attribute_api_matches_known_synthetic_shares(tmp_path):
    # 10 requests back to back on a 200 W device with a stepped counter; true energy known
    rows = ["t,device,energy_j,power_w"]
    for i in range(0, 1001):
        t = i * 0.01
        published = np.floor(t / 0.1 + 1e-9) * 0.1
        rows.append(f"{t:.2f},gpu:0,{200 * published:.6f},200")
    tp = tmp_path / "t.csv"
    tp.write_text("\n".join(rows) + "\n")
    sp = tmp_path / "s.csv"
    sp.write_text("id,start,end,devices\n" + "".join(f"r{i},{i*0.5+0.2},{i*0.5+0.23},gpu:0\n" for i in range(10)))
    res = attribute_trace(tp, sp)
    # each 30 ms request at 200 W holds 6 J
    assert res.span_energy_j() == pytest.approx(np.full(10, 6.0), rel=0.02)


@pytest.mark.parametrize("chunk", [1, 2, 3, 50_000])
def test_json_text_is_to_json_a_chunk_at_a_time(files, chunk):
    # The CLI writes the JSON a chunk of spans at a time; it must read back as the whole object,
    # spans in file order, with no chunk's rows lost or repeated at a chunk's edge.
    t, s = files
    s.write_text(SPANS + "".join(f"c{i},{i % 3},{i % 3 + 0.5},gpu:0,1,m1,r{i},\n" for i in range(5)))
    res = attribute_trace(str(t), str(s))
    text = "".join(res.json_text(chunk=chunk))
    assert json.loads(text) == res.to_json()
    assert [r["id"] for r in json.loads(text)["spans"]] == ["a", "b", *[f"c{i}" for i in range(5)]]
    assert res.to_json()["spans"][1]["by_device"].keys() == {"gpu:0", "gpu:1"}
