"""Turn benchmarks/results/latest.json into report/REPORT.md and its figures.

Contract:
    generate(results_path, out_dir) -> Path of the REPORT.md written (figures beside it)
    build_context(results, figures) -> {placeholder: text}
    render(template, context) -> str      `{{name}}` replaced; an unknown name raises KeyError

The prose lives in report/template.md; every number in it is a placeholder filled from the
results file here, so the report can never disagree with the data it claims to show. A value
that the results do not hold (a group skipped or not run) reads `n/a`, and a target that was
not measured says so. The explanations of missed targets are chosen from the data too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from benchmarks.harness import load_results, read_results
from benchmarks.measure import LoadResult
from benchmarks.targets import (
    KEEP_UP,
    KEEP_UP_P99_MS,
    RTO_BUDGET,
    RTO_MS,
    UDP_RAW_LOSS_PCT,
    UDP_RAW_P99_MS,
    Target,
    evaluate,
    matching,
    median_run,
    sweep_knees,
    udp_raw_runs,
)
from common.reliable import MAX_BACKLOG, WINDOW
from report.plots import make_plots

TEMPLATE = Path(__file__).resolve().parent / "template.md"
NA = "n/a"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")


def render(template: str, context: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: context[m.group(1)], template)


def ms(value: float | None) -> str:
    """A latency in ms, with as many decimals as make sense for its size."""
    if value is None or math.isnan(value):
        return NA
    if math.isinf(value):
        return "∞"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def num(value: float | None, decimals: int = 0) -> str:
    if value is None or math.isnan(value):
        return NA
    return f"{value:,.{decimals}f}"


class Facts:
    """The runs of one results file, found by what they measured rather than by name."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.groups = {
            group: [r for _, r in load_results(results, group)]
            for group in {run["group"] for run in results["runs"]}
        }
        self._loads = {(run["group"], run["name"]): run.get("load_1min") for run in results["runs"]}
        self._names = {
            id(result): (group, name)
            for group in self.groups
            for (name, result) in zip(
                [run["name"] for run in results["runs"] if run["group"] == group],
                self.groups[group],
                strict=True,
            )
        }

    def busy(self, run: LoadResult) -> str:
        """How busy the machine was as this run started, or before the suite if not recorded."""
        load = self._loads.get(self._names.get(id(run), ("", "")))
        if load is None:
            before = self.results["meta"]["load_average_before"][0]
            return f"; the machine's 1-minute load average was {before:.2f} before the suite"
        return f"; the machine's 1-minute load average was {load:.2f} as the run started"

    def floor(self, call: str, run: LoadResult) -> str:
        """What `call` ("send" or "sendto") alone costs at this run's load; "" if not measured."""
        floor = self.results["meta"].get("floor")
        if floor is None:
            return ""
        us = floor["tcp_send_us" if call == "send" else "udp_sendto_us"]
        cores = run.deliveries_per_s * us / 1e6
        return (
            f"one loopback `{call}` costs {us:.1f} µs of CPU on this machine "
            f"(`benchmarks.floor`): {run.deliveries_per_s:,.0f} deliveries/s written one "
            f"`{call}` each would take {cores:.2f} cores before any Python runs, and one "
            f"message to its {run.clients} recipients is {run.clients * us / 1000:.2f} ms of "
            "writing, which its last recipients wait for even on an idle server"
        )

    def find(self, group: str, protocol: str, **fields: Any) -> LoadResult | None:
        found = matching(self.groups.get(group, []), protocol, **fields)
        return found[0] if found else None

    def get(
        self, group: str, protocol: str, what: str, fmt: Callable[[float], str], **fields: Any
    ) -> str:
        run = self.find(group, protocol, **fields)
        return NA if run is None else fmt(getattr(run, what))


