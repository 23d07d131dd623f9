"""Every file a user hands the CLI, broken every usual way: one line on stderr naming the file and
line, exit status 2, nothing on stdout, and nothing written (the ledger and its directory are as
they were)."""

from __future__ import annotations

import pytest

from greenmaas_cli.main import cli

TRACE = "t,device,energy_j,power_w\n0,gpu:0,0,\n1,gpu:0,100,\n2,gpu:0,200,\n"
SPANS = "id,start,end,devices\na,0,1,gpu:0\nb,1,2,gpu:0\n"
SERIES = "timestamp,gco2_per_kwh\n2024-05-01T00:00Z,50\n2024-05-01T12:00Z,60\n"

#: (what breaks, file text as bytes, line named, words in the error)
BROKEN = {
    "trace": [
        ("latin-1", b"t,device,energy_j\n0,gpu:0,0\n1,gpu:\xe9,100\n", 3, "not UTF-8 text (byte 0xe9 at column 7)"),
        ("latin-1 far in", TRACE.encode() + b"".join(b"%d,gpu:0,%d,\n" % (i, 100 * i) for i in range(3, 2000))
         + b"2000,gpu:\xb5,1,\n", 2002, "not UTF-8 text (byte 0xb5"),
        ("unterminated quote", b't,device,energy_j\n0,gpu:0,0\n1,"gpu:0,100\n2,gpu:0,200\n', 3,
         "malformed CSV: unexpected end of data"),
        ("stray quote", b't,device,energy_j\n0,gpu:0,0\n1,"gpu:0"x,100\n', 3, "malformed CSV"),
        ("empty", b"", 1, "empty file: expected a header row t,device,energy_j,power_w"),
        ("blank lines only", b"\n\n  \n", 1, "empty file"),
        ("missing column", b"t,energy_j\n0,1\n", 1, "missing column device"),
        ("header only", b"t,device,energy_j\n", 2, "no data rows"),
        ("short row", b"t,device,energy_j\n0,gpu:0\n", 2, "row has 2 fields, the header needs 3"),
        ("not a number", b"t,device,energy_j\n0,gpu:0,lots\n", 2, "energy_j is not a number: 'lots'"),
        ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 1, "not UTF-8 text (byte 0x89 at column 1)"),
    ],
    "spans": [
        ("empty", b"", 1, "empty file: expected a header row id,start,end,devices"),
        ("missing column", b"id,start,devices\na,0,gpu:0\n", 1, "missing column end"),
        ("end before start", b"id,start,end,devices\na,5,1,gpu:0\n", 2, "end 1 is before start 5"),
        ("unknown device", b"id,start,end,devices\na,0,1,gpu:7\n", 2, "unknown device 'gpu:7'"),
        ("not a number", b"id,start,end,devices\na,0,soon,gpu:0\n", 2, "end is not a number: 'soon'"),
        ("latin-1", b"id,start,end,devices,model\na,0,1,gpu:0,caf\xe9\n", 2, "not UTF-8 text (byte 0xe9"),
        ("unterminated quote", b'id,start,end,devices\na,0,1,"gpu:0\n', 2, "malformed CSV"),
    ],
    "intensity": [
        ("latin-1", SERIES.encode() + b"2024-05-01T13:00Z,6\xb0\n", 4, "not UTF-8 text (byte 0xb0 at column 20)"),
        ("unterminated quote", b'timestamp,gco2_per_kwh\n2024-05-01T00:00Z,"50\n', 2, "malformed CSV"),
        ("empty", b"", 1, "empty file: expected a header row timestamp,gco2_per_kwh"),
        ("missing column", b"time,value\n2024-05-01T00:00Z,5\n", 1, "missing column 'timestamp'"),
        ("header only", b"timestamp,gco2_per_kwh\n", 1, "no data rows"),
        ("bad time", b"timestamp,gco2_per_kwh\n2024-05-01T00:00Z,5\n2024-02-30T00:00Z,5\n", 3,
         "bad timestamp '2024-02-30T00:00Z': day is out of range for month"),
        ("not a number", b"timestamp,gco2_per_kwh\n2024-05-01T00:00Z,lots\n", 2, "'lots' is not a number"),
    ],
}


def cases(kind):
    return [pytest.param(kind, *case, id=f"{kind}-{case[0]}") for case in BROKEN[kind]]


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def one_error_line(runner, args):
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    return line


@pytest.mark.parametrize(
    "kind, what, data, line, problem",
    cases("trace") + cases("spans") + cases("intensity"),
)
def test_a_broken_csv_is_one_line_naming_file_and_line(runner, ledger_path, tmp_path, kind, what, data, line,
                                                       problem):
    work = tmp_path / "input"
    work.mkdir()
    good = {"trace": TRACE, "spans": SPANS, "intensity": SERIES}
    for name, text in good.items():
        (work / f"{name}.csv").write_text(text)
    bad = work / f"bad-{kind}.csv"
    bad.write_bytes(data)
    if kind == "intensity":
        args = ["report", "--ledger", str(ledger_path), "--intensity-csv", str(bad)]
        prefix = f"Error: --intensity-csv: {bad}, line {line}: "
    else:
        files = {"trace": str(work / "trace.csv"), "spans": str(work / "spans.csv"), kind: str(bad)}
        args = ["attribute", "--trace", files["trace"], "--spans", files["spans"], "--format", "csv"]
        prefix = f"Error: {bad}, line {line}: "
    before = snapshot(work), snapshot(ledger_path.parent)
    message = one_error_line(runner, args)
    assert message.startswith(prefix) and problem in message, message
    assert (snapshot(work), snapshot(ledger_path.parent)) == before


