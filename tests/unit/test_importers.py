"""Importers: each format on small fixtures in its documented layout, then the real samples.

Fixtures are written to ``tmp_path`` in the layouts of ``shared/traces/README.md``. The
real-sample tests read ``shared/traces`` (the folder ``shared`` beside the repository) and are
skipped, with the reason, when it is absent.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simdisagg.errors import ConfigError, TraceError
from simdisagg.importers import (
    SESSION_HASH_STRIDE,
    TraceImportWarning,
    detect_format,
    import_azure,
    import_burstgpt,
    import_kvct_csv,
    import_kvct_sessions,
    import_trace,
    import_tracelab,
    load_any,
)
from simdisagg.trace import Trace, load_jsonl, write_jsonl

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "traces"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real traces not available: {SHARED} is absent (shared/ beside the repo)"
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _ids(trace: Trace, i: int) -> list[str]:
    return [trace.request_ids[int(j)] for j in trace.waits_of(i)]


def _index(trace: Trace, request_id: str) -> int:
    return trace.request_ids.index(request_id)


def _assert_waits_point_back(trace: Trace) -> None:
    """Every wait_for names an earlier request of the same session (a DAG in file order)."""
    for i in range(len(trace)):
        for j in trace.waits_of(i):
            assert j < i
            assert trace.session_index[j] == trace.session_index[i]


# ------------------------------------------------------------------------------------------
# Azure


def test_azure_2023_times_from_the_earliest_row_keeping_file_order(tmp_path: Path) -> None:
    """Seconds are measured from the minimum timestamp; unsorted rows keep their file order."""
    path = _write(
        tmp_path / "az.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:04.0319600,3180,8\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:05.9799600,100,1\n",
    )
    assert detect_format(path) == "azure"
    trace = import_azure(path).trace
    np.testing.assert_allclose(trace.timestamp_s, [0.052, 0.0, 2.0], atol=1e-9)
    assert trace.input_tokens.tolist() == [3180, 4808, 100]
    assert trace.output_tokens.tolist() == [8, 10, 1]
    assert not trace.has_hashes and not trace.closed_loop.any()


def test_azure_2024_time_zone_and_variable_fraction_digits(tmp_path: Path) -> None:
    """2024 timestamps carry +00:00 and 0-6 fractional digits."""
    path = _write(
        tmp_path / "az24.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,10,2\n"
        "2024-05-10 00:00:01+00:00,20,3\n"
        "2024-05-10 00:00:01.5+00:00,30,4\n",
    )
    trace = load_any(path)
    np.testing.assert_allclose(trace.timestamp_s, [0.0, 0.99007, 1.49007], atol=1e-9)


@pytest.mark.parametrize(
    ("row", "line", "field"),
    [
        ("2023-11-16 18:17:04.0319600,abc,8", 3, "ContextTokens"),
        ("2023-11-16 18:17:04.0319600,0,8", 3, "ContextTokens"),
        ("yesterday,10,8", 3, "TIMESTAMP"),
        ("2023-11-16 18:17:04.0319600,10,0", 3, "GeneratedTokens"),
        ("2023-11-16 18:17:04.0319600,10", 3, None),
    ],
)
def test_azure_bad_row_names_file_line_and_field(tmp_path: Path, row: str, line: int, field: str | None) -> None:
    """A bad row is an error at file:line: field, never skipped (zero output included)."""
    path = _write(
        tmp_path / "bad.csv", f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,1,1\n{row}\n"
    )
    with pytest.raises(TraceError) as info:
        import_azure(path)
    assert info.value.line == line and info.value.field == field
    assert str(info.value).startswith(f"{path}:{line}:")


def test_azure_zero_output_counted_as_one_when_asked(tmp_path: Path) -> None:
    """zero_output='one' keeps the request, counts it and reports it as a warning in load_any."""
    path = _write(tmp_path / "z.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,10,0\n")
    result = import_trace(path, zero_output="one")
    assert result.trace.output_tokens.tolist() == [1] and result.adjusted_requests == 1
    with pytest.warns(TraceImportWarning, match="1 zero-output"):
        load_any(path, zero_output="one")


# ------------------------------------------------------------------------------------------
# BurstGPT

BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def test_burstgpt_failed_requests_are_skipped_and_counted(tmp_path: Path) -> None:
    """Response tokens 0 = a failed request: left out by default, but counted and reported."""
    path = _write(
        tmp_path / "BurstGPT_1.csv",
        BURST_HEADER
        + "5,ChatGPT,472,18,490,Conversation log\n"
        + "6,ChatGPT,1087,0,1087,Conversation log\n"
        + "9,GPT-4,300,40,340,API log\n",
    )
    assert detect_format(path) == "burstgpt"
    result = import_trace(path)
    assert len(result.trace) == 2 and result.skipped_requests == 1
    assert result.trace.timestamp_s.tolist() == [0.0, 4.0]
    assert any("1 failed requests" in c for c in result.changes)
    with pytest.warns(TraceImportWarning, match="skipped 1 failed"):
        load_any(path)
    with pytest.raises(TraceError) as info:
        import_burstgpt(path, zero_output="error")
    assert (info.value.line, info.value.field) == (3, "Response tokens")


def test_burstgpt_model_filter_counts_what_it_leaves_out(tmp_path: Path) -> None:
    """--model keeps one model; the others are counted in the changes."""
    path = _write(
        tmp_path / "b.csv",
        BURST_HEADER + "0,ChatGPT,10,5,15,Conversation log\n1,GPT-4,20,6,26,API log\n2,GPT-4,30,7,37,API log\n",
    )
    result = import_burstgpt(path, model="GPT-4")
    assert result.trace.input_tokens.tolist() == [20, 30]
    assert result.skipped_requests == 1 and "model filter" in result.changes[0]
    with pytest.raises(TraceError, match="models in the file"):
        import_burstgpt(path, model="Claude")
    with pytest.raises(ConfigError):
        import_trace(_write(tmp_path / "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"), model="GPT-4")


def test_burstgpt_3_layout_keeps_sessions(tmp_path: Path) -> None:
    """BurstGPT_3 adds Session ID and Elapsed time after Timestamp; sessions are kept (open loop)."""
    path = _write(
        tmp_path / "BurstGPT_3.csv",
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        "10,s1,1.5,ChatGPT,100,20,120,Conversation log\n"
        "12,s2,0.5,ChatGPT,50,10,60,Conversation log\n"
        "15,s1,2.0,ChatGPT,180,30,210,Conversation log\n",
    )
    trace = import_trace(path).trace
    assert trace.session_names == ["s1", "s2"]
    assert trace.session_index.tolist() == [0, 1, 0]
    assert not trace.closed_loop.any()


def test_burstgpt_bad_token_count_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.csv", BURST_HEADER + "0,ChatGPT,10,5,15,x\n1,ChatGPT,ten,5,15,x\n")
    with pytest.raises(TraceError) as info:
        import_burstgpt(path)
    assert (info.value.line, info.value.field) == (3, "Request tokens")


# ------------------------------------------------------------------------------------------
# kv-cache-tester session JSON


def _req(t: float, inp: int, out: int, hashes: list[int], **extra: Any) -> dict[str, Any]:
    return {"t": t, "type": "n", "in": inp, "out": out, "hash_ids": hashes, "input_types": ["tool_result"], **extra}


def _session(name: str, requests: list[dict[str, Any]], block: int = 64) -> dict[str, Any]:
    return {"id": name, "models": ["m"], "block_size": block, "hash_id_scope": "local", "requests": requests}


def _kvct_fixture() -> dict[str, Any]:
    """Main 0 → sub-agent (spawned after main 0, done before main 2) → main 2 → main 3,
    plus a second sub-agent spawned after main 2 that is still running at main 3 and has
    finished by main 5."""
    sub_a = {
        "t": 40.0, "type": "subagent", "agent_id": "agent_001", "duration_ms": 30_000,
        "requests": [
            _req(0.0, 640, 10, [100] * 10, api_time=5.0),
            _req(12.0, 700, 20, [100] * 10, api_time=8.0, think_time=7.0),
        ],
    }  # fmt: skip
    sub_b = {
        "t": 200.0, "type": "subagent", "agent_id": "agent_002",  # no duration_ms: estimated
        "requests": [
            _req(0.0, 128, 5, [7, 8], api_time=4.0),
            _req(10.0, 192, 5, [7, 8, 9], api_time=6.0, think_time=6.0),
        ],
    }  # fmt: skip
    return _session(
        "trace_0001",
        [
            _req(0.0, 256, 50, [1, 2, 3, 4], api_time=9.0, think_time=0.0, input_types=["text"]),
            sub_a,
            _req(45.0, 320, 60, [1, 2, 3, 4, 5], api_time=10.0, think_time=36.0),
            sub_b,
            _req(70.0, 400, 70, [1, 2, 3, 4, 5, 6], api_time=5.0, think_time=15.0),
            _req(90.0, 450, 80, [1, 2, 3, 4, 5, 6, 7], think_time=15.0),  # api_time missing
            _req(300.0, 500, 90, [1, 2, 3, 4, 5, 6, 7], api_time=5.0, think_time=210.0),
        ],
    )


def test_kvct_chains_main_agent_and_sub_agents(tmp_path: Path) -> None:
    """Closed-loop rules: think_time after the predecessor; sub-agent waits for its spawner;
    the parent joins a sub-agent at its first request after the sub-agent ended."""
    path = tmp_path / "trace_0001.json"
    path.write_text(json.dumps(_kvct_fixture()))
    assert detect_format(path) == "kvct"
    trace = import_kvct_sessions(path, session_arrival="recorded").trace
    assert trace.request_ids == [
        "trace_0001/main/0", "trace_0001/agent_001/0", "trace_0001/agent_001/1", "trace_0001/main/2",
        "trace_0001/agent_002/0", "trace_0001/agent_002/1", "trace_0001/main/4", "trace_0001/main/5",
        "trace_0001/main/6",
    ]  # fmt: skip
    _assert_waits_point_back(trace)
    tool = dict(zip(trace.request_ids, trace.tool_wait_s.tolist(), strict=True))
    # main/0 is open loop at the session start
    assert _ids(trace, 0) == [] and trace.timestamp_s[0] == 0.0
    # agent_001 ends at t=40 and ran 30 s, so it started at 10 = 1 s after main/0 ended (0 + 9)
    a0 = _index(trace, "trace_0001/agent_001/0")
    assert _ids(trace, a0) == ["trace_0001/main/0"]
    assert trace.timestamp_s[a0] == pytest.approx(10.0) and tool["trace_0001/agent_001/0"] == pytest.approx(1.0)
    assert tool["trace_0001/agent_001/1"] == pytest.approx(7.0)  # its own think_time
    # main/2 (t=45) starts after agent_001 ended (t=40): it joins it; wait = 45 - (22 + 8) = 15
    m2 = _index(trace, "trace_0001/main/2")
    assert _ids(trace, m2) == ["trace_0001/main/0", "trace_0001/agent_001/1"]
    assert tool["trace_0001/main/2"] == pytest.approx(15.0)
    # agent_002: duration estimated as 10 + 6 = 16 s, so it started at 184 and ended at 200;
    # its spawner is the latest main request before the entry that had finished by 184: main/2
    b0 = _index(trace, "trace_0001/agent_002/0")
    assert trace.timestamp_s[b0] == pytest.approx(184.0)
    assert _ids(trace, b0) == ["trace_0001/main/2"]
    assert tool["trace_0001/agent_002/0"] == pytest.approx(184.0 - (45.0 + 10.0))
    # main/4 and main/5 start before agent_002 ended: they only wait for their predecessor
    assert _ids(trace, _index(trace, "trace_0001/main/4")) == ["trace_0001/main/2"]
    assert tool["trace_0001/main/4"] == pytest.approx(15.0)
    # main/6 (t=300) joins agent_002 (ended 200); wait from the latest completion, 200
    m6 = _index(trace, "trace_0001/main/6")
    assert _ids(trace, m6) == ["trace_0001/main/5", "trace_0001/agent_002/1"]
    assert tool["trace_0001/main/6"] == pytest.approx(300.0 - (194.0 + 6.0))


def test_kvct_sessions_never_share_hash_ids(tmp_path: Path) -> None:
    """Local ids restart in every file; the importer moves session k to k * 2**40 + id."""
    folder = tmp_path / "sessions"
    folder.mkdir()
    for name in ("trace_0001", "trace_0002"):
        (folder / f"{name}.json").write_text(json.dumps(_session(name, [_req(0.0, 128, 5, [1, 2])])))
    trace = import_trace(folder, session_arrival="recorded").trace
    assert trace.hashes_of(0).tolist() == [1, 2]
    assert trace.hashes_of(1).tolist() == [SESSION_HASH_STRIDE + 1, SESSION_HASH_STRIDE + 2]
    assert trace.hash_block_tokens == 64
    glob_trace = import_trace(str(folder / "trace_*.json"), session_arrival="recorded").trace
    assert glob_trace.request_ids == trace.request_ids


def test_kvct_session_starts_are_a_seeded_poisson_process(tmp_path: Path) -> None:
    """Poisson session starts: first at 0, reproducible per seed, different across seeds."""
    folder = tmp_path / "s"
    folder.mkdir()
    for k in range(5):
        (folder / f"trace_{k:04d}.json").write_text(json.dumps(_session(f"t{k}", [_req(0.0, 64, 1, [1])])))
    a = import_kvct_sessions(folder, sessions_per_s=0.1, seed=3).trace.timestamp_s
    b = import_kvct_sessions(folder, sessions_per_s=0.1, seed=3).trace.timestamp_s
    c = import_kvct_sessions(folder, sessions_per_s=0.1, seed=4).trace.timestamp_s
    assert a[0] == 0.0 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert import_kvct_sessions(folder, session_arrival="recorded").trace.timestamp_s.tolist() == [0.0] * 5


def test_kvct_errors_name_the_json_field(tmp_path: Path) -> None:
    """A bad request names requests[i].field; differing block sizes and skip are refused."""
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_session("t", [_req(0.0, 64, 1, [1]), _req(5.0, 0, 1, [])])))
    with pytest.raises(TraceError) as info:
        import_kvct_sessions(path)
    assert info.value.field == "requests[1].in" and str(info.value).startswith(str(path))
    path.write_text(json.dumps(_session("t", [_req(0.0, 64, 1, ["a"])])))
    with pytest.raises(TraceError, match=r"requests\[0\]\.hash_ids"):
        import_kvct_sessions(path)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(_session("a", [_req(0.0, 64, 1, [1])], block=64)))
    (folder / "b.json").write_text(json.dumps(_session("b", [_req(0.0, 64, 1, [1])], block=16)))
    with pytest.raises(TraceError, match="block_size"):
        import_kvct_sessions(folder)
    with pytest.raises(ConfigError, match="skip"):
        import_kvct_sessions(folder, zero_output="skip")


def test_kvct_zero_output_becomes_one_token(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_session("t", [_req(0.0, 64, 0, [1]), _req(5.0, 128, 3, [1, 2], think_time=1.0)])))
    result = import_kvct_sessions(path)
    assert result.trace.output_tokens.tolist() == [1, 3] and result.adjusted_requests == 1
    with pytest.raises(TraceError, match="0 output tokens"):
        import_kvct_sessions(path, zero_output="error")


# ------------------------------------------------------------------------------------------
# kv-cache-tester derived CSV

CSV_HEADER = (
    "trace_id,agent,subagent_type,req_idx,t_s,type,model,in,out,cached_prefix_tokens,"
    "think_time_s,api_time_s,stop,input_types,output_types\n"
)


def test_kvct_csv_chains_like_the_json(tmp_path: Path) -> None:
    """Same chaining; a sub-agent's start = its entry t minus (last t offset + api_time)."""
    path = _write(
        tmp_path / "kvct.csv",
        CSV_HEADER
        + "tr1,main,,0,0.0,n,m,1000,10,0,0.0,5.0,tool_use,text,tool_use\n"
        + "tr1,agent_001,Explore,0,40.0,n,m,500,10,0,0.0,4.0,tool_use,text,tool_use\n"
        + "tr1,agent_001,Explore,1,52.0,n,m,600,10,448,8.0,8.0,end_turn,tool_result,text\n"
        + "tr1,main,,2,60.0,n,m,1200,10,960,55.0,3.0,end_turn,tool_result,text\n"
        + "tr2,main,,0,0.0,n,m,2000,0,0,0.0,,end_turn,text,text\n",
    )
    assert detect_format(path) == "kvct-csv"
    result = import_kvct_csv(path, session_arrival="recorded")
    trace = result.trace
    assert trace.request_ids == ["tr1/main/0", "tr1/agent_001/0", "tr1/agent_001/1", "tr1/main/2", "tr2/main/0"]
    assert not trace.has_hashes
    # duration = 12 + 8 = 20 s, so the sub-agent ran from 20 to 40
    assert trace.timestamp_s[1] == pytest.approx(20.0) and trace.tool_wait_s[1] == pytest.approx(15.0)
    assert _ids(trace, 3) == ["tr1/main/0", "tr1/agent_001/1"]
    assert trace.tool_wait_s[3] == pytest.approx(60.0 - (32.0 + 8.0))
    assert result.adjusted_requests == 1 and any("0.266" in n for n in result.notes)  # 1408 / 5300
    _assert_waits_point_back(trace)