def _table(runs: Sequence[tuple[str, LoadResult]], extra: Sequence[str] = ()) -> str:
    """A Markdown table of runs; `extra` adds columns: retx, slow."""
    headers = [
        "run",
        "clients",
        "msg/s each",
        "offered deliv/s",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lost %",
        "server µs/deliv",
        "server CPU %",
        "harness CPU %",
    ]
    if "retx" in extra:
        headers += ["retransmitted"]
    if "slow" in extra:
        headers += ["slow reader dropped", "too_slow after s", "unsent"]
    rows = []
    for name, r in runs:
        row = [
            name,
            r.clients,
            f"{r.rate:g}",
            num(r.offered_deliveries_per_s),
            num(r.deliveries_per_s),
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.max_ms),
            num(r.loss_pct, 2),
            num(r.server_cpu_us_per_delivery, 2),
            num(r.server_cpu_pct),
            num(r.harness_cpu_pct),
        ]
        if "retx" in extra:
            row.append(r.retransmitted)
        if "slow" in extra:
            row += [
                "yes" if r.slow_dropped else ("no" if r.slow_readers else "-"),
                num(r.too_slow_after_s, 1) if r.slow_readers else "-",
                r.unsent,
            ]
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _group_table(results: dict[str, Any], group: str, extra: Sequence[str] = ()) -> str:
    runs = load_results(results, group)
    return _table(runs, extra) if runs else "_Not measured in this results file._"


def _targets_table(targets: Sequence[Target], reasons: dict[str, str]) -> str:
    verdict = {True: "**met**", False: "**missed**", None: "not measured"}
    rows = [[t.key, t.goal, verdict[t.met], t.measured, reasons.get(t.key, "")] for t in targets]
    return tabulate(
        rows, headers=["target", "goal", "verdict", "measured", "why"], tablefmt="github"
    )


def _miss_reasons(facts: Facts, targets: Sequence[Target]) -> dict[str, str]:
    """One sentence per missed target, built from what the same results show."""
    reasons: dict[str, str] = {}
    for target in targets:
        if target.met is not False:
            continue
        if target.key == "tcp-200x5":
            tcp = facts.find("clients", "tcp", clients=200, rate=5)
            naive = facts.find("clients", "naive", clients=200, rate=5)
            assert tcp is not None and naive is not None
            parts = []
            if tcp.p99_ms >= 2:
                if floor := facts.floor("send", tcp):
                    parts.append(
                        floor + "; the server keeps up only because, once it falls behind, one "
                        "`send` carries several frames, and falling behind is waiting"
                    )
                parts.append(
                    f"the server process used {tcp.server_cpu_pct:.0f} % of a core for "
                    f"{tcp.deliveries_per_s:,.0f} deliveries/s; CPython runs one thread at a "
                    "time, so a message that arrives while the flusher or another reader holds "
                    "the interpreter waits, and the tail grows long before the median does "
                    f"(p50 {ms(tcp.p50_ms)} ms); the harness's own sends left up to "
                    f"{ms(tcp.send_lag_p99_ms)} ms late (p99)"
                )
                knee = sweep_knees(facts.results).get("tcp")
                if knee is not None:
                    share = tcp.deliveries_per_s / knee.saturation_deliveries_per_s
                    parts.append(
                        f"that load is {share:.0%} of the most the rate sweep got through "
                        f"({knee.saturation_deliveries_per_s:,.0f} deliveries/s), and a queue "
                        "served that close to its limit has a long tail"
                    )
            if tcp.lost or tcp.unsent:
                parts.append(f"{tcp.lost} deliveries lost and {tcp.unsent} messages unsent")
            if tcp.server_cpu_us_per_delivery >= naive.server_cpu_us_per_delivery:
                parts.append("TCP did not spend less CPU per delivery than the naive server")
            reasons[target.key] = "; ".join(parts) + facts.busy(tcp)
        elif target.key == "tcp-saturation":
            reasons[target.key] = (
                "both servers share one interpreter lock per process; TCP's gain comes from "
                "coalescing writes, which only pays once the naive server's per-recipient "
                "sendall calls are the bottleneck"
            )
        elif target.key == "udp-raw-100x10":
            raw = median_run(udp_raw_runs(facts.groups["udp-target"]))
            floor = facts.floor("sendto", raw)
            parts = [floor] if floor else []
            parts += [
                f"the server's one thread used {raw.server_cpu_pct:.0f} % of a core "
                f"({raw.server_cpu_us_per_delivery:.2f} µs per delivery), so datagrams wait in "
                "the socket buffer whenever it falls behind"
            ]
            busy = min(raw.server_cpu_pct, 99.0) / 100
            parts.append(
                f"a backlog built in a brief slowdown drains with the {1 - busy:.0%} of the "
                f"thread left over, so it lasts about {busy / (1 - busy):.0f} times as long "
                "as the slowdown did"
            )
            if raw.loss_pct >= UDP_RAW_LOSS_PCT:
                parts.append(f"the buffer overflowed and {raw.loss_pct:.3f} % were lost")
            if raw.p99_ms >= UDP_RAW_P99_MS:
                parts.append(
                    f"the harness's own sends left up to {ms(raw.send_lag_p99_ms)} ms late (p99)"
                )
            reasons[target.key] = "; ".join(parts) + facts.busy(raw)
        elif target.key == "udp-reliable-5pct":
            rel = facts.find("lossy", "udp-reliable", link="netns 5% loss")
            assert rel is not None
            reasons[target.key] = (
                f"head-of-line blocking: p50 was {ms(rel.p50_ms)} ms. Each client receives "
                f"{rel.offered_msgs_per_s:,.0f} frames/s; one lost frame holds back every later "
                "one until it is sent again, at once if three later frames are acked, else on "
                "its timeout (0.2, 0.4, 0.8 s...), so the slowest percent waits for second and "
                "third tries" + (f"; {rel.lost} lost" if rel.lost else "")
            )
    return reasons