@pytest.mark.parametrize("kind", ["trace", "spans"])
def test_a_missing_or_unreadable_file_is_one_line(runner, tmp_path, kind):
    (tmp_path / "trace.csv").write_text(TRACE)
    (tmp_path / "spans.csv").write_text(SPANS)
    files = {"trace": str(tmp_path / "trace.csv"), "spans": str(tmp_path / "spans.csv")}
    files[kind] = str(tmp_path / "absent.csv")
    message = one_error_line(runner, ["attribute", "--trace", files["trace"], "--spans", files["spans"]])
    assert message == f"Error: {tmp_path / 'absent.csv'}: cannot open {kind}: No such file or directory"


def test_an_intensity_series_from_the_environment_names_the_file_and_line(tmp_path):
    # What a Meter reads when it starts (no command reads the variable).
    from greenmaas.accounting.config import AccountingConfig
    from greenmaas.errors import ConfigError

    bad = tmp_path / "series.csv"
    bad.write_bytes(SERIES.encode() + b"2024-05-01T13:00Z,\xff\n")
    with pytest.raises(ConfigError) as info:
        AccountingConfig.from_env(environ={"GREENMAAS_INTENSITY_CSV": str(bad)})
    message = str(info.value)
    assert message.startswith(f"GREENMAAS_INTENSITY_CSV: {bad}, line 4: not UTF-8 text (byte 0xff at column 19)")
    assert "\n" not in message


@pytest.mark.parametrize(
    "data, problem",
    [
        (b'{"rules": [{"price": "0.2EUR/kWh"}], "note": "caf\xe9"}', "not UTF-8 text (byte 0xe9 at offset 49)"),
        (b'{"rules": [', "malformed tariff file"),
        (b"", "malformed tariff file"),
    ],
    ids=["latin-1", "truncated", "empty"],
)
def test_a_broken_tariff_file_is_one_line(runner, ledger_path, tmp_path, data, problem):
    bad = tmp_path / "tariff.json"
    bad.write_bytes(data)
    before = snapshot(ledger_path.parent)
    message = one_error_line(runner, ["report", "--ledger", str(ledger_path), "--price", str(bad)])
    assert message.startswith(f"Error: --price: malformed tariff file {bad}") and problem in message
    assert snapshot(ledger_path.parent) == before


@pytest.mark.parametrize(
    "args, words",
    [
        (["--since", "2024-05-01T12:00 UTC"], ["Invalid value for '--since'", "'2024-05-01T12:00 UTC'"]),
        (["--until", "2024-02-30"], ["Invalid value for '--until'", "day is out of range for month"]),
        (["--since", "1714564800"], ["Invalid value for '--since'", "2024-05-01T12:00Z"]),
        (["--since", "2024-05-01T12:00Z", "--until", "2024-05-01T11:00Z"], ["is not after --since"]),
        (["--since", "2024-05-01T12:00+02:00", "--until", "2024-05-01T10:00Z"], ["is not after --since"]),
    ],
)
def test_bad_times_are_one_line(runner, ledger_path, args, words):
    result = runner.invoke(cli, ["report", "--ledger", str(ledger_path), *args])
    assert result.exit_code == 2 and result.stdout == "" and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last


@pytest.mark.parametrize(
    "since, until, expected",
    [
        ("2024-05-01T10:01:00Z", None, {"llama|7b"}),  # the 'q' span starts at 10:01:50
        ("2024-05-01T12:01:00+02:00", None, {"llama|7b"}),  # the same instant, written in +02:00
        ("2024-05-01T10:01:00", None, {"llama|7b"}),  # no offset: UTC
        ("2024-05-01T10:01:50.000001Z", None, set()),
        ("2024-05-01", "2024-05-01", {"bert", "llama|7b"}),  # a bare --until date includes its day
        (None, "2024-05-01T10:01:49.999999Z", {"bert"}),
        ("2024-05-02", None, set()),
    ],
)
def test_times_in_every_accepted_form_select_the_same_spans(runner, ledger_path, since, until, expected):
    import json

    args = ["report", "--ledger", str(ledger_path), "--by", "model", "--format", "json"]
    args += ["--since", since] if since else []
    args += ["--until", until] if until else []
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    models = {row["group"] for row in json.loads(result.stdout)} - {"(idle)"}
    assert models == expected


@pytest.mark.parametrize(
    "prices, warned",
    [
        ("tpu=2.00USD/h", ["tpu"]),
        ("GPU=1.00USD/h,tpu=2.00USD/h,npu=3.00USD/h", ["npu", "tpu"]),
        ("gpu=1.00USD/h", []),
    ],
)
def test_a_hardware_price_for_a_kind_the_ledger_lacks_warns(runner, ledger_path, prices, warned):
    import json

    before = snapshot(ledger_path.parent)
    result = runner.invoke(cli, ["report", "--ledger", str(ledger_path), "--hardware-price", prices,
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines == [
        f"Warning: --hardware-price: the ledger has no device of kind '{kind}' (kinds present: gpu); "
        "its price is not used."
        for kind in warned
    ]
    assert {r["group"] for r in json.loads(result.stdout)} >= {"bert", "llama|7b"}  # the report itself
    assert snapshot(ledger_path.parent) == before