def test_kvct_csv_bad_value_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "k.csv", CSV_HEADER + "tr1,main,,0,zero,n,m,1000,10,0,0.0,5.0,,,\n")
    with pytest.raises(TraceError) as info:
        import_kvct_csv(path)
    assert (info.value.line, info.value.field) == (2, "t_s")


# ------------------------------------------------------------------------------------------
# TraceLab


def _round(sid: str, k: int, inp: int, out: int, events: list[tuple[str, str]], tools_ms: list[float]) -> str:
    return json.dumps(
        {
            "session_id": sid,
            "round_index": k,
            "input_tokens_total": inp,
            "output_tokens": out,
            "timing_events": [{"event_type": e, "timestamp": ts} for e, ts in events],
            "tools": [{"tool_name": "Bash", "tool_wall_latency_ms": ms} for ms in tools_ms],
        }
    )


def test_tracelab_rounds_chain_with_tool_latency_sums(tmp_path: Path) -> None:
    """Round k waits for round k-1 plus the sum of its tool wall latencies (+ a user's gap)."""
    t0, t5, t12, t15, t60 = (f"2026-06-01T05:{m}.000Z" for m in ("00:00", "00:05", "00:12", "00:15", "01:00"))
    lines = [  # out of order on purpose: rounds are sorted by round_index
        _round("s1", 1, 120, 20, [("tool_result", t12), ("text", t15)], []),
        _round("s1", 0, 100, 10, [("user_message", t0), ("tool_call", t5)], [860, 1140]),
        _round("s1", 2, 150, 0, [("user_message", t60)], []),
    ]
    path = _write(tmp_path / "round_trace.jsonl", "\n".join(lines) + "\n")
    assert detect_format(path) == "tracelab"
    result = import_tracelab(path, session_arrival="recorded")
    trace = result.trace
    assert trace.request_ids == ["s1#0", "s1#1", "s1#2"]
    assert _ids(trace, 1) == ["s1#0"] and trace.tool_wait_s[1] == pytest.approx(2.0)
    # round 2 opens with a user message 45 s after round 1's last event; round 1 had no tools
    assert trace.tool_wait_s[2] == pytest.approx(45.0)
    assert trace.timestamp_s.tolist() == [0.0, 12.0, 60.0]
    assert trace.output_tokens.tolist() == [10, 20, 1] and result.adjusted_requests == 1