def _repeats_text(runs: Sequence[LoadResult]) -> str:
    """How far apart the repeats of one run landed, if it was repeated."""
    if len(runs) < 2:
        return ""
    p99s = sorted(r.p99_ms for r in runs)
    cpu = sorted(r.server_cpu_us_per_delivery for r in runs)
    listed = ", ".join(ms(p) for p in p99s[:-1]) + f" and {ms(p99s[-1])}"
    text = (
        f"The raw run was repeated {len(runs)} times, back to back, and the numbers above are "
        f"from the one with the median p99. Their p99s were {listed} ms, and the server's CPU "
        f"per delivery went from {cpu[0]:.2f} to {cpu[-1]:.2f} µs: the same code under the same "
        "load."
    )
    if p99s[-1] > 2 * p99s[0]:
        text += (
            " Near a full core, a few percent more cost per delivery on a given run is the "
            "difference between a backlog that never forms and one that takes seconds to "
            "drain, so on a machine this small one run's tail says little about the server alone."
        )
    return text


def _knee_text(knee_rate: float | None, lowest: float | None) -> str:
    if knee_rate is not None:
        return f"{knee_rate:g} msg/s per client"
    return NA if lowest is None else f"below {lowest:g} msg/s per client (no rate kept up)"


def _trends(facts: Facts, default_threads: int) -> dict[str, str]:
    """Sentences whose direction depends on the data, so none can claim what did not happen."""
    out = {"tcp_cost_trend": "", "slow_effect": "", "nagle_trend": "", "threads_effect": ""}
    small = facts.find("clients", "tcp", clients=10, rate=5)
    large = facts.find("clients", "tcp", clients=200, rate=5)
    if small and large:
        fell = large.server_cpu_us_per_delivery < small.server_cpu_us_per_delivery
        out["tcp_cost_trend"] = (
            f"TCP's cost per delivery {'fell' if fell else 'did not fall'} from 10 to 200 clients "
            f"({num(small.server_cpu_us_per_delivery, 2)} → "
            f"{num(large.server_cpu_us_per_delivery, 2)} µs)"
            + (
                ": the flusher's one `send` carries every frame that piled up for a client "
                "while it wrote to the others, so the busier the room, the cheaper a delivery."
                if fell
                else "."
            )
        )
    slow = {(r.protocol, r.slow_readers > 0): r for r in facts.groups.get("slow-reader", [])}
    base, with_slow = slow.get(("tcp", False)), slow.get(("tcp", True))
    if base and with_slow:
        close = with_slow.p99_ms <= 2 * base.p99_ms + 1
        out["slow_effect"] = (
            "the others did not wait for it, because only its own writer thread blocks on its "
            "socket."
            if close
            else "the others' tail grew while its buffers filled, though no delivery was lost."
            if with_slow.lost == 0
            else "the others were slowed and lost deliveries."
        )
    nagle = {(r.clients, r.nagle): r for r in facts.groups.get("nagle", [])}
    sizes = sorted({c for c, _ in nagle if (c, True) in nagle and (c, False) in nagle})
    if len(sizes) >= 2:
        gaps = [nagle[(c, True)].p99_ms - nagle[(c, False)].p99_ms for c in sizes]
        out["nagle_trend"] = (
            f"The gap in p99 was {ms(gaps[0])} ms at {sizes[0]} clients and {ms(gaps[-1])} ms at "
            f"{sizes[-1]}"
            + (
                ": under load the flusher coalesces frames into large writes, which Nagle's "
                "algorithm does not hold back."
                if abs(gaps[-1]) < abs(gaps[0])
                else "."
            )
        )
    runs = facts.groups.get("threads", [])
    per_client = next((r for r in runs if r.threads == r.clients), None)
    grouped = next((r for r in runs if r.threads == default_threads), None)
    if per_client and grouped:
        worse = per_client.p99_ms > grouped.p99_ms
        out["threads_effect"] = (
            f"The thread-per-client harness measured a {'worse' if worse else 'better'} p99 "
            f"for the same server and load, using {num(per_client.harness_cpu_pct)} % of a core "
            f"against {num(grouped.harness_cpu_pct)} %."
        )
    return out


def _load_range(results: dict[str, Any]) -> str:
    """The spread of the 1-minute load average read as each run started, where recorded."""
    loads = [e["load_1min"] for e in [*results["runs"], *results["capacity"]] if "load_1min" in e]
    if not loads:
        return ""
    return (
        f" As each run started it was between {min(loads):.2f} and {max(loads):.2f} "
        f"(median {sorted(loads)[len(loads) // 2]:.2f}); the run's own server and clients "
        "count in it too."
    )


def build_context(results: dict[str, Any], figures: dict[str, Path]) -> dict[str, str]:
    facts = Facts(results)
    meta = results["meta"]
    targets = evaluate(results)
    load_before = meta["load_average_before"][0]
    ctx: dict[str, str] = {
        "suite": meta["suite"],
        "suite_command": "make bench-full" if meta["suite"] == "full" else "make bench",
        "date": meta["date"],
        "commit": (meta.get("git_commit") or "unknown")[:10]
        + (" (with uncommitted changes)" if meta.get("git_dirty") else ""),
        "python": f"{meta['implementation']} {meta['python']}",
        "cpu": meta["machine"]["cpu"],
        "cores": str(meta["machine"]["cores"]),
        "system": meta["machine"]["system"],
        "load_before": f"{load_before:.2f}",
        "load_after": f"{meta['load_average_after'][0]:.2f}",
        "load_range": _load_range(results),
        "elapsed": num(meta["elapsed_s"]),
        "default_threads": str(meta["default_threads"]),
        "worker_threads": _plural(meta["default_threads"], "worker thread"),
        "keep_up_pct": f"{KEEP_UP * 100:g}",
        "keep_up_p99": f"{KEEP_UP_P99_MS:g}",
        "rto_budget_ms": f"{RTO_BUDGET * RTO_MS:g}",
    }
    reasons = _miss_reasons(facts, targets)
    ctx["targets_table"] = _targets_table(targets, reasons)
    missed = [t.key for t in targets if t.met is False]
    ctx["targets_summary"] = (
        f"{sum(1 for t in targets if t.met)} of {len(targets)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
        + (
            f"; not measured: {', '.join(t.key for t in targets if t.met is None)}"
            if any(t.met is None for t in targets)
            else ""
        )
    )

    for key, (proto, clients, rate) in {
        "tcp200": ("tcp", 200, 5),
        "naive200": ("naive", 200, 5),
        "raw200": ("udp-raw", 200, 5),
        "rel200": ("udp-reliable", 200, 5),
        "tcp10": ("tcp", 10, 5),
        "raw10": ("udp-raw", 10, 5),
        "rel10": ("udp-reliable", 10, 5),
    }.items():
        ctx[f"{key}_p50"] = facts.get("clients", proto, "p50_ms", ms, clients=clients, rate=rate)
        ctx[f"{key}_p99"] = facts.get("clients", proto, "p99_ms", ms, clients=clients, rate=rate)
        ctx[f"{key}_loss"] = facts.get(
            "clients", proto, "loss_pct", lambda v: num(v, 2), clients=clients, rate=rate
        )
        ctx[f"{key}_us"] = facts.get(
            "clients",
            proto,
            "server_cpu_us_per_delivery",
            lambda v: num(v, 2),
            clients=clients,
            rate=rate,
        )
        ctx[f"{key}_cpu"] = facts.get(
            "clients", proto, "server_cpu_pct", num, clients=clients, rate=rate
        )
        ctx[f"{key}_deliv"] = facts.get(
            "clients", proto, "deliveries_per_s", num, clients=clients, rate=rate
        )
    reliable_ok = [
        r.clients
        for r in facts.groups.get("clients", [])
        if r.protocol == "udp-reliable" and r.lost == 0 and r.p99_ms < KEEP_UP_P99_MS
    ]
    ctx["rel_max_clients"] = str(max(reliable_ok)) if reliable_ok else NA

    knees = sweep_knees(results)
    sweep = facts.groups.get("rate", [])
    for proto in ("tcp", "naive"):
        rates = [r.rate for r in sweep if r.protocol == proto]
        k = knees.get(proto)
        ctx[f"{proto}_knee"] = _knee_text(k.knee_rate if k else None, min(rates) if rates else None)
        ctx[f"{proto}_knee_offered"] = num(k.knee_offered) if k else NA
        ctx[f"{proto}_sat"] = num(k.saturation_deliveries_per_s) if k else NA
        ctx[f"{proto}_sat_rate"] = f"{k.saturation_rate:g}" if k else NA
    if "tcp" in knees and "naive" in knees:
        ratio = (
            knees["tcp"].saturation_deliveries_per_s / knees["naive"].saturation_deliveries_per_s
        )
        ctx["sat_ratio"] = f"{ratio:.2f}"
    else:
        ctx["sat_ratio"] = NA

    raw_runs = udp_raw_runs(facts.groups.get("udp-target", []))
    target_runs = {
        "raw": median_run(raw_runs) if raw_runs else None,
        "rel": facts.find("udp-target", "udp-reliable", clients=100, rate=10),
    }
    for key, run in target_runs.items():
        for what, fmt in (
            ("loss_pct", lambda v: num(v, 3)),
            ("p50_ms", ms),
            ("p99_ms", ms),
            ("server_cpu_pct", num),
            ("server_cpu_us_per_delivery", lambda v: num(v, 2)),
            ("deliveries_per_s", num),
        ):
            ctx[f"target_{key}_{what}"] = NA if run is None else fmt(getattr(run, what))
    ctx["target_raw_repeats"] = _repeats_text(raw_runs)
    for key, proto in (("raw", "udp-raw"), ("rel", "udp-reliable")):
        for loss in (0, 1, 5, 10):
            link = f"netns {loss}% loss"
            ctx[f"lossy_{key}{loss}_loss"] = facts.get(
                "lossy", proto, "loss_pct", lambda v: num(v, 2), link=link
            )
            ctx[f"lossy_{key}{loss}_p50"] = facts.get("lossy", proto, "p50_ms", ms, link=link)
            ctx[f"lossy_{key}{loss}_p99"] = facts.get("lossy", proto, "p99_ms", ms, link=link)
            ctx[f"lossy_{key}{loss}_retx"] = facts.get(
                "lossy", proto, "retransmitted", num, link=link
            )
    rel = facts.find("udp-target", "udp-reliable", clients=100, rate=10)
    told = (
        f" ({rel.too_slow_seen} of {rel.clients} clients were told of a session leaving `too_slow`)"
        if rel is not None and rel.too_slow_seen
        else ""
    )
    ctx["target_rel_note"] = (
        "Reliable mode delivered almost nothing at this load. A reliable delivery costs the "
        "server's one thread a datagram out and an ack in. Once it falls behind, acks wait or "
        "are lost in its socket buffer, the frames they answer are sent again, and that adds to "
        "the load: with fixed timeouts and no congestion control, overload feeds itself. The "
        f"frames waiting for acks outgrow a session's bounded backlog ({WINDOW} in flight, "
        f"{MAX_BACKLOG} queued) and the server ends the session as `too_slow` rather than let "
        f"its memory grow{told}; with its log on, the server shows the sessions ending so."
        if rel is not None and rel.loss_pct > 50
        else ""
    )
    ctx["failed_note"] = "".join(
        f"\n> The run `{f['name']}` ({f['group']}) failed and is missing: {f['error']}\n"
        for f in results.get("failed", [])
    )
    ctx["lossy_skipped"] = "".join(
        f"\n> The lossy-link runs were skipped on the machine that made this file: {s['reason']}.\n"
        for s in results.get("skipped", [])
        if s["group"] == "lossy"
    )

    slow_runs = {
        r.protocol + ("+slow" if r.slow_readers else ""): r
        for r in facts.groups.get("slow-reader", [])
    }
    for key, name in (("slow_base", "tcp"), ("slow_tcp", "tcp+slow"), ("slow_naive", "naive+slow")):
        r = slow_runs.get(name)
        ctx[f"{key}_p50"] = ms(r.p50_ms) if r else NA
        ctx[f"{key}_p99"] = ms(r.p99_ms) if r else NA
        ctx[f"{key}_deliv"] = num(r.deliveries_per_s) if r else NA
        ctx[f"{key}_unsent"] = num(r.unsent) if r else NA
        ctx[f"{key}_lost"] = num(r.lost) if r else NA
        ctx[f"{key}_after"] = num(r.too_slow_after_s, 1) if r else NA
        ctx[f"{key}_seen"] = str(r.too_slow_seen) if r else NA
        ctx[f"{key}_clients"] = str(r.clients) if r else NA
        ctx[f"{key}_rate"] = f"{r.rate:g}" if r else NA
    tcp_slow = slow_runs.get("tcp+slow")
    ctx["slow_verdict"] = (
        NA
        if tcp_slow is None
        else "was dropped"
        if tcp_slow.slow_dropped
        else "was **not** dropped within the run"
    )

    nagle_rows = []
    for r in sorted(facts.groups.get("nagle", []), key=lambda r: (r.clients, r.nagle)):
        nagle_rows.append(
            [
                f"{'Nagle on' if r.nagle else 'TCP_NODELAY'}",
                r.clients,
                f"{r.rate:g}",
                ms(r.p50_ms),
                ms(r.p99_ms),
                ms(r.max_ms),
                num(r.server_cpu_us_per_delivery, 2),
            ]
        )
    ctx["nagle_table"] = (
        tabulate(
            nagle_rows,
            headers=[
                "server socket",
                "clients",
                "msg/s each",
                "p50 ms",
                "p99 ms",
                "max ms",
                "server µs/deliv",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
        if nagle_rows
        else "_Not measured in this results file._"
    )
    nagle = {(r.clients, r.nagle): r for r in facts.groups.get("nagle", [])}
    small = min((c for c, _ in nagle), default=None)
    on = nagle.get((small, True)) if small is not None else None
    off = nagle.get((small, False)) if small is not None else None
    ctx["nagle_small_clients"] = str(small) if small is not None else NA
    ctx["nagle_small_on_p99"] = ms(on.p99_ms) if on else NA
    ctx["nagle_small_off_p99"] = ms(off.p99_ms) if off else NA

    thread_rows = []
    threads = sorted(facts.groups.get("threads", []), key=lambda r: r.threads)
    for r in threads:
        label = (
            "a thread per client"
            if r.threads == r.clients
            else f"{r.threads} worker thread{'s' if r.threads > 1 else ''}"
        )
        thread_rows.append(
            [
                label,
                r.clients,
                f"{r.rate:g}",
                ms(r.p50_ms),
                ms(r.p99_ms),
                ms(r.send_lag_p99_ms),
                num(r.harness_cpu_pct),
                num(r.deliveries_per_s),
            ]
        )
    ctx["threads_table"] = (
        tabulate(
            thread_rows,
            headers=[
                "harness",
                "clients",
                "msg/s each",
                "p50 ms",
                "p99 ms",
                "send lag p99 ms",
                "harness CPU %",
                "deliv/s",
            ],
            tablefmt="github",
            disable_numparse=True,
        )
        if thread_rows
        else "_Not measured in this results file._"
    )
    per_client = next((r for r in threads if r.threads == r.clients), None)
    grouped = next((r for r in threads if r.threads == meta["default_threads"]), None)
    ctx["thr_per_client_p99"] = ms(per_client.p99_ms) if per_client else NA
    ctx["thr_per_client_lag"] = ms(per_client.send_lag_p99_ms) if per_client else NA
    ctx["thr_grouped_p99"] = ms(grouped.p99_ms) if grouped else NA
    ctx["thr_grouped_lag"] = ms(grouped.send_lag_p99_ms) if grouped else NA
    ctx["thr_clients"] = str(per_client.clients) if per_client else NA

    capacity = results.get("capacity", [])
    cap = capacity[0] if capacity else None
    ctx["cap_clients"] = num(cap["clients"]) if cap else NA
    ctx["cap_online"] = num(cap["online"]) if cap else NA
    ctx["cap_kib"] = num(cap["bytes_per_client"] / 1024, 1) if cap else NA
    ctx["cap_threads"] = num(cap["threads_after"]) if cap else NA
    ctx["cap_connect"] = num(cap["connect_seconds"], 1) if cap else NA

    ctx["table_clients"] = _group_table(results, "clients")
    ctx["table_target"] = _group_table(results, "udp-target")
    ctx["table_rate"] = _group_table(results, "rate")
    ctx["table_lossy"] = _group_table(results, "lossy", ("retx",))
    ctx["table_slow"] = _group_table(results, "slow-reader", ("slow",))
    ctx.update(_trends(facts, meta["default_threads"]))
    for key in ("latency", "throughput", "loss", "cpu"):
        path = figures.get(key)
        ctx[f"fig_{key}"] = f"![{key}]({path.name})" if path else "_No data for this figure._"
    return ctx


def generate(results_path: Path, out_dir: Path) -> Path:
    results = read_results(results_path)
    figures = make_plots(results, out_dir)
    context = build_context(results, figures)
    text = render(TEMPLATE.read_text(encoding="utf-8"), context)
    report = out_dir / "REPORT.md"
    report.write_text(text, encoding="utf-8")
    return report