def test_tracelab_bad_round_names_line(tmp_path: Path) -> None:
    bad = json.dumps({"session_id": "s", "round_index": 0, "input_tokens_total": "many", "output_tokens": 1})
    path = _write(tmp_path / "r.jsonl", bad + "\n")
    with pytest.raises(TraceError) as info:
        import_tracelab(path)
    assert (info.value.line, info.value.field) == (1, "input_tokens_total")


def test_detect_format_native_and_unknown(tmp_path: Path) -> None:
    native = _write(tmp_path / "n.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 2}\n')
    assert detect_format(native) == "native"
    assert len(load_any(native)) == 1
    unknown = _write(tmp_path / "u.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match="unknown trace format"):
        detect_format(unknown)
    with pytest.raises(TraceError, match="no such file"):
        detect_format(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------
# Real samples in shared/traces


def _roundtrip(trace: Trace, tmp_path: Path) -> Trace:
    out = tmp_path / "roundtrip.jsonl"
    write_jsonl(trace, out)
    back = load_jsonl(out)
    assert back.request_ids == trace.request_ids
    np.testing.assert_array_equal(back.input_tokens, trace.input_tokens)
    np.testing.assert_array_equal(back.output_tokens, trace.output_tokens)
    np.testing.assert_array_equal(back.wait_indices, trace.wait_indices)
    np.testing.assert_array_equal(back.hash_values, trace.hash_values)
    # 1 ms: trace._ms truncates values within ~1e-9 relative of a whole ms (int(), not round())
    np.testing.assert_allclose(back.timestamp_s, trace.timestamp_s, atol=1e-3)
    np.testing.assert_allclose(back.tool_wait_s, trace.tool_wait_s, atol=1e-3)
    return back


@needs_shared
@pytest.mark.parametrize(
    ("name", "requests", "input_tokens", "output_tokens"),
    [
        ("AzureLLMInferenceTrace_code.csv", 8_819, 18_059_974, 245_896),
        ("AzureLLMInferenceTrace_conv.csv", 19_366, 22_361_870, 4_088_665),
    ],
)
def test_real_azure_counts_and_totals(
    name: str, requests: int, input_tokens: int, output_tokens: int, tmp_path: Path
) -> None:
    """Every row of the Azure 2023 files arrives, with its tokens, and survives a round trip."""
    path = SHARED / "azure2023" / name
    import pandas as pd

    raw = pd.read_csv(path)
    trace = load_any(path)
    assert len(trace) == requests == len(raw)
    assert int(trace.input_tokens.sum()) == input_tokens == int(raw["ContextTokens"].sum())
    assert int(trace.output_tokens.sum()) == output_tokens == int(raw["GeneratedTokens"].sum())
    assert trace.timestamp_s.min() == 0.0
    _roundtrip(trace, tmp_path)


@needs_shared
def test_real_mooncake_loads_unchanged() -> None:
    trace = load_any(SHARED / "mooncake" / "conversation_trace.jsonl")
    assert len(trace) == 12_031 and trace.hash_block_tokens == 512
    assert int(trace.input_tokens.sum()) == 144_793_823


@needs_shared
def test_real_kvct_slice_counts_tokens_and_chains(tmp_path: Path) -> None:
    """57 sessions, 4,029 requests (3,908 main + 121 sub-agent); totals equal the raw JSON's;
    every wait points back within the session; one zero output is counted as 1 token."""
    folder = SHARED / "kv-cache-tester" / "traces"
    raw_in = raw_out = raw_n = 0
    for f in sorted(folder.glob("*.json")):
        for r in json.loads(f.read_text())["requests"]:
            for x in r["requests"] if r["type"] == "subagent" else [r]:
                raw_in += x["in"]
                raw_out += max(1, x["out"])
                raw_n += 1
    result = import_trace(folder)
    trace = result.trace
    assert result.num_sessions == 57 and len(trace) == 4_029 == raw_n
    assert int(trace.input_tokens.sum()) == raw_in and int(trace.output_tokens.sum()) == raw_out
    assert result.adjusted_requests == 1
    assert int((~trace.closed_loop).sum()) == 57  # one open-loop start per session
    _assert_waits_point_back(trace)
    assert trace.hash_block_tokens == 64
    first_sessions = np.flatnonzero(trace.session_index < 3)  # a full round trip writes 110 MB
    _roundtrip(trace.subset(first_sessions), tmp_path)


@needs_shared
def test_real_kvct_csv_matches_its_row_count() -> None:
    """The derived CSV: 710 sessions, 49,334 requests, chains point back."""
    result = import_trace(SHARED / "kv-cache-tester" / "derived" / "kvct_requests_710_traces.csv")
    assert result.num_sessions == 710 and len(result.trace) == 49_334
    assert int((~result.trace.closed_loop).sum()) == 710
    assert any("0.963" in n for n in result.notes)
    waits = result.trace.wait_indices
    owners = np.repeat(np.arange(len(result.trace)), np.diff(result.trace.wait_offsets))
    assert np.all(waits < owners)


@needs_shared
def test_real_tracelab_two_sessions() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about in this file
        trace = load_any(SHARED / "tracelab" / "round_trace.jsonl")
    assert len(trace) == 19 and len(trace.session_names) == 2
    assert int((~trace.closed_loop).sum()) == 2
